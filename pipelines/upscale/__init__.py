"""Image-space upscalers for hires fix: Lanczos, Nearest, and ESRGAN / Real-ESRGAN models from models/ESRGAN/.

`list_upscalers` lists the choices (A1111's names), `upscale_image` runs one; "Latent" is listed
but handled by the generation itself. See `upscalers` for the policy and `rrdbnet` for the net.
"""
from pipelines.upscale.esrgan import forget_loaded, inspect_esrgan, load_esrgan
from pipelines.upscale.rrdbnet import RRDBConfig, RRDBNet
from pipelines.upscale.upscalers import LATENT, UPSCALER_BUILTINS, UpscalerChoice, find_upscaler, list_upscalers, upscale_image

__all__ = [
    "LATENT", "UPSCALER_BUILTINS", "RRDBConfig", "RRDBNet", "UpscalerChoice",
    "find_upscaler", "forget_loaded", "inspect_esrgan", "list_upscalers", "load_esrgan", "upscale_image",
]
