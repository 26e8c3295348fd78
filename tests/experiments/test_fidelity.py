"""PSNR and SSIM on images whose answer is known; ArcFace similarity with the tiny antelopev2 pack."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from pipelines.experiments.fidelity import ArcFaceScorer, compare, gaussian_window, ssim
from pipelines.metrics import psnr


def structured(seed: int = 0, size: int = 64) -> np.ndarray:
    """A smooth gradient with random texture: something SSIM has structure to compare in."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, size)[None, :, None] + np.linspace(0, 30, size)[:, None, None]
    return np.clip(ramp + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def test_identical_images():
    image = Image.fromarray(structured())
    assert math.isinf(psnr(image, image))
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    result = compare(image, image.copy())
    assert math.isinf(result.psnr_db) and result.ssim == pytest.approx(1.0)


def test_known_offset_gives_the_closed_form():
    # A flat image against the same plus 5: MSE = 25, so PSNR = 10 log10(255^2 / 25); with no
    # variance anywhere SSIM is its luminance term alone: (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    a = np.full((32, 32, 3), 100, np.uint8)
    b = np.full((32, 32, 3), 105, np.uint8)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 105 + c1) / (100**2 + 105**2 + c1), rel=1e-9)


def test_known_noise_lowers_both_measures_in_order():
    clean = structured(1).astype(np.float64)
    rng = np.random.default_rng(7)
    scores = []
    for sigma in (2, 8, 32):
        noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).round().astype(np.uint8)
        scores.append((psnr(clean, noisy), ssim(clean, noisy)))
        # Gaussian noise of sigma s (before clipping and rounding) has an expected MSE of s^2.
        assert scores[-1][0] == pytest.approx(10 * math.log10(255**2 / sigma**2), abs=0.6)
    assert scores[0][0] > scores[1][0] > scores[2][0]
    assert 1 > scores[0][1] > scores[1][1] > scores[2][1] > 0


def test_ssim_is_symmetric_and_sees_inverted_structure():
    a, b = structured(2), structured(3)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    assert ssim(a, 255 - a) < 0  # the structure term turns negative when the contrast flips


def test_window_is_the_papers_gaussian():
    window = gaussian_window()
    assert window.numel() == 11 and float(window.sum()) == pytest.approx(1.0)
    assert float(window[5] / window[4]) == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def test_different_sizes_are_a_note_not_an_error():
    result = compare(Image.new("RGB", (64, 64)), Image.new("RGB", (96, 64)))
    assert result.psnr_db is None and result.ssim is None and "differs from the baseline" in result.note
    with pytest.raises(ValueError, match="differ in size"):
        ssim(np.zeros((16, 16)), np.zeros((16, 20)))


def test_arcface_skipped_with_a_note_when_the_face_models_are_missing(tmp_path):
    scorer = ArcFaceScorer(tmp_path / "models", [str(tmp_path / "photo.png")])
    assert scorer.skip_note.startswith("ArcFace similarity skipped:") and "missing" in scorer.skip_note
    assert scorer.score(Image.new("RGB", (64, 64))) is None


def test_arcface_cosine_with_the_tiny_pack(tmp_path):
    from pipelines.bench.tiny_onnx import planted_from_photo, write_antelopev2

    photo = structured(4, size=256)
    write_antelopev2(tmp_path / "models/insightface/antelopev2", planted_from_photo(photo.shape, [[64, 64, 192, 192]]))
    path = tmp_path / "face.png"
    Image.fromarray(photo).save(path)
    scorer = ArcFaceScorer(tmp_path / "models", [str(path)])
    try:
        assert scorer.skip_note == ""
        same = scorer.score(Image.fromarray(photo))
        other = scorer.score(Image.fromarray(structured(5, size=256)))
    finally:
        scorer.release()
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other is not None and other < same
