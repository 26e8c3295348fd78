"""`python app.py experiment --config FILE [--out DIR] [--yes] [--json]`: the Experiments tab, headless.

Writes the same files as the tab's export (grid.png, cells.csv, cells.json, experiment.json, one
PNG per cell). Exit codes as every command: 0 ok, 2 bad input (the message names the axis and
the value), 130 stopped with Ctrl+C (the finished cells are still written).
"""
from __future__ import annotations

import datetime as dt
import json
import signal
import sys
from pathlib import Path

from pipelines.errors import InvalidRequest
from pipelines.exit_status import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK
from pipelines.experiments.plan import Experiment, build_plan
from pipelines.experiments.report import export, table_rows
from pipelines.experiments.runner import run_experiment
from pipelines.generate import CancelToken


def default_folder(outputs_dir: Path) -> Path:
    return Path(outputs_dir) / "experiments" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def confirm_size(plan, limit: int, confirmed: bool) -> None:
    """Refuse a grid above the Settings limit unless the caller confirmed it."""
    cells = len(plan.cells)
    if cells > limit and not confirmed:
        raise InvalidRequest(
            f"This experiment has {cells} cells ({plan.total_runs} generations), above the limit of {limit} "
            f"(Settings: experiment_confirm_cells). Pass --yes to run it anyway."
        )


def cmd_experiment(manager, experiment: Experiment, args, confirm_cells: int) -> int:
    """`experiment` is the file already read (app.py reads it before any model loads: `read_experiment`)."""
    plan = build_plan(experiment, manager)
    confirm_size(plan, confirm_cells, args.yes)
    folder = Path(args.out) if args.out else default_folder(manager.config.outputs_dir)
    nx, ny, nz = plan.shape
    _err(f"experiment: {len(plan.cells)} cells ({nx}x{ny}x{nz}), {plan.total_runs} generations, seed {plan.seed}")
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())  # Ctrl+C: stop, keep the finished cells
    last = [""]

    def show(progress) -> None:
        if args.json:
            return
        text = progress.describe()
        if text != last[0]:
            last[0] = text
            print(f"\r{text[:110]:<110}", end="", file=sys.stderr, flush=True)

    try:
        result = run_experiment(manager, plan, show, cancel)
    finally:
        signal.signal(signal.SIGINT, previous)
    if not args.json:
        print("", file=sys.stderr)
    paths = export(result, folder)
    rows = table_rows(result)
    if args.json:
        print(json.dumps({"status": result.status(), "cancelled": result.cancelled, "files": {k: str(v) for k, v in paths.items()},
                          "notes": result.notes, "cells": rows}, default=str))
    else:
        for row in rows:
            print(_row_line(row))
        for note in result.notes:
            print(f"note: {note}")
        print(result.status())
        print(f"wrote {folder}: " + ", ".join(p.name for p in paths.values()))
    return EXIT_INTERRUPTED if result.cancelled else EXIT_OK


def _row_line(row: dict) -> str:
    keep = ("total s", "denoise s", "VAE decode s", "it/s", "peak memory MiB", "VAE dtype", "PSNR dB", "SSIM", "ArcFace cos")
    values = ", ".join(f"{k} {row[k]}" for k in keep if row.get(k) not in (None, ""))
    return f"[{row['cell']}] {row['label']}: {row['status']}" + (f"; {values}" if values else "")


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
