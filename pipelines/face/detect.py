"""Reference photo -> faces -> the 512x512 aligned crop PuLID conditions on.

The steps follow the official PuLID preprocessing (ToTheBeginning/PuLID, `get_id_embedding`):

1. `load_reference_image`: any photo a user hands in -> RGB uint8, EXIF orientation applied,
   transparency flattened on white, 16-bit scaled down; then, as the official apps do with
   `resize_numpy_image_long(image, 1024)`, a photo whose long side is above 1024 px is shrunk to
   1024 (Lanczos, OpenCV's INTER_LANCZOS4, sizes truncated to whole pixels); smaller photos are
   left as they are, never enlarged. Detection, alignment and parsing all read this image.
2. `FaceDetector.detect`: insightface `FaceAnalysis` over antelopev2 (SCRFD at 640x640, then
   glintr100 on each face) -> faces with their raw 512-d ArcFace embedding, largest first.
3. `pick_face`: the largest face (or the one the user picked); clear errors for none / too small.
4. `align_face`: 5-point similarity to facexlib's FFHQ 512 template (what `FaceRestoreHelper(
   face_size=512, crop_ratio=(1, 1))` produces); face parsing and EVA-CLIP read this crop.

Where this differs from the official code, on purpose:
- The crop is aligned on insightface's SCRFD keypoints, not on a second detector (facexlib's
  RetinaFace-ResNet50 at score 0.97, which needs torchvision). Both give 5 points in the same
  order (eyes, nose tip, mouth corners, left to right in the image); the points of the two
  detectors differ by a few pixels, so the crop can be shifted or scaled by a few percent.
- The official code embeds the *largest* face but crops the face nearest the image *centre*;
  in a group photo those can be two people. Here one face (largest, or the one picked) is used
  for both.
- No recognizer fallback: when insightface finds no face, the official code runs glintr100 on
  RetinaFace's aligned crop. With no second detector there is no crop to run it on, so
  `pick_face` raises "No face found in <photo>" (a `FaceError`, never a crash).
"""
from __future__ import annotations

import gc
import io
import logging
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

from pipelines.errors import InvalidRequest, ModelLoadError, ModelNotFound
from pipelines.face.files import DETECTOR, RECOGNIZER, antelopev2_files
from pipelines.images import MAX_PHOTO_PIXELS, check_pixels, open_image

log = logging.getLogger("likeness")

MAX_SIDE = 1024  # the official apps' resize_numpy_image_long(image, 1024): long side before detection
MIN_FACE_PX = 32  # faces whose box is narrower or shorter than this are refused
ARCFACE_INPUT_PX = 112  # faces below this are upscaled for the recognizer: a note, not an error

# facexlib FaceRestoreHelper's standard 5 landmarks of an FFHQ face at 512x512 (template_3points
# False): left eye, right eye, nose tip, left mouth corner, right mouth corner.
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=np.float64,
)
# facexlib fills outside the photo with (135, 133, 132) in BGR: the same grey in RGB.
ALIGN_BORDER_RGB = (132, 133, 135)


class FaceError(InvalidRequest):
    """A reference photo the face feature cannot use: unreadable, no face, face too small."""


# --------------------------------------------------------------------------------------------
# Reference photos
# --------------------------------------------------------------------------------------------

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def load_reference_image(
    source,
    *,
    max_side: int = MAX_SIDE,
    name: str | None = None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Any photo -> (H, W, 3) RGB uint8 with the long side <= `max_side`.

    `source`: a path, the file's bytes, a PIL image, or a numpy array (RGB/RGBA/gray, uint8,
    uint16 or float). Raises `FaceError` with a message for the user for a missing, corrupt or
    non-image file. Human-readable notes (e.g. "downscaled from ...") go to the log and, when
    given, to `notes`.
    """
    label = name or _label(source)
    if isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source, label)
        return _limit_size(rgb, max_side, label, notes, rgb.shape[1::-1])
    image, original_size = _open(source, label)
    upright = _upright(image)
    if upright.size != image.size:  # rotated by 90 degrees: report the size as displayed
        original_size = original_size[::-1]
    return _limit_size(_to_rgb(upright, label), max_side, label, notes, original_size)


def _label(source) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name or str(source)
    if isinstance(source, Image.Image) and getattr(source, "filename", ""):
        return Path(source.filename).name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the uploaded photo"
    return "the photo"


def _open(source, label: str) -> tuple[Image.Image, tuple[int, int]]:
    """Decode `source` fully (first frame), at its full size.

    A file or bytes are opened through `pipelines.images.open_image`: the size is checked from the
    header (100 MP at most) before any pixel is decoded. JPEGs are not decoded at a reduced size
    (PIL's `draft`): the official code shrinks the fully decoded photo, and a DCT-scaled decode
    gives other pixels, so another crop and embedding."""
    if isinstance(source, Image.Image):
        check_pixels(source.size, MAX_PHOTO_PIXELS, label, FaceError)
        image = source
    elif isinstance(source, (bytes, bytearray, memoryview, str, Path)):
        image = open_image(source, max_pixels=MAX_PHOTO_PIXELS, what=label, error=FaceError)
    else:
        raise FaceError(f"Expected a photo (file path, bytes or image), got {type(source).__name__}.")
    original_size = image.size
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise FaceError(f"{label} is damaged or incomplete and cannot be read ({error}).") from None
    return image, original_size


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phones store portrait photos sideways plus a rotation tag)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # a broken EXIF block must not lose the photo
        log.warning("Ignoring unreadable EXIF orientation: %s", error)
        return image


def _to_rgb(image: Image.Image, label: str) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(image), mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    icc = image.info.get("icc_profile")
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = (image.convert("LA") if mode == "La" else image).convert("RGBA")  # no direct La -> RGBA
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba).convert("RGB")
        if icc and image.mode in ("RGB", "CMYK"):
            image = _to_srgb(image, icc)
        if image.mode != "RGB":
            image = image.convert("RGB")
    except (OSError, ValueError) as error:
        raise FaceError(f"{label} uses a colour mode Likeness cannot convert ({mode}: {error}).") from None
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """Convert through the embedded colour profile (CMYK print files, wide-gamut phone photos)."""
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception as error:  # a broken profile: the plain conversion is still a usable photo
        log.info("Ignoring the embedded colour profile (%s); converting %s directly.", error, image.mode)
        return image


def _scale_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit / 32-bit / float samples -> 0..255 (PIL's own convert clips instead of scaling).

    The range is read from the values: floats up to 1.0 are 0..1, values up to 255 are already
    8-bit (a real 16-bit photo that dark would be black), up to 65535 are 16-bit.
    """
    values = np.nan_to_num(array.astype(np.float64))
    top = float(values.max()) if values.size else 0.0
    if (mode == "F" or array.dtype.kind == "f") and top <= 1.0:
        full = 1.0
    else:
        full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, label: str) -> np.ndarray:
    """A numpy photo (RGB channel order) -> RGB uint8; alpha composited on white."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) == 0:
        raise FaceError(f"{label} is not an image: expected height x width (x 3 or 4) pixels, got shape {array.shape}.")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = _scale_to_uint8(array, "")
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        flat = array[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(flat), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def resize_long_side(rgb: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The official `resize_numpy_image_long(image, max_side)`: shrink (never enlarge) to `max_side`
    on the long side with Lanczos; the new sides are truncated, as `int(h * k)`, `int(w * k)`."""
    height, width = rgb.shape[:2]
    if max(height, width) <= max_side:
        return rgb
    k = max_side / max(height, width)
    size = (max(1, int(width * k)), max(1, int(height * k)))  # cv2 takes (w, h); 0 px would be an error
    return cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4)


def _limit_size(rgb: np.ndarray, max_side: int, label: str, notes: list[str] | None, original_size: Sequence[int]) -> np.ndarray:
    """Long side <= max_side as the official `resize_numpy_image_long`; `original_size` is the file's (w, h).

    Same arithmetic as the official function (k = max_side / long side, each side `int(side * k)`,
    so truncated) and the same filter (`cv2.INTER_LANCZOS4`); a photo already within `max_side` is
    returned unchanged, never enlarged.
    """
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_FACE_PX:
        raise FaceError(f"{label} is only {width}x{height} px, too small to hold a usable face (at least {MIN_FACE_PX} px).")
    rgb = resize_long_side(rgb, max_side)
    if max(original_size) > max_side:
        note = (
            f"{label} is {original_size[0]}x{original_size[1]} px; downscaled to {rgb.shape[1]}x{rgb.shape[0]} "
            f"(long side {max_side}) for face detection."
        )
        log.info(note)
        if notes is not None:
            notes.append(note)
    return rgb


# --------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------


def face_alignment_matrix(kps: np.ndarray, size: int = 512) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, shift) taking the 5 keypoints onto the template.

    Same estimator as facexlib's `align_warp_face`: `cv2.estimateAffinePartial2D(..., LMEDS)`.
    """
    points = np.asarray(kps, dtype=np.float32).reshape(5, 2)
    template = (FFHQ_TEMPLATE_512 * (size / 512.0)).astype(np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(points, template, method=cv2.LMEDS)
    if matrix is None or not np.all(np.isfinite(matrix)):
        raise FaceError("Could not align the face: its keypoints are degenerate (all on one spot or one line).")
    return matrix


def align_face(image_rgb: np.ndarray, kps: np.ndarray, size: int = 512) -> np.ndarray:
    """The face warped to facexlib's FFHQ-style `size` x `size` crop (crop_ratio (1, 1)), RGB."""
    matrix = face_alignment_matrix(kps, size)
    return cv2.warpAffine(image_rgb, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=ALIGN_BORDER_RGB)


# --------------------------------------------------------------------------------------------
# Detection and embedding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceDetectorConfig:
    """How the face models run.

    device: "cpu", "cuda" or "cuda:N". CUDA needs `onnxruntime-gpu` installed in place of
        `onnxruntime`; without it, or when its CUDA provider fails to load (CUDA/cuDNN mismatch),
        the models run on the CPU and `FaceDetector.notes` says so.
    det_size: detector input side. PuLID uses 640; larger finds smaller faces, slower.
    det_thresh: minimum detection score (insightface's default 0.5). Lower finds more faces and
        more false ones.
    gpu_mem_limit_mb: cap on each onnxruntime CUDA session's memory arena. That arena lives
        outside PyTorch's allocator (`torch.cuda.empty_cache()` cannot free it); the default
        strategy grows it in powers of two and keeps it. With `kSameAsRequested` it grows only by
        what is asked, and the cap keeps a face model from holding VRAM the VAE decode needs.
        glintr100 alone is about 250 MB of weights; 0 means no cap.
    min_face_px: the chosen face's box must be at least this wide and tall (0: no minimum).
    cpu_threads: onnxruntime intra-op threads (0: onnxruntime's default, all cores).
    """

    device: str = "cpu"
    det_size: int = 640
    det_thresh: float = 0.5
    gpu_mem_limit_mb: int = 2048
    min_face_px: int = MIN_FACE_PX
    cpu_threads: int = 0


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face, in pixels of the image given to `detect`."""

    bbox: np.ndarray  # (4,) float32: x1, y1, x2, y2
    kps: np.ndarray  # (5, 2) float32: left eye, right eye, nose tip, left and right mouth corner
    det_score: float
    embedding: np.ndarray  # (512,) float32, raw (not normalised): what PuLID's ID condition uses
    area: float  # box area, as the official code ranks faces (unclipped)

    @property
    def size(self) -> tuple[float, float]:
        return float(self.bbox[2] - self.bbox[0]), float(self.bbox[3] - self.bbox[1])

    @property
    def normed_embedding(self) -> np.ndarray:
        return self.embedding / max(float(np.linalg.norm(self.embedding)), 1e-12)


@dataclass(frozen=True)
class FaceChoice:
    face: DetectedFace
    index: int  # position in `faces`
    faces: tuple[DetectedFace, ...]  # every face found, largest first: the UI can offer another
    notes: tuple[str, ...]


def pick_face(faces: Sequence[DetectedFace], *, index: int = 0, source: str = "the photo", min_face_px: int = MIN_FACE_PX) -> FaceChoice:
    """The face to condition on: the largest unless the user picked another (`index`)."""
    if not faces:
        raise FaceError(
            f"No face found in {source}. Use a photo where the face is clearly visible, facing the camera and "
            f"at least {max(min_face_px, 1)} px wide."
        )
    if not 0 <= index < len(faces):
        raise FaceError(f"{source} has {len(faces)} face{'s' if len(faces) > 1 else ''}; there is no face #{index + 1}.")
    face = faces[index]
    width, height = face.size
    if min_face_px and min(width, height) < min_face_px:
        raise FaceError(
            f"The face in {source} is only {width:.0f}x{height:.0f} px; Likeness needs at least "
            f"{min_face_px}x{min_face_px} px. Use a closer or larger photo."
        )
    notes = []
    if len(faces) > 1:
        which = "the largest" if index == 0 else f"face #{index + 1}"
        notes.append(f"{len(faces)} faces found in {source}; using {which} ({width:.0f}x{height:.0f} px). Pick another face if this is the wrong person.")
    if min(width, height) < ARCFACE_INPUT_PX:
        notes.append(f"The face in {source} is small ({width:.0f}x{height:.0f} px); likeness may be weaker than with a closer photo.")
    return FaceChoice(face, index, tuple(faces), tuple(notes))


def execution_providers(config: FaceDetectorConfig, available: Sequence[str] | None = None) -> tuple[list[str], list[dict], str]:
    """(providers, provider_options, note) for onnxruntime; the note explains a CPU fallback."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    device = config.device.lower()
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"], [{}], ""
    if "CUDAExecutionProvider" not in available:
        note = (
            "Face models run on the CPU: the installed onnxruntime has no CUDA provider "
            "(install onnxruntime-gpu in place of onnxruntime for the GPU)."
        )
        return ["CPUExecutionProvider"], [{}], note
    options = {"device_id": device.partition(":")[2] or "0", "arena_extend_strategy": "kSameAsRequested"}
    if config.gpu_mem_limit_mb > 0:
        options["gpu_mem_limit"] = str(int(config.gpu_mem_limit_mb) * 1024 * 1024)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], [options, {}], ""


class FaceDetector:
    """insightface `FaceAnalysis` over the antelopev2 detector + recognizer, loaded on first use.

    Memory: `detect` creates the onnxruntime sessions (the recognizer, the detector, and the
    detector's fixed 640x640 copy that insightface builds on first use); `release()` drops them
    all. Call it once the embedding is made, so no face model holds GPU memory while the image
    model denoises and decodes; a later `detect` loads them again (well under a second).

    Only the two files PuLID needs are loaded: when their folder holds other `*.onnx` files (the
    other three antelopev2 models, or a stray recognizer that would sort first and win
    insightface's routing), FaceAnalysis is pointed at a temporary folder that links just the two.
    """

    def __init__(self, detector_path: Path | str, recognizer_path: Path | str, config: FaceDetectorConfig = FaceDetectorConfig()):
        self.detector_path = Path(detector_path)
        self.recognizer_path = Path(recognizer_path)
        self.config = config
        self.notes: list[str] = []  # user-facing remarks about the last load (CPU fallback, ...)
        self.providers: dict[str, list[str]] = {}  # task -> providers the session really uses
        self._app = None
        self._staging: Path | None = None  # temporary folder linking just the two files, if any
        self._staging_cleanup: weakref.finalize | None = None  # removes it even without release()

    @classmethod
    def from_models_dir(cls, models_dir: Path | str, config: FaceDetectorConfig = FaceDetectorConfig(), *, insightface_root: Path | str | None = None) -> "FaceDetector":
        """Raises ModelNotFound naming the missing file(s) and the folder they belong in."""
        detector, recognizer = antelopev2_files(models_dir, insightface_root=insightface_root)
        return cls(detector, recognizer, config)

    @property
    def loaded(self) -> bool:
        return self._app is not None

    @property
    def provider(self) -> str | None:
        """The provider the detector and recognizer really run on, e.g. "CPUExecutionProvider"."""
        used = {names[0] for names in self.providers.values() if names}
        return " + ".join(sorted(used)) if used else None

    def sessions(self) -> list:
        """The onnxruntime sessions held now (recognizer, detector, detector per input size)."""
        if self._app is None:
            return []
        held = []
        for model in self._app.models.values():
            candidates = [model.session, *getattr(model, "resolution_sessions", {}).values()]
            held += [s for s in candidates if s is not None and all(s is not h for h in held)]
        return held

    def load(self) -> None:
        if self._app is not None:
            return
        import onnxruntime
        import torch  # noqa: F401  (before insightface: its CUDA provider preloads cuDNN)
        from insightface.app import FaceAnalysis

        for path in (self.detector_path, self.recognizer_path):
            if not path.is_file():  # checked here: FaceAnalysis would try to download a missing pack
                raise ModelNotFound(f"Face model {path.name} not found: put it in {path.parent}.")
        providers, options, note = execution_providers(self.config)
        self.notes = [note] if note else []
        session_options = onnxruntime.SessionOptions()
        session_options.log_severity_level = 3
        if self.config.cpu_threads > 0:
            session_options.intra_op_num_threads = self.config.cpu_threads
        folder = self._pack_folder()
        started = time.perf_counter()
        try:
            app = FaceAnalysis(
                name=str(folder),  # a local folder: insightface never tries to download
                root=str(folder.parent),
                allowed_modules=["detection", "recognition"],
                providers=providers,
                provider_options=options,
                sess_options=session_options,
            )
            # ctx_id only matters when negative (insightface then rebuilds each session for the
            # CPU); the providers above already say where to run.
            app.prepare(ctx_id=0, det_size=(self.config.det_size, self.config.det_size), det_thresh=self.config.det_thresh)
        except Exception as error:
            self._remove_staging()
            what = "no face detector among them" if isinstance(error, AssertionError) else str(error)
            raise ModelLoadError(f"Could not load the face models {self.detector_path.name} and {self.recognizer_path.name} from {self.detector_path.parent}: {what}.") from error
        self._check_routing(app)
        self._app = app
        self.providers = {task: list(model.session.get_providers()) for task, model in app.models.items()}
        self._note_fallback(providers[0])
        log.info(
            "Face models loaded: %s + %s on %s in %.2f s%s",
            DETECTOR,
            RECOGNIZER,
            self.provider,
            time.perf_counter() - started,
            f" (arena cap {self.config.gpu_mem_limit_mb} MB)" if providers[0] == "CUDAExecutionProvider" and self.config.gpu_mem_limit_mb > 0 else "",
        )

    def detect(self, image_rgb: np.ndarray) -> list[DetectedFace]:
        """Every face in an RGB uint8 image (see `load_reference_image`), largest first."""
        if not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ValueError("detect() takes an RGB uint8 array of shape (H, W, 3); use load_reference_image() first.")
        self.load()
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])  # insightface works in OpenCV's BGR
        found = []
        for face in self._app.get(bgr):
            bbox = np.asarray(face.bbox, dtype=np.float32)
            found.append(
                DetectedFace(
                    bbox=bbox,
                    kps=np.asarray(face.kps, dtype=np.float32).reshape(5, 2),
                    det_score=float(face.det_score),
                    embedding=np.asarray(face.embedding, dtype=np.float32).reshape(-1),
                    area=float((bbox[2] - bbox[0]) * (bbox[3] - bbox[1])),
                )
            )
        found.sort(key=lambda f: f.area, reverse=True)
        return found

    def find_face(self, image_rgb: np.ndarray, *, source: str = "the photo", index: int = 0) -> FaceChoice:
        """`detect` + `pick_face` with this detector's minimum face size."""
        return pick_face(self.detect(image_rgb), index=index, source=source, min_face_px=self.config.min_face_px)

    def release(self) -> None:
        """Drop every onnxruntime session (GPU memory included); the next `detect` reloads."""
        app, self._app = self._app, None
        if app is not None:
            app.models.clear()
            app.det_model = None
            del app
            gc.collect()  # insightface objects may sit in reference cycles: free the sessions now
            log.info("Face models released.")
        self._remove_staging()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _pack_folder(self) -> Path:
        """The folder FaceAnalysis loads: theirs if it holds just the two files, else a linked copy."""
        folder = self.detector_path.parent
        others = {p.name for p in folder.glob("*.onnx")} - {self.detector_path.name}
        if self.recognizer_path.parent == folder and others == {self.recognizer_path.name} and self.detector_path.name == DETECTOR and self.recognizer_path.name == RECOGNIZER:
            return folder
        staging = Path(tempfile.mkdtemp(prefix="likeness-antelopev2-"))
        try:
            for path, name in ((self.detector_path, DETECTOR), (self.recognizer_path, RECOGNIZER)):
                (staging / name).symlink_to(path.resolve())
        except OSError as error:  # e.g. Windows without symlink rights: load their folder as is
            shutil.rmtree(staging, ignore_errors=True)
            if self.recognizer_path.parent != folder:
                raise ModelLoadError(f"Put {DETECTOR} and {RECOGNIZER} in the same folder ({folder}); linking them failed: {error}.") from error
            log.info("Could not link the face models (%s); loading %s as is.", error, folder)
            return folder
        self._staging = staging
        self._staging_cleanup = weakref.finalize(self, shutil.rmtree, str(staging), True)
        return staging

    def _check_routing(self, app) -> None:
        """insightface routes by shape and keeps the first file per task: make sure it kept ours."""
        expected = {"detection": DETECTOR, "recognition": RECOGNIZER}
        for task, name in expected.items():
            model = app.models.get(task)
            got = Path(model.model_file).name if model is not None else "no file"
            if got != name:
                self._remove_staging()
                raise ModelLoadError(
                    f"insightface took {got} as the face {task} model instead of {name} in {self.detector_path.parent}; "
                    f"check that {name} is the antelopev2 file, and move other .onnx files out of that folder."
                )

    def _note_fallback(self, requested: str) -> None:
        if requested != "CUDAExecutionProvider":
            return
        for task, names in self.providers.items():
            if names and names[0] != "CUDAExecutionProvider":
                note = (
                    f"The CUDA provider did not load for face {task}; it runs on {names[0]}. "
                    "Check that onnxruntime-gpu matches the installed CUDA and cuDNN."
                )
                log.warning(note)
                self.notes.append(note)

    def _remove_staging(self) -> None:
        if self._staging_cleanup is not None:
            self._staging_cleanup()  # runs shutil.rmtree once
        self._staging = self._staging_cleanup = None
