"""Running experiments on the demo model: medians, warm-up, progress, cancel, and the exported files."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest
from PIL import Image

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.experiments.plan import AxisSpec, Experiment, build_plan
from pipelines.experiments.report import export, grid_image, stage_bars, step_lines, table_rows
from pipelines.experiments.runner import run_experiment
from pipelines.generate import CancelToken
from pipelines.infotext import parse_infotext

BASE = {"model": DEMO_MODEL_NAME, "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 21}


def experiment(*axes, **options) -> Experiment:
    return Experiment(dict(BASE, **options.pop("base", {})), [AxisSpec(s, v) for s, v in axes], **options)


@pytest.fixture(scope="module")
def two_by_two(shared_manager):
    """Steps x CFG on the demo model, two repeats, with a warm-up; the progress it reported."""
    plan = build_plan(experiment(("steps", "2,3"), ("cfg_scale", "1, 7"), repeats=2), shared_manager)
    seen = []
    return run_experiment(shared_manager, plan, seen.append), seen


def test_every_cell_ran_its_repeats_with_the_same_seed(two_by_two):
    result, _ = two_by_two
    assert not result.cancelled and result.finished_cells == 4
    for index, cell in result.cells.items():
        assert len(cell.runs) == 2
        assert {run.seeds[0] for run in cell.runs} == {result.plan.seed}
        assert len(cell.step_seconds()) == cell.cell.request.steps
        assert cell.total_seconds() > 0 and cell.iterations_per_second() > 0
        assert cell.vae_dtype() == "fp32"
    # Different settings, different pictures; the two repeats of a cell are the same picture.
    images = [result.cells[i].image.tobytes() for i in range(4)]
    assert len(set(images)) == 4
    assert all(c.runs[0].images[0].image.tobytes() == c.runs[1].images[0].image.tobytes() for c in result.cells.values())


def test_progress_covers_the_whole_grid(two_by_two):
    _, seen = two_by_two
    assert {p.runs_total for p in seen} == {1 + 4 * 2}
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert seen[0].phase == "warm-up"
    assert any(p.step == 3 and p.steps == 3 for p in seen)


def test_fidelity_against_the_baseline(two_by_two):
    result, _ = two_by_two
    assert math.isinf(result.fidelity[0].psnr_db) and result.fidelity[0].ssim == pytest.approx(1.0)
    for index in (1, 2, 3):
        assert 0 < result.fidelity[index].psnr_db < 100
        assert -1 < result.fidelity[index].ssim < 1
    assert not any("ArcFace" in note for note in result.notes)  # no face, so nothing to skip


def test_table_csv_and_json(two_by_two, tmp_path):
    result, _ = two_by_two
    paths = export(result, tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["label"] for r in rows] == ["Steps: 2, CFG scale: 1", "Steps: 3, CFG scale: 1", "Steps: 2, CFG scale: 7", "Steps: 3, CFG scale: 7"]
    for column in ("Steps", "CFG scale", "status", "runs", "total s", "text encode s", "denoise s", "VAE decode s", "it/s",
                   "peak memory MiB", "VAE dtype", "caches", "PSNR dB", "SSIM", "baseline"):
        assert column in rows[0], column
    assert rows[0]["PSNR dB"] == "inf" and float(rows[0]["SSIM"]) == 1.0 and rows[0]["baseline"] == "yes"
    assert all(r["status"] == "ok" and r["runs"] == "2" and r["VAE dtype"] == "fp32" for r in rows)
    assert float(rows[1]["denoise s"]) > 0 and float(rows[1]["peak memory MiB"]) > 0
    assert "prompt memo" in rows[0]["caches"]

    data = json.loads(paths["json"].read_text())
    assert data["seed"] == result.plan.seed and data["grid"] == {"x": 2, "y": 2, "z": 1} and not data["cancelled"]
    assert data["cells"][0]["PSNR dB"] == "inf"
    assert len(data["cells"][1]["step_seconds"]) == 3 and set(data["cells"][1]["stage_seconds"]) >= {"denoise", "VAE decode"}
    assert data["cells"][3]["request"]["cfg_scale"] == 7.0
    assert Experiment.from_dict(json.loads(paths["experiment"].read_text())) == Experiment.from_dict(data["experiment"])
    assert json.loads(paths["experiment"].read_text())["base"]["seed"] == result.plan.seed
    assert len(list((tmp_path / "out" / "cells").glob("*.png"))) == 4


def test_grid_png_is_labelled_and_carries_the_experiment(two_by_two, tmp_path):
    result, _ = two_by_two
    path = export(result, tmp_path / "grid")["grid"]
    grid = Image.open(path)
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # two tiles each way plus the label margins
    assert parse_infotext(grid.info["parameters"])["Steps"] == "2"  # the baseline's parameters: PNG Info reads them
    assert json.loads(grid.info["likeness_experiment"])["axes"][0] == {"setting": "steps", "values": "2,3"}
    # The label margins are drawn: the top-left corner is background, a tile is not.
    assert grid.getpixel((2, 2)) == (255, 255, 255)
    assert grid.getpixel((grid.width - 10, grid.height - 10)) != (255, 255, 255)


def test_plot_data(two_by_two):
    result, _ = two_by_two
    bars, lines = stage_bars(result), step_lines(result)
    assert {b["stage"] for b in bars} >= {"denoise", "VAE decode"} and "save" not in {b["stage"] for b in bars}
    assert len(lines) == 2 + 3 + 2 + 3
    assert [l["step"] for l in lines if l["cell"] == "Steps: 3, CFG scale: 7"] == [1, 2, 3]


def test_warm_up_takes_the_model_load_out_of_the_timings(make_manager):
    cold = make_manager()
    plan = build_plan(experiment(("steps", "2,3"), warmup=False), cold)
    first = run_experiment(cold, plan).cells[0]
    assert "model load" in first.stage_seconds()
    warm = make_manager()
    plan = build_plan(experiment(("steps", "2,3"), warmup=True), warm)
    assert "model load" not in run_experiment(warm, plan).cells[0].stage_seconds()


def test_repeats_really_denoise_even_with_the_latent_cache_on(make_manager):
    manager = make_manager(latent_cache_entries=16)
    result = run_experiment(manager, build_plan(experiment(("cfg_scale", "1, 7"), repeats=3), manager))
    for cell in result.cells.values():
        assert all("latent cache" not in run.cache_notes for run in cell.runs)
        assert all(run.stage_seconds["denoise"] > 0 and len(run.step_seconds) == 2 for run in cell.runs)


def test_cancel_keeps_the_finished_cells(shared_manager, tmp_path):
    plan = build_plan(experiment(("steps", "2,3"), ("cfg_scale", "1, 7"), warmup=False), shared_manager)
    third = plan.cells[plan.run_order[2]].label
    token = CancelToken()

    def stop_in_third_cell(progress):
        if progress.cell_label == third and progress.step >= 1:
            token.cancel()

    result = run_experiment(shared_manager, plan, stop_in_third_cell, token)
    assert result.cancelled and result.finished_cells == 2
    assert sorted(result.cells) == sorted(plan.run_order[:2])
    assert result.status().startswith("Stopped: 2 of 4 cells finished")
    rows = table_rows(result)
    assert [r["status"] for r in rows] == ["ok", "ok", "not run", "not run"]
    assert rows[2]["total s"] is None
    paths = export(result, tmp_path / "partial")
    assert json.loads(paths["json"].read_text())["cancelled"] is True
    grid = grid_image(result)
    assert grid.size == Image.open(paths["grid"]).size  # the grid keeps its shape, unfinished tiles drawn empty


def test_a_failing_cell_does_not_lose_the_others(shared_manager):
    # Branch 8 passes the request check (0-8) but is deeper than the demo UNet: the manager refuses it at run time.
    plan = build_plan(experiment(("deepcache_branch", "0, 8"), base={"deepcache_interval": 2, "steps": 3}, warmup=False), shared_manager)
    result = run_experiment(shared_manager, plan)
    assert result.cells[0].finished and "DeepCache" in table_rows(result)[0]["caches"]
    assert result.cells[1].error and "too deep" in result.cells[1].error
    assert table_rows(result)[1]["status"].startswith("failed: DeepCache branch 8 is too deep")
    assert result.status() == "Done: 1 of 2 cells, 1 failed."


def test_lora_weight_and_prompt_sr_cells_end_to_end(make_manager, tmp_path, model_zoo, tiny_pipes):
    from tests.lora.make_loras import write_lora
    from tests.tiny_models import copy_model

    models = tmp_path / "lora-models"
    copy_model(model_zoo["sd15"], models, "tiny-sd15")
    write_lora(models / "Lora", "style", tiny_pipes["sd15"], "sd15", "kohya", seed=1)
    manager = make_manager(models, latent_cache_entries=0)
    manager.refresh()
    base = {"model": "tiny-sd15", "prompt": "a lighthouse <lora:style:1>", "width": 64, "height": 64, "steps": 2, "seed": 3}
    plan = build_plan(Experiment(base, [AxisSpec("lora_weight", "0, 1"), AxisSpec("prompt_sr", "lighthouse, barn")], warmup=False), manager)
    result = run_experiment(manager, plan, lambda progress: None)
    assert result.finished_cells == 4
    images = [result.cells[i].image.tobytes() for i in range(4)]
    assert images[0] != images[1] and images[2] != images[3], "a different LoRA weight, a different picture"
    prompts = [parse_infotext(result.cells[i].infotext)["Prompt"] for i in range(4)]
    assert prompts == ["a lighthouse <lora:style:0>", "a lighthouse <lora:style:1>", "a barn <lora:style:0>", "a barn <lora:style:1>"]


def test_prompt_order_and_styles_cells_end_to_end(make_manager, tmp_path):
    """Each cell runs the reordered prompt with its style applied, as the infotext shows."""
    styles = tmp_path / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nDusk,"{prompt}, at dusk",blurry\n', encoding="utf-8")
    manager = make_manager(styles_file=styles, latent_cache_entries=0)
    base = {"prompt": "a red circle, a blue square"}
    plan = build_plan(experiment(("prompt_order", "red circle, blue square"), ("styles", "None, Dusk"), base=base, warmup=False), manager)
    result = run_experiment(manager, plan, lambda progress: None)
    assert result.finished_cells == 4
    params = [parse_infotext(result.cells[i].infotext) for i in range(4)]
    assert [p["Prompt"] for p in params] == ["a red circle, a blue square", "a blue square, a red circle",
                                             "a red circle, a blue square, at dusk", "a blue square, a red circle, at dusk"]
    assert [p.get("Negative prompt", "") for p in params] == ["", "", "blurry", "blurry"]
    assert result.cells[0].image.tobytes() != result.cells[1].image.tobytes(), "another order, another conditioning"
