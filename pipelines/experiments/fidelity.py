"""How close each cell's image is to the baseline cell's: PSNR, SSIM, and ArcFace identity.

SSIM follows Wang, Bovik, Sheikh & Simoncelli (2004), "Image quality assessment: from error
visibility to structural similarity": an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, dynamic range L = 255, computed on the luminance channel over the window positions that
fit inside the image ("valid"), and averaged (the mean SSIM). The paper's optional downsampling of
large images is left out: experiment images are compared at the size they were made.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipelines.metrics import as_array, psnr

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
PEAK = 255.0
# ITU-R BT.601 luma, as MATLAB's rgb2gray (Wang et al.'s reference code runs on grayscale images).
LUMA = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def luminance(image) -> np.ndarray:
    array = as_array(image)
    if array.ndim == 2:
        return array
    return array[..., :3] @ np.asarray(LUMA)


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian; the 2-D window is its outer product (applied as two passes)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(offsets ** 2) / (2 * sigma ** 2))
    return weights / weights.sum()


def _filter(image: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted local means over every window that fits inside the image."""
    size = window.numel()
    rows = torch.nn.functional.conv2d(image, window.view(1, 1, size, 1))
    return torch.nn.functional.conv2d(rows, window.view(1, 1, 1, size))


def ssim(reference, candidate) -> float:
    """Mean SSIM of two images of the same size: 1.0 for identical images, lower as structure differs."""
    a, b = luminance(reference), luminance(candidate)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    if min(a.shape) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE} pixels, got {a.shape[1]}x{a.shape[0]}")
    x = torch.from_numpy(a).view(1, 1, *a.shape)
    y = torch.from_numpy(b).view(1, 1, *b.shape)
    window = gaussian_window()
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x ** 2
    var_y = _filter(y * y, window) - mu_y ** 2
    cov = _filter(x * y, window) - mu_x * mu_y
    c1, c2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


@dataclass(frozen=True)
class Fidelity:
    psnr_db: float | None  # inf when identical; None when it could not be measured
    ssim: float | None
    arcface: float | None = None  # cosine similarity to the reference face
    note: str = ""


def compare(baseline: Image.Image, image: Image.Image) -> Fidelity:
    if baseline.size != image.size:
        return Fidelity(None, None, note=f"size {image.size[0]}x{image.size[1]} differs from the baseline's {baseline.size[0]}x{baseline.size[1]}")
    return Fidelity(psnr(baseline, image), ssim(baseline, image))


class ArcFaceScorer:
    """Cosine similarity between the reference photos' face and the face in each image (insightface ArcFace).

    Built only when a face is used; `skip_note` says why no score is given when the face models are
    missing or no face is found. The detector is released when done (its sessions hold memory).
    """

    def __init__(self, models_dir, photos, config=None):
        from pipelines.face.detect import FaceDetector, FaceDetectorConfig, load_reference_image

        self.skip_note = ""
        self.reference: np.ndarray | None = None
        try:
            self.detector = FaceDetector.from_models_dir(models_dir, config or FaceDetectorConfig())
        except Exception as error:  # ModelNotFound names the missing files
            self.detector = None
            self.skip_note = f"ArcFace similarity skipped: {str(error).splitlines()[0]}"
            return
        embeddings = []
        try:
            for photo in photos:
                faces = self.detector.detect(load_reference_image(photo))
                if faces:
                    embeddings.append(faces[0].normed_embedding)  # detect() lists the largest first
        except Exception as error:  # a corrupt photo or face model: the grid still gets PSNR and SSIM
            self.skip_note = f"ArcFace similarity skipped: {str(error).splitlines()[0]}"
            return
        if not embeddings:
            self.skip_note = "ArcFace similarity skipped: no face was found in the reference photo(s)."
            return
        mean = np.mean(embeddings, axis=0)
        self.reference = mean / max(float(np.linalg.norm(mean)), 1e-12)

    def score(self, image: Image.Image) -> float | None:
        """None when no face is found in `image`."""
        if self.reference is None:
            return None
        faces = self.detector.detect(np.asarray(image.convert("RGB")))
        if not faces:
            return None
        return float(np.dot(faces[0].normed_embedding, self.reference))

    def release(self) -> None:
        if self.detector is not None:
            self.detector.release()
