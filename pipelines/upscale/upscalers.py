"""Image-space upscalers for hires fix, named as A1111 names them: "Lanczos", "Nearest", or an ESRGAN file.

"Latent" is listed too (the UI, CLI and API offer one list, `UPSCALER_BUILTINS` first), but it
upscales the latents inside the generation, so `upscale_image` refuses it: the caller handles it.

An ESRGAN net upscales by its own scale (x4, x2, x1); the result is then resized with Lanczos to the
requested scale, as A1111 does. A net smaller than the request runs again on its own output (at most
`MAX_PASSES` times, as A1111). The net runs tile by tile: each tile is cut with `overlap` pixels of
context on every side, and only its centre is kept, so tiles meet without seams and the device
holds one tile's activations at a time (the full-size result is assembled in RAM). Out of memory
halves the tile and tries again (down to `MIN_TILE`); a half-precision net that overflows (NaN/Inf,
which some ESRGAN weights do in float16) is run again in float32.

    >>> from pipelines.upscale import list_upscalers, upscale_image
    >>> [c.name for c in list_upscalers(Path("models"))]          # doctest: +SKIP
    ['Latent', 'Lanczos', 'Nearest', 'RealESRGAN_x4plus']
    >>> big = upscale_image(image, 2.0, "RealESRGAN_x4plus", Path("models"), "cuda", torch.float16)  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.catalog import models_subfolder
from pipelines.devices import free_device_memory
from pipelines.errors import InvalidRequest, ModelLoadError, ModelNotFound
from pipelines.upscale.esrgan import ESRGAN_SUFFIXES, inspect_esrgan, load_esrgan
from pipelines.upscale.rrdbnet import RRDBNet
from pipelines.vae import is_out_of_memory

log = logging.getLogger(__name__)

LATENT = "Latent"
UPSCALER_BUILTINS = (LATENT, "Lanczos", "Nearest")  # the names UI, CLI and API offer before the ESRGAN files
PIL_FILTERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
ESRGAN_FOLDER = "ESRGAN"  # A1111's folder name, matched case-insensitively under the models folder
MAX_PASSES = 3
MAX_SCALE = 16.0
MIN_TILE = 32  # out of memory with smaller tiles than this is not the tile's fault


class NonFiniteOutput(ArithmeticError):
    """The net overflowed (float16 on some weights): the output holds NaN or Inf."""

TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all); raising from it stops the upscale


@dataclass(frozen=True)
class UpscalerChoice:
    name: str  # what the user picks, and what hires fix records in the infotext ("Hires upscaler")
    kind: str  # "latent", "image" (PIL resize) or "esrgan"
    path: Path | None = None  # the ESRGAN file
    scale: int | None = None  # the net's own scale, when its header tells (None for pickles until loaded)
    problem: str | None = None  # why the file cannot be used, in words for the user

    @property
    def usable(self) -> bool:
        return self.problem is None


def esrgan_folder(models_dir: Path) -> Path | None:
    """`models_dir/ESRGAN` (any case), or None when there is none."""
    return models_subfolder(models_dir, ESRGAN_FOLDER)


def _candidate_files(models_dir: Path) -> list[Path]:
    folder = esrgan_folder(models_dir)
    if folder is None:
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in ESRGAN_SUFFIXES)


def esrgan_files(models_dir: Path) -> dict[str, Path]:
    """File stem -> path for the files below `models_dir/ESRGAN` (sub-folders too).

    Names are unique regardless of case: the first file in path order keeps a stem, and no file
    takes a built-in name.
    """
    files: dict[str, Path] = {}
    taken = {name.lower() for name in UPSCALER_BUILTINS}
    for path in _candidate_files(models_dir):
        if path.stem.lower() not in taken:
            taken.add(path.stem.lower())
            files[path.stem] = path
    return files


def list_upscalers(models_dir: Path, allow_pickle: bool = False) -> list[UpscalerChoice]:
    """The built-in upscalers, then one entry per file in `models_dir/ESRGAN`, with a problem for unusable files.

    Only safetensors headers are read, so the list is instant. A file whose name repeats an
    earlier file's or a built-in name is listed with that problem.
    """
    choices = [UpscalerChoice(LATENT, "latent")] + [UpscalerChoice(name, "image") for name in UPSCALER_BUILTINS[1:]]
    files = esrgan_files(models_dir)
    owners = {name.lower(): path.name for name, path in files.items()} | {name.lower(): name for name in UPSCALER_BUILTINS}
    for path in _candidate_files(models_dir):
        if files.get(path.stem) != path:
            problem = f"{path.name} has the same name as {owners[path.stem.lower()]!r}; rename it to use it."
            choices.append(UpscalerChoice(path.stem, "esrgan", path, None, problem))
            continue
        info = inspect_esrgan(path, allow_pickle)
        choices.append(UpscalerChoice(path.stem, "esrgan", path, info.config.scale if info.config else None, info.problem))
    return choices


def find_upscaler(name: str, models_dir: Path, allow_pickle: bool = False, what: str = "hires upscaler") -> UpscalerChoice:
    """The upscaler called `name` (exact, else case-insensitive); InvalidRequest listing the choices, or
    naming the file and what is wrong with it (reads only safetensors headers: instant). `what` names
    the field in the message ("hires upscaler", "Upscaler 1")."""
    choices = list_upscalers(Path(models_dir), allow_pickle)
    wanted = str(name).strip()
    choice = next((c for c in choices if c.name == wanted), None) or next((c for c in choices if c.name.lower() == wanted.lower()), None)
    if choice is None:
        names = ", ".join(c.name for c in choices if c.usable)
        raise InvalidRequest(f"No {what} named {wanted!r}. Available: {names} (ESRGAN files go in {Path(models_dir) / 'ESRGAN'}).")
    if not choice.usable:
        raise InvalidRequest(f"The {what} {choice.name!r} cannot be used: {choice.problem}")
    return choice


def target_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 < scale <= MAX_SCALE):
        raise InvalidRequest(f"Upscale factor {scale!r} is out of range; use a number above 0 and at most {MAX_SCALE:g}.")
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def upscale_image(image: Image.Image, scale: float, upscaler: str, models_dir: Path,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, tile: int = 192,
                  overlap: int = 16, allow_pickle: bool = False, progress: TileProgress | None = None) -> Image.Image:
    """`image` resized by `scale` with `upscaler` ("Lanczos", "Nearest" or an ESRGAN file stem).

    `tile` is the tile side in input pixels (0: the whole image at once) and `overlap` the context
    each tile gets on every side. Raises ValueError for "Latent" (the generation upscales latents
    itself), ModelNotFound for an unknown name, ModelLoadError for a file that cannot be used.
    """
    size = target_size(image.size, scale)
    if upscaler.lower() == LATENT.lower():
        raise ValueError("'Latent' upscales the latents inside the generation; upscale_image handles image upscalers only.")
    builtin = next((name for name in PIL_FILTERS if name.lower() == upscaler.lower()), None)
    if builtin:
        return image.resize(size, PIL_FILTERS[builtin])
    files = esrgan_files(models_dir)
    path = files.get(upscaler) or next((p for n, p in files.items() if n.lower() == upscaler.lower()), None)
    if path is None:
        names = ", ".join([*UPSCALER_BUILTINS[1:], *files]) or "none"
        raise ModelNotFound(f"No upscaler named {upscaler!r}. Available: {names} (ESRGAN files go in models/ESRGAN/).")
    net = load_esrgan(path, allow_pickle, device, dtype)
    try:
        return upscale_with_net(image, size, net, tile, overlap, progress)
    except NonFiniteOutput as error:
        if dtype == torch.float32:
            raise ModelLoadError(f"{path.name} gives NaN/Inf even in float32: the file's weights are damaged.") from error
        # Some ESRGAN weights overflow float16 on bright areas (black or speckled output): redo in float32.
        log.warning("%s gave NaN/Inf in %s; upscaling again in float32", path.name, dtype)
        return upscale_with_net(image, size, load_esrgan(path, allow_pickle, device, torch.float32), tile, overlap, progress)


def upscale_with_net(image: Image.Image, size: tuple[int, int], net: RRDBNet, tile: int = 192, overlap: int = 16,
                     progress: TileProgress | None = None) -> Image.Image:
    """Run `net` on `image` until it reaches `size` (at least once), then Lanczos-resize to exactly `size`.

    An alpha channel is not fed to the net; it is resized with Lanczos and put back. Raises
    NonFiniteOutput when a half-precision net overflows (the caller retries in float32).
    """
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    result = image.convert("RGB")
    for _ in range(MAX_PASSES):
        output = run_fitting(net, image_to_tensor(result), tile, overlap, progress)
        if not torch.isfinite(output).all():
            raise NonFiniteOutput(f"The upscaler gave NaN/Inf in {next(net.parameters()).dtype}.")
        result = tensor_to_image(output)
        if net.config.scale == 1 or (result.width >= size[0] and result.height >= size[1]):
            break
    if result.size != size:
        result = result.resize(size, Image.Resampling.LANCZOS)
    if alpha is not None:
        result.putalpha(alpha.resize(size, Image.Resampling.LANCZOS))
    return result


def run_fitting(net: RRDBNet, x: torch.Tensor, tile: int, overlap: int, progress: TileProgress | None) -> torch.Tensor:
    """`run_tiled`, halving the tile on out-of-memory down to `MIN_TILE` (then the error goes up)."""
    while True:
        try:
            return run_tiled(net, x, tile, overlap, progress)
        except Exception as error:
            smaller = (tile if tile > 0 else max(x.shape[-2:])) // 2
            if not is_out_of_memory(error) or smaller < MIN_TILE:
                raise
        free_device_memory(next(net.parameters()).device)
        log.warning("upscaler ran out of memory with %d px tiles; retrying with %d px tiles", tile, smaller)
        tile = smaller


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 in [0, 1], on the CPU."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def run_tiled(net: RRDBNet, x: torch.Tensor, tile: int = 192, overlap: int = 16,
              progress: TileProgress | None = None) -> torch.Tensor:
    """`net(x)` for a (1, 3, H, W) CPU tensor, computed tile by tile; returns a float32 CPU tensor.

    Each tile of `tile` x `tile` input pixels is run with up to `overlap` pixels of its neighbours
    around it, and only its own area of the output is kept. The result equals the untiled one wherever
    the net's receptive field fits in the overlap; beyond that the difference is tiny and has no seam
    (every output pixel sees at least `overlap` pixels of context). Sides are padded (reflect) to the
    net's pixel-unshuffle factor and tile edges fall on multiples of it.
    """
    parameter = next(net.parameters())
    s, mod = net.config.scale, net.config.unshuffle
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % mod, -width % mod
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    full_h, full_w = x.shape[-2:]
    if tile <= 0 or (full_h <= tile and full_w <= tile):
        tile = max(full_h, full_w)
    tile = max(mod, tile // mod * mod)
    overlap = max(0, math.ceil(overlap / mod) * mod)
    out = torch.empty((1, net.config.num_out_ch, full_h * s, full_w * s), dtype=torch.float32)
    starts = [(top, left) for top in range(0, full_h, tile) for left in range(0, full_w, tile)]
    with torch.inference_mode():
        for done, (top, left) in enumerate(starts, 1):
            bottom, right = min(top + tile, full_h), min(left + tile, full_w)
            top_c, left_c = max(top - overlap, 0), max(left - overlap, 0)
            bottom_c, right_c = min(bottom + overlap, full_h), min(right + overlap, full_w)
            piece = x[..., top_c:bottom_c, left_c:right_c].to(parameter.device, parameter.dtype)
            result = net(piece)
            keep = result[..., (top - top_c) * s:(bottom - top_c) * s, (left - left_c) * s:(right - left_c) * s]
            out[..., top * s:bottom * s, left * s:right * s] = keep.float().cpu()
            if progress is not None:
                progress(done, len(starts))
    return out[..., :height * s, :width * s]
