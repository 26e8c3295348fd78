"""External VAEs, A1111's *SD VAE*: a VAE file from `models/VAE/` decodes (and encodes) instead of the model's own.

Why users pick one: many SD 1.5 checkpoints ship a VAE that draws washed-out colours (vae-ft-mse-840000 fixes
them), and SDXL's own VAE overflows in float16 (sdxl-vae-fp16-fix does not: with it, a GPU decodes in fp16).

- Files: `models/VAE/*.safetensors` (A1111's folder, any case; `.pt`/`.ckpt` with *Allow pickle checkpoints*),
  named by their file name as A1111 writes them in the infotext (`VAE: vae-ft-mse-840000-ema-pruned.safetensors`),
  or diffusers folders there (`config.json` + `diffusion_pytorch_model.safetensors`), named by the folder.
- "Automatic" (and A1111's "None") is the model's own VAE.
- A file in the original layout (`encoder.down.0.block.0...`, with or without a `first_stage_model.` prefix,
  FLUX's `ae.safetensors` too) is converted with diffusers' own converter; one in diffusers' layout is loaded as
  is. The model's VAE config is kept (its latent scaling, its upcast rule), so only the weights change; a file
  that does not fit the model's VAE (another family's: 16 latent channels for 4) is refused with the reason.
- Loaded files are kept in RAM (`VaeLibrary`, the last two), keyed by path, size and mtime.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from pipelines.catalog import models_subfolder
from pipelines.checkpoints import PICKLE_SUFFIXES
from pipelines.errors import ModelLoadError, ModelNotFound
from pipelines.face.weight_files import read_torch_file
from pipelines.hashes import model_hash

VAE_FOLDER = "VAE"
VAE_AUTOMATIC = "Automatic"  # the model's own VAE
VAE_NONE = "None"  # A1111's other name for it
OWN_VAE = (VAE_AUTOMATIC, VAE_NONE)
KEPT_IN_RAM = 2


def vae_folder(models_dir: Path) -> Path | None:
    return models_subfolder(models_dir, VAE_FOLDER)


def vae_files(models_dir: Path, allow_pickle: bool = False) -> dict[str, Path]:
    """Name -> path of every VAE in `models_dir/VAE`: files by file name, diffusers folders by folder name."""
    folder = vae_folder(models_dir)
    if folder is None:
        return {}
    suffixes = (".safetensors", *(PICKLE_SUFFIXES if allow_pickle else ()))
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes and not _inside_diffusers_folder(path, folder):
            found.setdefault(path.name, path)
        elif path.is_dir() and (path / "config.json").is_file():
            found.setdefault(path.name, path)
    return found


def _inside_diffusers_folder(path: Path, root: Path) -> bool:
    return any((parent / "config.json").is_file() for parent in path.parents if parent != root and root in parent.parents)


def vae_names(models_dir: Path, allow_pickle: bool = False) -> list[str]:
    """What the UI, CLI and API offer: Automatic, then the files."""
    return [VAE_AUTOMATIC, *vae_files(models_dir, allow_pickle)]


def find_vae(name, models_dir: Path, allow_pickle: bool = False) -> Path | None:
    """The VAE called `name` (exact, else case-insensitive, with or without its suffix); None for the model's own;
    ModelNotFound listing the choices otherwise."""
    if name is None or (isinstance(name, str) and name.strip() in OWN_VAE):
        return None
    files = vae_files(models_dir, allow_pickle)
    wanted = str(name).strip()
    path = files.get(wanted) or next((p for n, p in files.items() if wanted.lower() in (n.lower(), Path(n).stem.lower())), None)
    if path is None:
        choices = ", ".join([VAE_AUTOMATIC, *files])
        raise ModelNotFound(f"No VAE named {wanted!r}. Available: {choices} (VAE files go in {Path(models_dir) / VAE_FOLDER}).")
    return path


def load_vae(path: Path, like):
    """The VAE at `path` as an AutoencoderKL with `like`'s config (the model's own VAE), float32 on the CPU."""
    from diffusers import AutoencoderKL

    if path.is_dir():
        try:
            vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"The VAE folder {path.name} cannot be loaded: {error}") from None
        state = vae.state_dict()
    else:
        try:  # vae_files lists pickles only with Allow pickle checkpoints on
            state = read_torch_file(path, "VAE")
        except ModelLoadError as error:  # a truncated download, not a safetensors file
            cause = error.__cause__ or error
            raise ModelLoadError(f"The VAE file {path.name} cannot be read ({cause.__class__.__name__}: {cause}).") from None
        if not any(key.startswith("encoder.down_blocks.") for key in state):  # the original layout: diffusers converts it
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = convert_ldm_vae_checkpoint(state, dict(like.config))
    vae = AutoencoderKL.from_config(like.config)
    expected = vae.state_dict()
    missing = [key for key in expected if key not in state]
    mismatched = [key for key, value in expected.items() if key in state and state[key].shape != value.shape]
    if missing or mismatched:
        raise ModelLoadError(f"The VAE {path.name} does not fit this model's VAE ({len(missing)} weights missing, {len(mismatched)} of "
                             f"another shape, e.g. {(missing or mismatched)[0]}): it is another family's VAE, or not a VAE.")
    vae.load_state_dict({key: state[key] for key in expected})
    return vae.eval().requires_grad_(False)


class VaeLibrary:
    """Loaded external VAEs, the last KEPT_IN_RAM, keyed by file and the model VAE's config (the same file loads per
    family), each with A1111's hash of its file (computed once, when it is read)."""

    def __init__(self):
        self._kept: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, like, hash_file: Path) -> tuple[object, str | None, bool]:
        """(the VAE, its file's hash or None for a folder, whether it was in RAM already)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, repr(sorted(dict(like.config).items())))
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return (*self._kept[key], True)
        vae = load_vae(path, like)
        digest = model_hash(path, hash_file) if path.is_file() else None
        with self._lock:
            self._kept[key] = (vae, digest)
            while len(self._kept) > KEPT_IN_RAM:
                self._kept.popitem(last=False)
        return vae, digest, False
