"""`bench --suite refine` end to end on one tiny family (the suite runs all three)."""
from __future__ import annotations

import io
import json

from pipelines.bench import refine as bench_refine
from pipelines.bench import run_suite
from pipelines.bench.tiny_models import build_tiny_sd15


def test_refine_suite_reports_img2img_against_txt2img(make_manager, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_refine, "BUILDERS", {"sd15": build_tiny_sd15})  # one family: no hires/detailer rows
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert run_suite("refine", make_manager(), tmp_path / "refine.json", quick=True) == 0
    text = out.getvalue()
    for expected in ("denoise txt2img", "img2img 0.5", "<= 0.55x", "img encode", "inpaint 0.75"):
        assert expected in text
    figures = json.loads((tmp_path / "refine.json").read_text())["sd15"]
    assert figures["txt2img"]["steps"] == 4 and figures["img2img 0.5"]["steps"] == 2 and figures["inpaint 0.75"]["steps"] == 3
    assert figures["img2img 0.5"]["img encode"] > 0 and figures["txt2img"]["img encode"] == 0


def test_refine_suite_hires_and_detailer_rows(make_manager, tmp_path, monkeypatch):
    from pipelines.bench.tiny_models import build_tiny_sdxl

    monkeypatch.setattr(bench_refine, "BUILDERS", {"sdxl": build_tiny_sdxl})
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert run_suite("refine", make_manager(), tmp_path / "refine.json", quick=True) == 0
    text = out.getvalue()
    for expected in ("hires fix 2x", "Lanczos, tiled VAE", "first pass", "hires pass", "seconds per face", "ArcFace cos to reference"):
        assert expected in text
    figures = json.loads((tmp_path / "refine.json").read_text())
    assert set(figures["hires"]) == {"Latent", "Latent, tiled VAE", "Lanczos", "Lanczos, tiled VAE"}
    assert all(row["hires pass"] > 0 and row["size"] == [512, 512] for row in figures["hires"].values())
    detail = figures["detailer"]
    assert detail["with detailer"]["seconds_per_face"] > 0 and detail["without detailer"]["seconds_per_face"] is None
    assert detail["with detailer"]["similarity"] is not None and detail["without detailer"]["similarity"] is not None
