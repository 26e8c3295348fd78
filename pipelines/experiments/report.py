"""What an experiment leaves behind: the labelled grid, the per-cell table, plot data and the files.

The grid is laid out as A1111's X/Y/Z plot lays it out: X values as column headers, Y values as
row headers, one sub-grid per Z value side by side under its own title. The PNG carries the
baseline cell's generation parameters (`parameters`, readable by PNG Info) and the experiment
definition (`likeness_experiment`, JSON) so the grid alone is enough to run the experiment again.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from pipelines.atomic import remove_stale_temporaries, write_atomically, write_text_atomically
from pipelines.experiments.runner import ExperimentResult
from pipelines.telemetry import STAGES

TIMED_STAGES = tuple(s for s in STAGES if s != "save")  # experiment cells are not saved one by one
BACKGROUND = (255, 255, 255)
EMPTY_TILE = (222, 222, 222)
TEXT = (0, 0, 0)


# -- the table --------------------------------------------------------------------------------------


def table_rows(result: ExperimentResult) -> list[dict]:
    """One row per cell in grid order, columns in reading order; cells that never ran say so."""
    plan = result.plan
    stages = [s for s in TIMED_STAGES if any(s in c.stage_seconds() for c in result.cells.values())]
    rows = []
    for cell in plan.cells:
        outcome = result.cells.get(cell.index)
        fidelity = result.fidelity.get(cell.index)
        row = {"cell": cell.index, "label": cell.label}
        for axis, pick in zip(plan.axes, cell.coords):
            row[axis.setting.label] = axis.setting.format(axis.values[pick])
        row["status"] = _status(outcome)
        row["runs"] = len(outcome.runs) if outcome else 0
        stage_seconds = outcome.stage_seconds() if outcome else {}
        total = outcome.total_seconds() if outcome else None
        row["total s"] = _round(total, 3)
        for stage in stages:
            row[f"{stage} s"] = _round(stage_seconds.get(stage), 3)
        rate = outcome.iterations_per_second() if outcome else None
        row["it/s"] = _round(rate, 2)
        peak = outcome.peak_memory_bytes() if outcome else None
        row["peak memory MiB"] = _round(peak / 2**20, 1) if peak is not None else None
        row["VAE dtype"] = outcome.vae_dtype() if outcome and outcome.runs else ""
        row["caches"] = outcome.cache_hits() if outcome else ""
        row["PSNR dB"] = _round(fidelity.psnr_db, 2) if fidelity else None  # inf: identical to the baseline
        row["SSIM"] = _round(fidelity.ssim, 4) if fidelity else None
        if any(c.face is not None for c in plan.cells):
            row["ArcFace cos"] = _round(fidelity.arcface, 4) if fidelity else None
        row["baseline"] = "yes" if cell.index == plan.baseline else ""
        rows.append(row)
    return rows


def _status(outcome) -> str:
    if outcome is None:
        return "not run"
    if outcome.error:
        return ("partial: " if outcome.runs else "failed: ") + outcome.error
    return "ok"


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)


def csv_text(rows: list[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def result_json(result: ExperimentResult) -> dict:
    """The table plus what the plots are drawn from (per-stage and per-step seconds per cell)."""
    plan = result.plan
    cells = []
    for row, cell in zip(table_rows(result), plan.cells):
        outcome = result.cells.get(cell.index)
        cells.append(row | {
            "stage_seconds": {k: round(v, 5) for k, v in outcome.stage_seconds().items()} if outcome else {},
            "step_seconds": [round(s, 5) for s in outcome.step_seconds()] if outcome else [],
            "request": cell.request.to_dict(),
            "infotext": outcome.infotext if outcome else "",
        })
    return {
        "status": result.status(),
        "cancelled": result.cancelled,
        "started_at": result.started_at,
        "seed": plan.seed,
        "device": result.device,
        "memory_kind": result.memory_kind,
        "grid": dict(zip("xyz", plan.shape)),
        "baseline": plan.baseline,
        "notes": result.notes,
        "experiment": plan.definition(),
        "cells": cells,
    }


# -- plot data -------------------------------------------------------------------------------------


def stage_bars(result: ExperimentResult) -> list[dict]:
    """Median seconds per stage per cell: the stacked bars."""
    return [
        {"cell": outcome.cell.label, "stage": stage, "seconds": round(seconds, 5)}
        for outcome in _in_grid_order(result)
        for stage, seconds in outcome.stage_seconds().items()
        if stage != "save"
    ]


def step_lines(result: ExperimentResult) -> list[dict]:
    """Median latency of each denoise step per cell: one line per cell."""
    return [
        {"cell": outcome.cell.label, "step": number, "seconds": round(seconds, 5)}
        for outcome in _in_grid_order(result)
        for number, seconds in enumerate(outcome.step_seconds(), start=1)
    ]


def _in_grid_order(result: ExperimentResult):
    return [result.cells[i] for i in sorted(result.cells) if result.cells[i].runs]


# -- the grid image --------------------------------------------------------------------------------


def grid_image(result: ExperimentResult) -> Image.Image:
    """A1111-style labelled grid: X across, Y down, one sub-grid per Z value side by side.

    Tiles sit `cell_gap` apart on the background, so two neighbouring pictures never read as one."""
    plan = result.plan
    nx, ny, nz = plan.shape
    images = {i: c.image for i, c in result.cells.items() if c.image is not None}
    tile_w = max((im.width for im in images.values()), default=plan.base.width)
    tile_h = max((im.height for im in images.values()), default=plan.base.height)
    font_size = label_font_size(tile_w, tile_h)
    font = _font(font_size)
    line = font_size + 4
    gap = cell_gap(tile_w, tile_h)
    step_x, step_y = tile_w + gap, tile_h + gap
    axes = list(plan.axes) + [None, None, None]
    x_axis, y_axis, z_axis = axes[0], axes[1], axes[2]
    chars_per_tile = max(6, int(tile_w / (font_size * 0.55)))
    x_labels = [textwrap.wrap(t, chars_per_tile) for t in x_axis.labels()] if x_axis else [[]]
    top = (max(len(lines) for lines in x_labels) * line + 8) if x_axis else 0
    left_chars = max(18, chars_per_tile)  # row labels may be wider than a tile: small tiles still get one-line labels
    y_labels = [textwrap.wrap(t, left_chars) for t in y_axis.labels()] if y_axis else [[]]
    left = (max(max((len(s) for s in lines), default=0) for lines in y_labels) * font_size * 0.6 + 12) if y_axis else 0
    left = int(left)
    title = (line + 8) if z_axis else 0
    z_gap = font_size * 2 if nz > 1 else 0
    sub_w, sub_h = left + nx * step_x - gap, title + top + ny * step_y - gap
    canvas = Image.new("RGB", (nz * sub_w + (nz - 1) * z_gap, sub_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for z in range(nz):
        origin = z * (sub_w + z_gap)
        if z_axis:
            _centred(draw, [z_axis.labels()[z]], origin + left, 4, sub_w - left, font, line)
        for x in range(nx):
            if x_axis:
                _centred(draw, x_labels[x], origin + left + x * step_x, title + 4, tile_w, font, line)
        for y in range(ny):
            if y_axis:
                lines = y_labels[y]
                y0 = title + top + y * step_y + (tile_h - len(lines) * line) // 2
                for number, text in enumerate(lines):
                    draw.text((origin + 6, y0 + number * line), text, fill=TEXT, font=font)
            for x in range(nx):
                index = x + nx * (y + ny * z)
                box = (origin + left + x * step_x, title + top + y * step_y)
                _draw_tile(canvas, draw, box, (tile_w, tile_h), images.get(index), result.cells.get(index), font, line)
    return canvas


def label_font_size(tile_w: int, tile_h: int) -> int:
    """Labels readable at the grid's own size: at least 16 px, growing with the tiles (A1111 scales them too)."""
    return max(16, min(tile_w, tile_h) // 10)


def cell_gap(tile_w: int, tile_h: int) -> int:
    """The background between two tiles: a few pixels, more for big tiles."""
    return max(4, min(tile_w, tile_h) // 40)


def _draw_tile(canvas: Image.Image, draw: ImageDraw.ImageDraw, box: tuple[int, int], size: tuple[int, int], image, outcome, font,
               line: int) -> None:
    """The cell's picture centred in its tile, or a grey tile saying why there is none."""
    tile_w, tile_h = size
    if image is None:
        draw.rectangle([box[0], box[1], box[0] + tile_w - 1, box[1] + tile_h - 1], fill=EMPTY_TILE)
        _centred(draw, ["failed" if outcome and outcome.error else "not run"], box[0], box[1] + tile_h // 2 - line // 2, tile_w, font, line)
    else:
        canvas.paste(image.convert("RGB"), (box[0] + (tile_w - image.width) // 2, box[1] + (tile_h - image.height) // 2))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _centred(draw: ImageDraw.ImageDraw, lines: list[str], x0: int, y0: int, width: int, font, line: int) -> None:
    for number, text in enumerate(lines):
        text_width = draw.textlength(text, font=font)
        draw.text((x0 + max(0, (width - text_width) / 2), y0 + number * line), text, fill=TEXT, font=font)


def grid_png_info(result: ExperimentResult) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    baseline = result.cells.get(result.plan.baseline)
    first = baseline if baseline and baseline.runs else next((c for c in result.cells.values() if c.runs), None)
    if first is not None:
        info.add_text("parameters", first.infotext)
    info.add_text("likeness_experiment", json.dumps(result.plan.definition()))
    return info


# -- export ----------------------------------------------------------------------------------------


def export(result: ExperimentResult, folder: Path) -> dict[str, Path]:
    """Write grid.png, cells.csv, cells.json, experiment.json and one PNG per cell; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # an export killed half-way
    definition = result.plan.definition()
    if definition.get("face"):
        definition["face"]["photos"] = _copy_photos(definition["face"].get("photos", []), folder / "face")
    rows = table_rows(result)
    paths = {
        "grid": folder / "grid.png",
        "csv": folder / "cells.csv",
        "json": folder / "cells.json",
        "experiment": folder / "experiment.json",
    }
    # Each file is written whole or not at all (pipelines.atomic): a re-export never leaves a half file.
    grid, grid_info = grid_image(result), grid_png_info(result)
    write_atomically(paths["grid"], lambda temporary: grid.save(temporary, format="PNG", pnginfo=grid_info))
    write_text_atomically(paths["csv"], csv_text(rows))
    write_text_atomically(paths["json"], json.dumps(_json_safe(result_json(result)), indent=1))
    write_text_atomically(paths["experiment"], json.dumps(definition, indent=1))
    cells_folder = folder / "cells"
    for index, outcome in sorted(result.cells.items()):
        if outcome.image is None:
            continue
        cells_folder.mkdir(exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", outcome.infotext)
        write_atomically(cells_folder / f"{index:03d}.png",
                         lambda temporary, image=outcome.image, info=info: image.save(temporary, format="PNG", pnginfo=info))
    return paths


def _copy_photos(photos: list, folder: Path) -> list[str]:
    """Uploads live in a temporary folder: keep copies next to the experiment so it can run again."""
    copies = []
    for number, photo in enumerate(photos):
        source = Path(str(photo))
        if not source.is_file():
            copies.append(str(photo))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{number + 1}{source.suffix.lower() or '.png'}"
        shutil.copyfile(source, target)
        copies.append(str(target.resolve()))
    return copies


def _json_safe(value):
    """JSON has no infinity: an identical image's PSNR is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
