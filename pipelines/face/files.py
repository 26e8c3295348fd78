"""The files the Face (PuLID) feature needs, the folder each belongs in, and which are missing.

None of them can be downloaded by the app: the user puts them under the models folder, e.g.

    models/insightface/antelopev2/scrfd_10g_bnkps.onnx      face detector
    models/insightface/antelopev2/glintr100.onnx            face recognizer (ArcFace R100)
    models/eva_clip/EVA02_CLIP_L_336_psz14_s6B.pt           EVA-CLIP vision tower
    models/facexlib/parsing_bisenet.pth                     face parsing
    models/pulid/pulid_v1.1.safetensors                     PuLID for SDXL
    models/pulid/pulid_flux_v0.9.1.safetensors              PuLID for FLUX.1 (v0.9.0 accepted)

Where the antelopev2 files are also looked for (first match wins), because that is where users
end up putting them:
- `insightface/antelopev2/antelopev2/`: the pack's zip holds a folder of the same name, so
  "extract here" into `antelopev2/` nests it one level deeper (a known pitfall);
- `insightface/models/antelopev2/`: insightface's own layout (ComfyUI PuLID nodes use it);
- `~/.insightface/models/antelopev2/`: insightface's default home, only read, never written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from pipelines.errors import InvalidRequest, ModelNotFound

ANTELOPEV2 = "insightface/antelopev2"
DETECTOR = "scrfd_10g_bnkps.onnx"
RECOGNIZER = "glintr100.onnx"
PULID_FAMILIES = ("sdxl", "flux")


@dataclass(frozen=True)
class FaceFile:
    name: str
    purpose: str
    folder: str  # relative to the models folder, "/"-separated
    families: tuple[str, ...] = PULID_FAMILIES  # the model families that need it
    optional: bool = False  # listed for completeness, never reported missing
    older: tuple[str, ...] = ()  # older releases accepted in its place
    note_if_older: str = ""


FACE_FILES: tuple[FaceFile, ...] = (
    FaceFile(DETECTOR, "insightface antelopev2 face detector", ANTELOPEV2),
    FaceFile(RECOGNIZER, "insightface antelopev2 face recognizer, ArcFace R100", ANTELOPEV2),
    FaceFile("1k3d68.onnx", "antelopev2 3D landmarks, not used", ANTELOPEV2, optional=True),
    FaceFile("2d106det.onnx", "antelopev2 2D landmarks, not used", ANTELOPEV2, optional=True),
    FaceFile("genderage.onnx", "antelopev2 gender and age, not used", ANTELOPEV2, optional=True),
    FaceFile("EVA02_CLIP_L_336_psz14_s6B.pt", "EVA02-CLIP-L-14-336 image encoder", "eva_clip"),
    FaceFile("parsing_bisenet.pth", "facexlib BiSeNet face parsing", "facexlib"),
    FaceFile("pulid_v1.1.safetensors", "PuLID v1.1 weights for SDXL", "pulid", families=("sdxl",)),
    FaceFile(
        "pulid_flux_v0.9.1.safetensors",
        "PuLID v0.9.1 weights for FLUX.1",
        "pulid",
        families=("flux",),
        older=("pulid_flux_v0.9.0.safetensors",),
        note_if_older="using the older v0.9.0; v0.9.1 is about 5 points better on ID similarity",
    ),
)


@dataclass(frozen=True)
class FileStatus:
    name: str  # the file name to download
    purpose: str
    folder: Path  # the exact folder it belongs in (under the models folder)
    present: bool
    path: Path | None  # where it was found (may be a fallback location or an older release)
    required: bool = True
    note: str = ""  # where it was found if not in `folder`, an older release, or a hint


def default_insightface_root() -> Path:
    return Path("~/.insightface").expanduser()


def face_file_status(models_dir: Path | str, family: str | None = None, *, insightface_root: Path | str | None = None) -> list[FileStatus]:
    """One status per file the Face feature uses, for `family` ("sdxl", "flux"; None: both)."""
    models_dir = Path(models_dir)
    home = Path(insightface_root) if insightface_root is not None else default_insightface_root()
    families = _families(family)
    statuses = []
    for item in FACE_FILES:
        if not set(item.families) & set(families):
            continue
        statuses.append(_status(item, models_dir, home))
    return statuses


def missing_message(statuses: Iterable[FileStatus]) -> str:
    """A sentence naming each missing required file and its exact folder; "" when none is missing."""
    missing = [s for s in statuses if s.required and not s.present]
    if not missing:
        return ""
    lines = [f"Face reference needs {len(missing)} file{'s' if len(missing) > 1 else ''} that {'are' if len(missing) > 1 else 'is'} missing:"]
    for status in missing:
        line = f"- {status.name} ({status.purpose}): put it in {status.folder}"
        lines.append(f"{line} ({status.note})" if status.note else line)
    # A blank line first: in Markdown, a line right after a list item would run into that item.
    lines += ["", "Likeness cannot download them; add the files and try again."]
    return "\n".join(lines)


def require_face_files(models_dir: Path | str, family: str | None = None, *, insightface_root: Path | str | None = None) -> dict[str, Path]:
    """file name -> path of every required file; raises ModelNotFound naming what is missing."""
    statuses = face_file_status(models_dir, family, insightface_root=insightface_root)
    message = missing_message(statuses)
    if message:
        raise ModelNotFound(message)
    return {s.name: s.path for s in statuses if s.present and s.path is not None}


def antelopev2_files(models_dir: Path | str, *, insightface_root: Path | str | None = None) -> tuple[Path, Path]:
    """(detector, recognizer) paths; raises ModelNotFound naming the missing one(s) and the folder."""
    statuses = [s for s in face_file_status(models_dir, None, insightface_root=insightface_root) if s.name in (DETECTOR, RECOGNIZER)]
    message = missing_message(statuses)
    if message:
        raise ModelNotFound(message)
    found = {s.name: s.path for s in statuses}
    return found[DETECTOR], found[RECOGNIZER]


def _families(family: str | None) -> Sequence[str]:
    if family is None:
        return PULID_FAMILIES
    value = str(getattr(family, "value", family)).lower()
    if value not in PULID_FAMILIES:
        raise InvalidRequest(f"Face reference (PuLID) works with SDXL and FLUX.1 models, not {value!r}.")
    return (value,)


def _candidate_folders(item: FaceFile, models_dir: Path, home: Path) -> list[tuple[Path, str]]:
    """(folder, note) in search order; the note says why a non-canonical place was used."""
    canonical = models_dir / item.folder
    if item.folder != ANTELOPEV2:
        return [(canonical, "")]
    nested = "nested antelopev2/antelopev2 folder from unzipping; works as is"
    return [
        (canonical, ""),
        (canonical / "antelopev2", f"found in the {nested}"),
        (models_dir / "insightface/models/antelopev2", "found in insightface's models/antelopev2 layout"),
        (models_dir / "insightface/models/antelopev2/antelopev2", f"found in the {nested}"),
        (home / "models/antelopev2", f"found in insightface's own folder {home / 'models/antelopev2'}"),
        (home / "models/antelopev2/antelopev2", f"found in insightface's own folder ({nested})"),
    ]


def _status(item: FaceFile, models_dir: Path, home: Path) -> FileStatus:
    folder = models_dir / item.folder
    required = not item.optional
    for name, note in [(item.name, "")] + [(old, item.note_if_older) for old in item.older]:
        for candidate, where in _candidate_folders(item, models_dir, home):
            path = candidate / name
            if path.is_file():
                text = "; ".join(part for part in (where, note) if part)
                return FileStatus(item.name, item.purpose, folder, True, path, required, text)
    return FileStatus(item.name, item.purpose, folder, False, None, required, _hint(item, models_dir))


def _hint(item: FaceFile, models_dir: Path) -> str:
    """Why a missing file may be missing: still zipped, or dropped in the wrong folder."""
    if item.folder == ANTELOPEV2:
        for zipped in (models_dir / "insightface/antelopev2.zip", models_dir / ANTELOPEV2 / "antelopev2.zip"):
            if zipped.is_file():
                return f"{zipped} is still zipped: extract it"
    for stray in (models_dir / item.name, models_dir / Path(item.folder).parent / item.name):
        if stray.is_file() and stray.parent != models_dir / item.folder:
            return f"found at {stray}, move it"
    return ""
