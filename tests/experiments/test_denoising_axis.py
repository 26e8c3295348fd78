"""The Denoising strength axis: img2img from an init image named in the starting settings (a file's
path, opened header-first as the CLI opens it), one cell per strength, and refusals before anything runs."""
from __future__ import annotations

import json

import pytest

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.errors import InvalidRequest
from pipelines.experiments.plan import AxisSpec, Experiment, build_plan
from pipelines.experiments.runner import run_experiment
from tests.refine.test_img2img_inpaint import box_mask, picture

BASE = {"model": DEMO_MODEL_NAME, "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4, "seed": 11}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("denoising-axis")
    picture(64, seed=3).save(folder / "init.png")
    box_mask(64, (16, 16, 40, 40)).save(folder / "mask.png")
    (folder / "notes.txt").write_text("not a picture")
    return folder


def experiment(values: str, **base) -> Experiment:
    return Experiment(dict(BASE, **base), [AxisSpec("Denoising strength", values)])


def test_each_cell_runs_img2img_at_its_strength(shared_manager, files):
    plan = build_plan(experiment("0.25, 0.75", init_image=str(files / "init.png")), shared_manager)
    assert [cell.request.denoising_strength for cell in plan.cells] == [0.25, 0.75]
    assert [cell.label for cell in plan.cells] == ["Denoising strength: 0.25", "Denoising strength: 0.75"]
    assert all(cell.request.init_image.size == (64, 64) for cell in plan.cells)
    definition = plan.definition()
    assert definition["base"]["init_image"] == str(files / "init.png")  # the exported file runs again from the picture
    json.dumps(definition)
    result = run_experiment(shared_manager, plan, lambda _: None)
    assert not result.cancelled and result.finished_cells == 2
    steps = [len(result.cells[i].step_seconds()) for i in range(2)]
    assert steps == [1, 3]  # int(4 x strength): the end of the schedule, as in A1111
    assert result.cells[0].image.tobytes() != result.cells[1].image.tobytes()


def test_inpainting_cells_take_the_mask_too(shared_manager, files):
    plan = build_plan(experiment("0.5, 1", init_image=str(files / "init.png"), mask=str(files / "mask.png"), mask_blur=0), shared_manager)
    assert all(cell.request.mode == "inpaint" for cell in plan.cells)


@pytest.mark.parametrize("values, base, message", [
    ("0.5, 1", {}, "changes nothing without an init image"),
    ("0.5, 1.5", {"init_image": "INIT"}, "Denoising strength must be between 0 and 1, got 1.5"),
    ("0.5", {"init_image": "MISSING"}, "The starting init image was not found"),
    ("0.5", {"init_image": "TEXT"}, "The starting init image is not an image"),
], ids=["no init image", "strength 1.5", "missing file", "not a picture"])
def test_refused_before_anything_runs(shared_manager, files, values, base, message):
    paths = {"INIT": files / "init.png", "MISSING": files / "nope.png", "TEXT": files / "notes.txt"}
    base = {key: str(paths[value]) for key, value in base.items()}
    with pytest.raises(InvalidRequest, match=message):
        build_plan(experiment(values, **base), shared_manager)
