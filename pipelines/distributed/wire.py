"""What a job's result looks like on its way from a worker to the UI process.

Ray pickles everything it returns; a `GenerationResult` holds PIL images (which pickle, but as raw
pixels: 4x the bytes of a PNG for a photo) and the kept latents (a tensor meant for Re-decode on the
same manager). The worker packs images as lossless PNG bytes and leaves the latents behind; the pool
unpacks them into an ordinary `GenerationResult`, so its callers cannot tell where the job ran.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

from pipelines.request import GeneratedImage, GenerationRequest, GenerationResult


@dataclass(frozen=True)
class WireImage:
    png: bytes
    seed: int
    infotext: str
    before_detail_png: bytes | None = None


@dataclass(frozen=True)
class WireResult:
    """A `GenerationResult` without live objects, plus who ran it."""

    images: tuple[WireImage, ...]
    request: GenerationRequest
    summary: dict  # GenerationResult.summary() on the worker (timings, dtypes, caches, warnings)
    worker: str
    device: str  # the worker's device as the manager names it ("cpu", "cuda:0")
    status: dict = field(default_factory=dict)  # the worker's status() right after the job (for routing)


@dataclass(frozen=True)
class WorkerFailure:
    """A user-facing error the worker's manager raised (bad input, a model it cannot load, Stop).

    Returned rather than raised, so the pool re-raises the same LikenessError class with the same
    sentence instead of a Ray traceback, and a stop keeps the images finished before it."""

    error_class: str  # the name of a class in pipelines.errors
    message: str
    partial: tuple[WireImage, ...] = ()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless; level 1: the bytes travel once, speed matters more
    return buffer.getvalue()


def from_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pack_images(images) -> tuple[WireImage, ...]:
    return tuple(WireImage(png_bytes(item.image), item.seed, item.infotext,
                           png_bytes(item.before_detail) if item.before_detail is not None else None) for item in images)


def unpack_images(images: tuple[WireImage, ...]) -> list[GeneratedImage]:
    return [GeneratedImage(from_png(item.png), item.seed, item.infotext,
                           before_detail=from_png(item.before_detail_png) if item.before_detail_png else None) for item in images]


def pack_result(result: GenerationResult, worker: str, status: dict) -> WireResult:
    return WireResult(pack_images(result.images), result.request, result.summary(), worker, result.device, status)


def unpack_result(wire: WireResult) -> GenerationResult:
    """An ordinary GenerationResult (no kept latents: they stayed on the worker)."""
    summary = wire.summary
    return GenerationResult(
        images=unpack_images(wire.images),
        request=wire.request,
        stage_seconds=dict(summary["stage_seconds"]),
        stage_details=dict(summary.get("stage_details", {})),
        step_seconds=list(summary["step_seconds"]),
        total_seconds=summary["total_seconds"],
        peak_memory_bytes=summary["peak_memory_bytes"],
        memory_kind=summary["memory_kind"],
        device=wire.device,
        denoiser_dtype=summary["denoiser_dtype"],
        vae_dtype=summary["vae_dtype"],
        warnings=list(summary["warnings"]),
        cache_notes=dict(summary["caches"]),
        hook_stats=dict(summary["hooks"]),
        kept_latents=None,
    )
