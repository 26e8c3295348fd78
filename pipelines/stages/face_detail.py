"""The face detailer: each face of a finished picture re-drawn at the model's native size and pasted back.

ADetailer (A1111 / Forge), ComfyUI's FaceDetailer and SD.Next's detailer do this; Likeness's keeps the
*person*. Per batch, after the VAE decode (and the inpainting paste back), before the images are
recorded:

    faces = detector.detect(image)                                   # insightface, largest first
    for face in picked(faces, "1,3"):                                # all when no numbers are given
        region = face_crop_region(face.bbox, W, H, padding, (S, S))  # a padded box, square like the pass
        latents = encode_pixels(crop_to_target(image, region, S, S))
        latents = img2img_denoise(latents, strength, steps, face prompt)
        image = paste_feathered(image, decode(latents), region, feather)

No pixel outside the padded boxes changes. S is the family's native size (SD 1.5 512, SDXL and
FLUX.1 1024), never more than the request's longer side (a 256 px preview is not detailed at 1024).

Identity: the pass runs inside the run's `attached(...)` block, so every hook on the denoiser applies
to it as it did to the main denoise: with a reference face, the PuLID hook made from the ID embedding
that the face embed stage memoized (the face stage does not run again), so the re-drawn face is the
reference person, not a generic face; LoRA, DeepCache and the block caches too.

Detection is the same insightface detector (antelopev2's SCRFD) the face stage runs, loaded for the
batch and released before the passes, so no onnxruntime session holds device memory while the
denoiser runs. Without its files the detailer is skipped with a note; a picture without a face
keeps its pixels, with a note. Neither is an error: the picture the user waited for is delivered.

Steps: each pass runs `int(steps * strength)` steps, as img2img does. The plan cannot count the
faces ahead, so the readout's total grows once they are found (`StepClock.added_steps`).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

from pipelines.errors import ModelLoadError, ModelNotFound
from pipelines.face.detect import DetectedFace, FaceDetector
from pipelines.generate import decode_latents
from pipelines.lora.tags import lora_refs
from pipelines.prompts.schedule import has_editing
from pipelines.refine import crop_to_target, face_crop_region, paste_back, paste_feathered
from pipelines.request import face_numbers
from pipelines.stages.denoise import img2img_denoise, stopped
from pipelines.stages.init_image import encode_pixels
from pipelines.stages.prepare import EncodedPrompt, encode_schedule

STAGE = "face detail"


@dataclass(frozen=True)
class FaceDetailConfig:
    """How a face is cut out, re-drawn and pasted back.

    padding_ratio: the face box's longer side grows by this share of itself on each side. More gives
        the model more context (hair, chin, neck: a face in proportion) and the feather more room, but
        fewer of the pass's pixels go to the face itself. ADetailer pads 32 px around a 512 crop;
        0.3 leaves the face about 60% of the crop's side.
    feather_ratio: the pasted edge fades over this share of the region's shorter side. 0 is a hard
        edge: a seam wherever the new skin tone differs from the old one.
    native_size: the side of the square the face is re-drawn at. None: the family's native size
        (SD 1.5 512, SDXL and FLUX.1 1024), capped at the request's longer side, so a small preview
        is not re-drawn at four times its own size.
    min_face_px: faces whose box is smaller than this on its shorter side are left alone: a few
        pixels re-drawn at 1024 become a face the picture never had, and most false detections are small.
    """

    padding_ratio: float = 0.3
    feather_ratio: float = 0.1
    native_size: int | None = None
    min_face_px: int = 16


@dataclass(frozen=True)
class FaceJob:
    image: int  # index in the batch
    number: int  # 1-based, largest first, as the user picks faces
    face: DetectedFace


class FaceDetail:
    """Detect, pick, re-draw and paste back each face; one per generation (it keeps the detail prompt encoded)."""

    name = STAGE

    def __init__(self, face_service, config: FaceDetailConfig = FaceDetailConfig()) -> None:
        self.service = face_service  # the manager's FaceService: its models folder and detector settings
        self.config = config
        self._prompt: EncodedPrompt | None = None  # the detail prompt at batch 1, encoded once per generation

    def wanted(self, plan) -> bool:
        return bool(plan.request.face_detail)

    def run(self, plan, state, info: dict) -> None:
        request = plan.request
        found = self._detect(plan, state)
        if found is None:
            info["detail"] = "skipped: no face detector"
            return
        jobs = self._inside_mask(plan, state, self._pick(plan, state, found))
        steps = pass_steps(request)
        size = detail_size(plan, self.config)
        state.batch_extra.update(infotext(request))
        if steps == 0:  # strength 0 (or too small for one step): the faces as they are, no VAE round trip
            jobs = []
        state.image_extra = [{"Face detailer faces": sum(job.image == i for job in jobs)} for i in range(len(state.decoded))]
        info["detail"] = f"{len(jobs)} face{'' if len(jobs) == 1 else 's'}, {request.face_detail_strength:g}"
        if not jobs:
            return
        swap = plan.options.pass_loras["face detail"].swapped(plan.model.pipe) if "face detail" in plan.options.pass_loras else nullcontext()
        with swap:  # the detail prompt's own LoRAs, for its text encode and the passes
            prompt = self._pass_prompt(plan, state)
            before = list(state.decoded)
            images = list(state.decoded)
            first_step = plan.batch_step_offset(state.batch_index + 1)  # after this batch's planned steps
            with state.step_clock.added_steps(steps * len(jobs)):
                for done, job in enumerate(jobs):
                    detailed = self._detail(plan, state, images[job.image], state.seeds[job.image], job.face, prompt, size,
                                            first_step + done * steps)
                    if detailed is None:  # Skip: the batch is over; Stop raised
                        return
                    images[job.image] = detailed
        if state.init is not None and state.init.overlay is not None:  # inpainting: pixels outside the mask stay the original's
            images = [paste_back(old, new, None, state.init.overlay) if new is not old else new for old, new in zip(before, images)]
        state.decoded = images
        state.before_detail = [old if any(job.image == i for job in jobs) else None for i, old in enumerate(before)]
        info["detail"] += f", {steps} steps each at {size}x{size}"

    # -- steps ---------------------------------------------------------------------------------

    def _detect(self, plan, state) -> list[list[DetectedFace]] | None:
        """Every face of every picture of the batch, largest first; None (with a note) without the detector."""
        try:
            detector = FaceDetector.from_models_dir(self.service.models_dir, self.service.detector_config)
            try:
                found = [detector.detect(np.asarray(image.convert("RGB"))) for image in state.decoded]
                self.service.last_provider = detector.provider
                for note in detector.notes:
                    state.warn(plan.bus, note)
            finally:
                detector.release()  # before the passes: no onnxruntime arena beside the denoiser
        except (ModelNotFound, ModelLoadError) as error:
            state.warn(plan.bus, f"Face detailer skipped: {error} The pictures are kept as generated.")
            return None
        return found

    def _pick(self, plan, state, found: list[list[DetectedFace]]) -> list[FaceJob]:
        """The faces to re-draw: the numbers asked for (all when none), big enough; a note for each picture without one."""
        wanted = face_numbers(plan.request.face_detail_faces)
        jobs = []
        for index, faces in enumerate(found):
            numbered = list(enumerate(faces, start=1))
            picked = [(n, f) for n, f in numbered if not wanted or n in wanted]
            usable = [(n, f) for n, f in picked if min(f.size) >= self.config.min_face_px]
            where = f"picture {index + 1} (seed {state.seeds[index]})" if len(found) > 1 else "the picture"
            if not faces:
                state.warn(plan.bus, f"Face detailer: no face found in {where}; it is kept as generated.")
            elif wanted and (missing := [n for n in wanted if n > len(faces)]):
                state.warn(plan.bus, f"Face detailer: {where} has {len(faces)} face{'' if len(faces) == 1 else 's'}; "
                                     f"there is no face {', '.join(map(str, missing))}.")
            if len(usable) < len(picked):
                state.warn(plan.bus, f"Face detailer: {len(picked) - len(usable)} face(s) in {where} smaller than "
                                     f"{self.config.min_face_px} px left as they are.")
            jobs += [FaceJob(index, number, face) for number, face in usable]
        return jobs

    def _inside_mask(self, plan, state, jobs: list[FaceJob]) -> list[FaceJob]:
        """Inpainting: only the faces the mask touches (the rest of the picture is the original's, and stays so)."""
        overlay = state.init.overlay if state.init is not None else None
        if overlay is None:
            return jobs
        mask = np.asarray(overlay.convert("L"))
        inside = [job for job in jobs if touches(mask, job.face.bbox)]
        if len(inside) < len(jobs):
            state.warn(plan.bus, f"Face detailer: {len(jobs) - len(inside)} face(s) outside the inpainting mask left as they are.")
        return inside

    def _pass_prompt(self, plan, state):
        """The pass's EncodedPrompt at batch 1: the detail prompt through the prompt memo, or the main prompt's rows;
        with prompt editing, its schedule over the detailer's steps."""
        if self._prompt is None:
            request = plan.request
            if request.face_detail_prompt:
                warnings: list[str] = []
                self._prompt, _note, _used = encode_schedule(plan, request.face_detail_prompt, request.negative_prompt, detail_steps(request), 1,
                                                             warn=warnings)
                for text in warnings:
                    state.warn(plan.bus, f"Face detailer prompt: {text}")
            elif has_editing(request.prompt, request.negative_prompt):
                self._prompt, _note, _used = encode_schedule(plan, request.prompt, request.negative_prompt, detail_steps(request), 1)
            else:  # every row of the batch's embeds is the same prompt: one row serves a one-face pass
                self._prompt = EncodedPrompt({name: first_row(value) for name, value in state.embeds.items()})
        return self._prompt

    def _detail(self, plan, state, image: Image.Image, seed: int, face: DetectedFace, prompt: EncodedPrompt, size: int,
                step_offset: int) -> Image.Image | None:
        """One face: crop, encode, img2img, decode, paste back; None when Skip ended the batch."""
        model, request, options = plan.model, plan.request, plan.options
        region = face_crop_region(tuple(face.bbox), image.width, image.height, self.config.padding_ratio, size)
        latents, outcome = encode_pixels(model, crop_to_target(image, region, size, size), options.vae)
        notes = list(outcome.notes)
        with pass_state(state, seed, size):
            latents = img2img_denoise(plan, state, latents, width=size, height=size, strength=request.face_detail_strength, seed_noise=False,
                                      steps=detail_steps(request), step_offset=step_offset, prompt=prompt)
            if stopped(plan, state):
                return None
            decoded, outcome = decode_latents(model, latents, size, size, options.vae)
        for note in notes + list(outcome.notes):
            state.warn(plan.bus, note)
        feather = self.config.feather_ratio * min(region[2] - region[0], region[3] - region[1])
        return paste_feathered(image, decoded[0], region, feather)



def touches(mask: np.ndarray, bbox) -> bool:
    """Whether any pixel of the face box is in the mask (above 0)."""
    height, width = mask.shape
    x1, y1, x2, y2 = (int(round(v)) for v in bbox)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    return x1 < x2 and y1 < y2 and bool(mask[y1:y2, x1:x2].max() > 0)

def detail_lora_refs(request, main_refs: list) -> list | None:
    """The LoRAs the face passes run with when the detail prompt names another set than the main prompt's (ADetailer
    activates its prompt's extra networks); None when they run the first pass's (no detail prompt, detailer off, the
    same tags)."""
    if not request.face_detail or not request.face_detail_prompt:
        return None
    refs = lora_refs(request.face_detail_prompt)
    return None if refs == main_refs else refs

# -- pure helpers ------------------------------------------------------------------------------------


def detail_steps(request) -> int:
    """The schedule length of a pass: the detailer's own steps, 0 meaning the main steps."""
    return request.face_detail_steps or request.steps


def pass_steps(request) -> int:
    """Steps one pass really runs: `int(steps * strength)`, as img2img."""
    steps = detail_steps(request)
    return min(int(steps * request.face_detail_strength), steps)


def detail_size(plan, config: FaceDetailConfig = FaceDetailConfig()) -> int:
    """The side of the square a face is re-drawn at: native, at most the request's longer side, on the family's multiple."""
    spec = plan.model.family.spec
    request = plan.request
    native = config.native_size or max(spec.default_size)
    side = min(native, max(request.width, request.height))
    return max(side // spec.size_multiple * spec.size_multiple, spec.size_multiple)


def infotext(request) -> dict:
    """The detailer's infotext keys (one per setting, as A1111 writes Hires steps / Hires upscale)."""
    keys = {"Face detailer strength": f"{request.face_detail_strength:g}", "Face detailer steps": detail_steps(request)}
    if request.face_detail_faces.strip():
        keys["Face detailer pick"] = ",".join(map(str, face_numbers(request.face_detail_faces)))
    if request.face_detail_prompt:
        keys["Face detailer prompt"] = request.face_detail_prompt
    return keys


def first_row(value):
    """A batch's tensor cut to its first image (None and non-tensors as they are)."""
    return value[:1] if getattr(value, "ndim", 0) >= 1 else value


@contextmanager
def pass_state(state, seed: int, size: int) -> Iterator[None]:
    """The run state as one face pass sees it: one image (its seed), latents at size x size (the preview
    unpacks FLUX latents with it; a hook may read the context's size). Restored whatever happens."""
    saved = (state.seeds, state.width, state.height, state.context.width, state.context.height, state.context.batch_size)
    state.seeds, state.width, state.height = [seed], size, size
    state.context.width, state.context.height, state.context.batch_size = size, size, 1
    try:
        yield
    finally:
        state.seeds, state.width, state.height, state.context.width, state.context.height, state.context.batch_size = saved
