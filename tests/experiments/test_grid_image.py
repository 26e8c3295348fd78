"""The experiment grid image: tiles apart from each other, labels large enough to read (issue 17)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from pipelines.experiments.plan import build_plan
from pipelines.experiments.report import BACKGROUND, cell_gap, grid_image, label_font_size
from pipelines.experiments.runner import CellResult, ExperimentResult
from tests.experiments.test_runner import experiment

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
COLOURS = [(200, 30, 30), (30, 160, 30), (30, 30, 200), (220, 180, 20), (150, 40, 160), (20, 160, 170)]


def solid_result(plan, size: int) -> ExperimentResult:
    """Every cell a solid picture of its own colour, as if it had run (no model needed)."""
    cells = {}
    for cell in plan.cells:
        picture = Image.new("RGB", (size, size), COLOURS[cell.index % len(COLOURS)])
        cells[cell.index] = CellResult(cell, runs=[SimpleNamespace(images=[SimpleNamespace(image=picture, infotext="")])])
    return ExperimentResult(plan, cells)


def test_tiles_are_separated_by_a_gap_and_labels_are_readable(shared_manager):
    plan = build_plan(experiment(("steps", "2,3,4"), ("cfg_scale", "1, 7"), base={"width": 64, "height": 64}), shared_manager)
    grid = grid_image(solid_result(plan, 64))
    ARTIFACTS.mkdir(exist_ok=True)
    grid.save(ARTIFACTS / "experiment_grid_gaps.png")
    gap = cell_gap(64, 64)
    assert gap >= 4 and label_font_size(64, 64) >= 16
    # Find the first tile (red) and walk right: red, then `gap` background columns, then the next tile (green).
    pixels = grid.load()
    row = grid.height - 32  # inside the last row of tiles
    xs = [x for x in range(grid.width) if pixels[x, row] == COLOURS[3]]  # the last row's first tile (cell 3)
    assert xs, "the last row's first tile is missing"
    right_edge = max(xs)
    between = [pixels[right_edge + 1 + i, row] for i in range(gap)]
    assert between == [BACKGROUND] * gap, between
    assert pixels[right_edge + 1 + gap, row] == COLOURS[4], "the next tile starts right after the gap"
    # Rows are apart too: above the last row's tile, `gap` background rows, then the first row's tile.
    column = right_edge - 8
    tops = [y for y in range(grid.height) if pixels[column, y] == COLOURS[3]]
    assert [pixels[column, min(tops) - 1 - i] for i in range(gap)] == [BACKGROUND] * gap
    assert pixels[column, min(tops) - 1 - gap] == COLOURS[0]
    # The grid is as wide as the labels column, 3 tiles and 2 gaps.
    assert min(xs) == grid.width - 3 * 64 - 2 * gap
