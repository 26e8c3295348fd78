"""The preview the denoise callback publishes every N steps: the cheap map, or a tiny autoencoder's decode.

`TinyDecoders` belongs to the manager, one per session: it keeps the loaded decoders (1.2 M
parameters, ~2.5 MB in fp16) per file (path, mtime, size) and placement, and remembers the files
that failed, so a bad file is read once and named once, not every N steps; a replaced file is read
again. `LivePreview` is one run's choice; `render_preview` is what the callback calls.

The decode must not change the run's result: it reads the first image's latents (a slice, never
written to), draws no random numbers, attaches nothing to the pipeline's modules, and runs without
autograd on the denoiser's device in the denoiser's dtype. Whatever goes wrong (no file, a file that
does not match, a failed decode) leaves the cheap preview in its place.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from pipelines.errors import ModelLoadError
from pipelines.families import Family
from pipelines.generate import LoadedModel, latent_preview, spatial_latents
from pipelines.preview.tiny_vae import approx_folder, build_tiny_decoder, find_tiny_decoder
from pipelines.telemetry import Notice

log = logging.getLogger("likeness")

MEMO_SIZE = 3  # one per family is all a session switches between


class TinyDecoders:
    """Loaded tiny decoders and failed files, per file identity and placement; thread-safe, LRU."""

    def __init__(self) -> None:
        self._memo: OrderedDict[tuple, object] = OrderedDict()  # key -> AutoencoderTiny, or the problem (str)
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def decoder(self, family: Family, models_dir: Path, allow_pickle: bool, device: torch.device, dtype: torch.dtype):
        """(the AutoencoderTiny on `device` in `dtype`, None) when usable, (None, problem) when a file is there
        but unusable, (None, None) when there is no file."""
        found = find_tiny_decoder(models_dir, family)
        if found is None:
            return None, None
        try:
            key = (found.identity(), allow_pickle, str(device), dtype)
        except OSError as error:  # removed between the look and the stat
            return None, f"{found.path.name} cannot be read: {error.strerror or error}."
        with self._lock:
            kept = self._memo.get(key)
            if kept is None:
                try:
                    kept = build_tiny_decoder(found, allow_pickle)
                    kept.decoder.to(device=device, dtype=dtype)  # the decoder alone: ModelMixin.to warns about fp32 modules it has none of
                    log.info("live preview: loaded %s from %s (%s, %s)", found.label, found.path, device, str(dtype).removeprefix("torch."))
                except ModelLoadError as error:
                    kept = str(error)
                except Exception as error:  # noqa: BLE001 - e.g. out of memory moving it: a preview must never cost the generation
                    kept = f"{found.path.name} could not be loaded ({error.__class__.__name__}: {str(error)[:200]})."
                self._memo[key] = kept
            self._memo.move_to_end(key)
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return (None, kept) if isinstance(kept, str) else (kept, None)

    def first_report(self, problem: str) -> bool:
        """True the first time this session meets `problem`: it is shown once, then only logged at DEBUG."""
        with self._lock:
            if problem in self._reported:
                return False
            self._reported.add(problem)
            return True

    def clear(self) -> None:
        with self._lock:
            self._memo.clear()
            self._reported.clear()


@dataclass(frozen=True)
class LivePreview:
    """One run's preview choice (Settings: live_preview) and where the tiny decoders come from."""

    choice: str  # "cheap" | "TAESD"
    models_dir: Path
    allow_pickle: bool
    decoders: TinyDecoders


def tiny_preview(decoder, model: LoadedModel, latents: torch.Tensor, height: int, width: int) -> Image.Image:
    """The first image of the batch decoded by `decoder` (an AutoencoderTiny): full size, 8x the latent."""
    with torch.no_grad():
        spatial = spatial_latents(model, latents[:1], height, width)
        sample = decoder.decode(spatial.to(device=decoder.device, dtype=decoder.dtype)).sample  # [-1, 1]
        pixels = ((sample[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy()))


def render_preview(preview: LivePreview | None, model: LoadedModel, latents: torch.Tensor, height: int, width: int,
                   publish: Callable | None = None) -> Image.Image:
    """The preview image for the denoise callback; `publish` receives a Notice the first time a file fails."""
    if preview is not None and preview.choice == "TAESD":
        decoder, problem = preview.decoders.decoder(model.family, preview.models_dir, preview.allow_pickle, model.device, model.dtype)
        if decoder is not None:
            try:
                return tiny_preview(decoder, model, latents, height, width)
            except Exception as error:  # noqa: BLE001 - a preview must never cost the generation
                problem = f"the {model.family.spec.tiny_autoencoder.upper()} preview decode failed ({error.__class__.__name__}: {str(error)[:200]})."
        if problem is not None:
            _report(preview.decoders, problem, publish)
        elif decoder is None and preview.decoders.first_report(f"no {model.family.spec.tiny_autoencoder} file"):  # not an error: logged once
            log.info("live preview: TAESD is chosen, but %s holds no %s_decoder file or %s/ folder: the cheap preview is shown",
                     approx_folder(preview.models_dir), model.family.spec.tiny_autoencoder, model.family.spec.tiny_autoencoder)
    return latent_preview(model, latents, height, width)


def _report(decoders: TinyDecoders, problem: str, publish: Callable | None) -> None:
    if not decoders.first_report(problem):
        log.debug("live preview: %s", problem)
        return
    text = f"Live preview: {problem} Showing the cheap preview instead."
    log.warning(text)
    if publish is not None:
        publish(Notice(text, level="warning"))
