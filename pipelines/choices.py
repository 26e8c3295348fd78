"""The choice lists a request is checked against, each defined once, in a module that imports nothing heavy.

The modules that act on a choice (the VAE decode, DeepCache, PuLID's attention, img2img's fitting and
masking) import their list from here, and so do the CLI's flags, the UI's controls and the APIs. Keeping
the lists free of torch and diffusers lets `app.py` build its argument parser, and refuse a bad flag,
in well under a second instead of after the ~10 s those libraries take to import.
"""
from __future__ import annotations

VAE_CHOICES = ("auto", "bf16", "fp16", "fp32")  # VAE decode precision; auto = bf16 on capable NVIDIA GPUs, else fp32
DEEPCACHE_SCHEDULES = ("uniform", "quadratic")  # which steps DeepCache runs in full
ORTHO_MODES = ("off", "v1", "v2")  # PuLID SDXL: orthogonal ID attention
# img2img: how a picture of another size is fitted. A1111's names in A1111's order: the index is its API's
# `resize_mode` (0, 1, 2). A1111's fourth mode ("Just resize (latent upscale)") resizes latents, not pixels: left out.
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
# Inpainting: what the masked area starts from (pipelines/refine/masks.py says how each works). A1111's
# order: the index is its API's `inpainting_fill`.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
# Checkpoint merger: A1111's interpolation methods, in its order (pipelines/merge.py says how each works).
MERGE_METHODS = ("Weighted sum", "Add difference", "No interpolation")
# A1111's "Schedule type" (the spacing of the noise levels a sampler steps through), all of its 1.10 release's, in its
# order. Automatic = the sampler's own default (pipelines/samplers.py and pipelines/schedules.py say how each is made).
SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps",
                  "Simple", "Normal", "DDIM", "Beta")
# Hires fix's own sampler and schedule type: A1111's first choices, meaning "as the first pass" (the request's "" too).
HIRES_SAME_SAMPLER = "Use same sampler"
HIRES_SAME_SCHEDULE = "Use same scheduler"
HIRES_SAME_CHECKPOINT = "Use same checkpoint"  # A1111's first Hires checkpoint choice (the request's "" too)
REFINER_NONE = "None"  # A1111's Refiner checkpoint when no refiner is chosen (the request's "" too)
