"""Upscaling a finished picture on its own: A1111's Extras tab (its upscale), `/sdapi/v1/extra-single-image`.

`UpscaleRequest` is the one definition the Extras tab, `app.py upscale` and the A1111 routes map to;
`upscale_picture` runs it. A1111's rules (scripts/postprocessing_upscale.py), so a picture comes out
the size and the pixels an A1111 user expects:

- **Scale by** a factor, or **Scale to** W x H: the picture is upscaled by the larger of the two
  ratios (it covers W x H), then cut to W x H around its centre (*Crop to fit*), or kept at that size.
- **Upscaler 2** at a visibility v > 0 upscales the original too, at the same factor, and the two
  are blended: (1 - v) x first + v x second.
- Upscaler 1 "None" leaves the picture as it is (said in a note); "Latent" is refused: it upscales
  latents inside a generation (hires fix), there are none here.
- The upscalers are hires fix's (Lanczos, Nearest, the ESRGAN files in models/ESRGAN): tiled, a
  half-precision net that overflows is run again in float32 (`pipelines.upscale`).
- Saved as `<outputs>/extras-images/<date>/<number>.png`, A1111's folder name. The picture's own
  `parameters` (its prompt, seed, ...) are kept, and the upscale is recorded in a `postprocessing`
  text chunk, as A1111 writes it: `Postprocess upscale by: 2, Postprocess upscaler: 4x-tiny`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from pipelines.errors import GenerationCancelled, InvalidRequest, OutputError
from pipelines.generate import CancelToken
from pipelines.infotext import quote
from pipelines.outputs import read_parameters, save_image
from pipelines.upscale import LATENT, UpscalerChoice, find_upscaler, upscale_image
from pipelines.upscale.upscalers import MAX_SCALE

UPSCALER_NONE = "None"  # A1111's "no upscaler": the picture is left as it is (Upscaler 2: not used)
EXTRAS_FOLDER = "extras-images"  # A1111's outputs/extras-images
MAX_OUTPUT_SIDE = 16384  # PNG and PIL handle more, but a 16k x 16k RGB picture is already 768 MiB in RAM
RESIZE_MODES = ("Scale by", "Scale to")  # A1111's `resize_mode` 0 and 1

TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all), over both upscalers


@dataclass(frozen=True)
class UpscaleRequest:
    image: Image.Image = field(repr=False)
    upscaler: str = "Lanczos"  # Upscaler 1
    scale: float = 2.0  # Scale by (used when width and height are 0)
    width: int = 0  # Scale to: both above 0
    height: int = 0
    crop: bool = True  # Scale to: cut the covering picture to exactly width x height
    upscaler_2: str = UPSCALER_NONE
    upscaler_2_visibility: float = 0.0
    save: bool = True

    @property
    def resize_mode(self) -> str:
        return RESIZE_MODES[1] if self.width or self.height else RESIZE_MODES[0]

    # What the queue readouts show for this job (a generation shows its model and prompt).
    @property
    def model(self) -> str:
        return f"upscaler {self.upscaler}"

    @property
    def prompt(self) -> str:
        return f"upscale to {self.width}x{self.height}" if self.resize_mode == "Scale to" else f"upscale by {self.scale}"


@dataclass
class UpscaleResult:
    image: Image.Image
    postprocessing: str  # A1111's `postprocessing` text: what was done
    parameters: str | None  # the picture's own generation parameters, kept in the saved PNG
    path: str | None
    seconds: float
    device: str
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the UI and the CLI: '1024x1024 from 512x512 in 1.20 s on cpu'."""
        return f"{self.image.width}x{self.image.height} in {self.seconds:.2f} s on {self.device}"


@dataclass(frozen=True)
class UpscalePlan:
    """What `upscale_picture` will do, checked before any pixel moves."""

    factor: float  # both upscalers run at this factor
    first: UpscalerChoice | None  # None: Upscaler 1 is "None"
    second: UpscalerChoice | None  # None: no blend
    final_size: tuple[int, int]
    crop_box: tuple[int, int, int, int] | None  # Scale to + Crop to fit: the centre cut of the upscaled picture

    def postprocessing(self, request: UpscaleRequest) -> str:
        """A1111's keys, in A1111's order."""
        parts = []
        if request.resize_mode == "Scale to":
            parts.append(f"Postprocess upscale to: {request.width}x{request.height}")
        else:
            parts.append(f"Postprocess upscale by: {request.scale:g}")
        if self.crop_box is not None:
            parts.append("Postprocess crop to fit: True")
        parts.append(f"Postprocess upscaler: {quote(self.first.name)}")
        if self.second is not None:
            parts.append(f"Postprocess upscaler 2: {quote(self.second.name)}")
            parts.append(f"Postprocess upscaler 2 visibility: {request.upscaler_2_visibility:g}")
        return ", ".join(parts)


def _number(value, what: str, low: float, high: float, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not low <= value <= high:
        kind = "a whole number" if integer else "a number"
        raise InvalidRequest(f"{what} must be {kind} from {low:g} to {high:g}, got {value!r}.")


def _choose(name, models_dir: Path, allow_pickle: bool, what: str) -> UpscalerChoice | None:
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"{what} must be an upscaler's name, got {name!r}.")
    if name.strip().lower() == UPSCALER_NONE.lower():
        return None
    if name.strip().lower() == LATENT.lower():
        raise InvalidRequest(f"{what}: Latent upscales the latents inside a generation (hires fix); a finished picture "
                             "needs an image upscaler: Lanczos, Nearest or an ESRGAN file.")
    return find_upscaler(name, models_dir, allow_pickle, what=what)


def plan_upscale(request: UpscaleRequest, models_dir: Path, allow_pickle: bool = False) -> UpscalePlan:
    """Check every field (InvalidRequest naming the field) and work out the sizes."""
    if not isinstance(request.image, Image.Image):
        raise InvalidRequest("Choose a picture to upscale.")
    first = _choose(request.upscaler, models_dir, allow_pickle, "Upscaler 1")
    _number(request.upscaler_2_visibility, "Upscaler 2 visibility", 0.0, 1.0)
    second = _choose(request.upscaler_2, models_dir, allow_pickle, "Upscaler 2")
    if second is not None and request.upscaler_2_visibility == 0:
        second = None  # A1111: a second upscaler at visibility 0 is not run
    if not isinstance(request.crop, bool):
        raise InvalidRequest(f"Crop to fit must be true or false, got {request.crop!r}.")
    width, height = request.image.size
    if request.resize_mode == "Scale to":
        _number(request.width, "Width (Scale to)", 1, MAX_OUTPUT_SIDE, integer=True)
        _number(request.height, "Height (Scale to)", 1, MAX_OUTPUT_SIDE, integer=True)
        factor = max(request.width / width, request.height / height)
    else:
        _number(request.scale, "Scale by", 0.01, MAX_SCALE)
        factor = float(request.scale)
    if first is None:
        return UpscalePlan(1.0, None, None, (width, height), None)
    if factor > MAX_SCALE:
        raise InvalidRequest(f"{width}x{height} to {request.width}x{request.height} is {factor:.1f} times larger; Extras "
                             f"upscales at most {MAX_SCALE:g} times.")
    upscaled = (max(1, round(width * factor)), max(1, round(height * factor)))
    if max(upscaled) > MAX_OUTPUT_SIDE:
        raise InvalidRequest(f"The upscaled picture would be {upscaled[0]}x{upscaled[1]}; Extras makes pictures of at most "
                             f"{MAX_OUTPUT_SIDE} px a side. Choose a smaller factor or size.")
    crop_box = None
    if request.resize_mode == "Scale to" and request.crop:
        # A1111 pastes the upscaled picture centred on a W x H canvas; this is the same cut.
        left, top = upscaled[0] // 2 - request.width // 2, upscaled[1] // 2 - request.height // 2
        crop_box = (left, top, left + request.width, top + request.height)
    final = (request.width, request.height) if crop_box else upscaled
    return UpscalePlan(factor, first, second, final, crop_box)


@dataclass(frozen=True)
class UpscaleContext:
    """Where the upscaler runs and where the picture goes (the manager's)."""

    models_dir: Path
    outputs_dir: Path
    device: torch.device
    dtype: torch.dtype  # ESRGAN nets: float16 on a GPU (redone in float32 on overflow), float32 on a CPU
    allow_pickle: bool = False


def upscale_picture(request: UpscaleRequest, context: UpscaleContext, progress: TileProgress | None = None,
                    cancel: CancelToken | None = None, plan: UpscalePlan | None = None) -> UpscaleResult:
    """Run `request` (checked by `plan_upscale`, unless the caller passes the plan it made); GenerationCancelled when
    `cancel` is set between tiles."""
    plan = plan or plan_upscale(request, context.models_dir, context.allow_pickle)
    start = time.perf_counter()
    notes: list[str] = []
    source = upscalable(request.image)
    if plan.first is None:
        notes.append("Upscaler 1 is None: the picture is unchanged.")
        picture = source.copy()
    else:
        picture = _run_upscalers(source, plan, request.upscaler_2_visibility, context, progress, cancel)
    postprocessing = plan.postprocessing(request) if plan.first is not None else ""
    parameters = read_parameters(request.image)
    result = UpscaleResult(picture, postprocessing, parameters, None, time.perf_counter() - start, context.device.type, notes)
    if request.save:
        try:
            path = save_image(picture, parameters, Path(context.outputs_dir) / EXTRAS_FOLDER, None,
                              more_text={"postprocessing": postprocessing} if postprocessing else None)
            result.path = str(path)
        except OutputError as error:
            notes.append(str(error))
    return result


def upscalable(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the picture has transparency: a palette or greyscale picture would be resized without
    Lanczos (PIL uses Nearest for palettes) and could not be blended with an ESRGAN net's RGB output."""
    if image.mode in ("RGB", "RGBA"):
        return image
    transparent = image.mode in ("LA", "PA", "La") or "transparency" in image.info
    return image.convert("RGBA" if transparent else "RGB")


def _run_upscalers(source: Image.Image, plan: UpscalePlan, visibility: float, context: UpscaleContext,
                   progress: TileProgress | None, cancel: CancelToken | None) -> Image.Image:
    passes = [plan.first] + ([plan.second] if plan.second is not None else [])
    outputs: list[Image.Image] = []

    def on_tile(done: int, total: int) -> None:  # both nets cut the same picture into the same tiles
        if cancel is not None and cancel.cancelled:
            raise GenerationCancelled("Stopped: the upscale was interrupted; nothing was saved.")
        if progress is not None:
            progress(len(outputs) * total + done, len(passes) * total)

    for choice in passes:
        if cancel is not None and cancel.cancelled:
            raise GenerationCancelled("Stopped before the upscale was done; nothing was saved.")
        outputs.append(upscale_image(source, plan.factor, choice.name, context.models_dir, context.device, context.dtype,
                                     allow_pickle=context.allow_pickle, progress=on_tile))
    first = outputs[0]
    if len(outputs) == 2:
        second = outputs[1] if outputs[1].mode == first.mode else outputs[1].convert(first.mode)
        first = Image.blend(first, second, visibility)
    return first.crop(plan.crop_box) if plan.crop_box else first
