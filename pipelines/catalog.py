"""Finding models on disk, without loading them.

Looks in the models folder for diffusers folders (family from `model_index.json`) and single-file
`.safetensors` checkpoints (family from the state-dict keys), and read-only in the local Hugging
Face cache. Files that cannot be used are still listed, with the reason, so the user sees why.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.checkpoints import PICKLE_SUFFIXES, inspect_checkpoint
from pipelines import demo
from pipelines.families import Family

PIPELINE_CLASS_FAMILIES = {
    "StableDiffusionPipeline": Family.SD15,
    "StableDiffusionXLPipeline": Family.SDXL,
    "FluxPipeline": Family.FLUX,
    # Inpainting checkpoints (9-channel UNets) as diffusers saves them: the same components.
    "StableDiffusionInpaintPipeline": Family.SD15,
    "StableDiffusionXLInpaintPipeline": Family.SDXL,
}
# Folders that hold auxiliary weights (face models, adapters), not checkpoints to list.
AUXILIARY_FOLDERS = {"insightface", "pulid", "eva_clip", "facexlib", "lora", "loras", "vae", "vae-approx", "embeddings", "controlnet", "esrgan"}
DEMO_MODEL_NAME = "demo (trained on simple shapes and faces)" if demo.SHIP_TRAINED_DEMO else "demo (tiny random weights)"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: Family | None
    format: str  # diffusers | single-file | flux-transformer | hf-cache | demo
    path: Path
    size_bytes: int
    base_path: Path | None = None  # FLUX single files: the diffusers folder giving the other parts
    problem: str | None = None  # set when the entry cannot be loaded; the text says why

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def label(self) -> str:
        family = self.family.spec.label if self.family else "unknown"
        return f"{self.name} [{family}, {self.format}]"

    def starting_values(self) -> StartingValues:
        """What a generation on this model starts with when the user sets nothing (the forms on a fresh
        start, the CLI without --width/--height/--cfg): the family's, or the demo's own (trained at
        128x128; CFG 2 draws it best)."""
        if self.format == "demo":
            return StartingValues((demo.DEFAULT_SIZE, demo.DEFAULT_SIZE), demo.DEFAULT_STEPS, demo.DEFAULT_CFG)
        spec = self.family.spec
        return StartingValues(spec.default_size, spec.default_steps, spec.default_cfg)


@dataclass(frozen=True)
class StartingValues:
    size: tuple[int, int]
    steps: int
    cfg: float


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def family_of_diffusers_folder(path: Path) -> tuple[Family | None, str | None]:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        return None, f"model_index.json in {path.name} cannot be read: {error}"
    class_name = index.get("_class_name", "") if isinstance(index, dict) else ""
    family = PIPELINE_CLASS_FAMILIES.get(class_name)
    if family is None:
        return None, f"{path.name} is a {class_name or 'unknown'} pipeline; Likeness runs SD 1.5, SDXL and FLUX.1 text-to-image pipelines."
    return family, None


def models_subfolder(models_dir: Path, name: str) -> Path | None:
    """`models_dir/<name>` in any capitalization (A1111's `ESRGAN`, `VAE`...), or None when there is none."""
    try:
        return next((p for p in sorted(Path(models_dir).iterdir()) if p.is_dir() and p.name.lower() == name.lower()), None)
    except OSError:
        return None


def scan_models_folder(models_dir: Path, allow_pickle: bool = False) -> list[ModelEntry]:
    entries: list[ModelEntry] = []
    if not models_dir.is_dir():
        return entries
    flux_files: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(models_dir):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if d.lower() not in AUXILIARY_FOLDERS and not d.startswith(".") and not d.endswith(".config"))
        if "model_index.json" in files:
            family, problem = family_of_diffusers_folder(root_path)
            entries.append(ModelEntry(_name(models_dir, root_path), family, "diffusers", root_path, folder_size(root_path), problem=problem))
            dirs[:] = []  # its subfolders are its components
            continue
        for filename in sorted(files):
            path = root_path / filename
            suffix = path.suffix.lower()
            if suffix != ".safetensors" and suffix not in PICKLE_SUFFIXES:
                continue
            layout = inspect_checkpoint(path, allow_pickle)
            name = _name(models_dir, path)
            size = path.stat().st_size
            if layout.kind == "lora":
                continue  # LoRAs are listed apart (pipelines/lora), never as models
            if layout.kind == "flux-transformer":
                flux_files.append((path, name))
            else:
                entries.append(ModelEntry(name, layout.family, "single-file", path, size, problem=layout.problem))
    flux_bases = [e for e in entries if e.format == "diffusers" and e.family is Family.FLUX and e.usable]
    for path, name in flux_files:
        base = flux_bases[0].path if flux_bases else None
        problem = None if base else (
            f"{path.name} is a FLUX.1 transformer only; add a FLUX.1 diffusers folder (with text_encoder, "
            f"text_encoder_2, tokenizer, tokenizer_2, vae, scheduler) to {models_dir} for the other parts."
        )
        entries.append(ModelEntry(name, Family.FLUX, "flux-transformer", path, path.stat().st_size, base_path=base, problem=problem))
    return _disambiguate(entries, models_dir)


def _disambiguate(entries: list[ModelEntry], models_dir: Path) -> list[ModelEntry]:
    """`x.safetensors` and a folder `x/` would both be named `x`: give colliding names their suffix."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.name] = counts.get(entry.name, 0) + 1
    result = []
    for entry in entries:
        if counts[entry.name] > 1:
            relative = str(entry.path.relative_to(models_dir)).replace(os.sep, "/")
            entry = dataclasses.replace(entry, name=relative if entry.path.is_file() else relative + "/")
        result.append(entry)
    return result


def _name(models_dir: Path, path: Path) -> str:
    relative = path.relative_to(models_dir)
    return str(relative.with_suffix("") if path.is_file() else relative).replace(os.sep, "/")


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def scan_hf_cache(cache_dir: Path | None = None) -> list[ModelEntry]:
    """Diffusers pipelines already in the Hugging Face cache (read-only, used offline)."""
    cache_dir = cache_dir or hf_cache_dir()
    entries: list[ModelEntry] = []
    if not cache_dir.is_dir():
        return entries
    for repo in sorted(cache_dir.glob("models--*")):
        snapshot = _current_snapshot(repo)
        if snapshot is None or not (snapshot / "model_index.json").is_file():
            continue
        family, problem = family_of_diffusers_folder(snapshot)
        repo_id = repo.name[len("models--"):].replace("--", "/")
        # Snapshot files are links into blobs/: count the blobs, which hold the bytes.
        entries.append(ModelEntry(f"hf:{repo_id}", family, "hf-cache", snapshot, folder_size(repo / "blobs"), problem=problem))
    return entries


def _current_snapshot(repo: Path) -> Path | None:
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = repo / "snapshots" / ref.read_text().strip()
        if candidate.is_dir():
            return candidate
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if (repo / "snapshots").is_dir() else []
    return snapshots[-1] if snapshots else None


def discover(models_dir: Path, include_hf_cache: bool = True, allow_pickle: bool = False, hf_cache: Path | None = None) -> list[ModelEntry]:
    entries = scan_models_folder(models_dir, allow_pickle)
    if include_hf_cache:
        entries += scan_hf_cache(hf_cache)
    return entries
