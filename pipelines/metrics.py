"""Image fidelity measures used by re-decode comparisons, benchmarks and experiments."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image


def as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    return np.asarray(image, dtype=np.float64)


def psnr(reference, candidate, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical images."""
    a, b = as_array(reference), as_array(candidate)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)
