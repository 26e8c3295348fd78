"""`bench --suite gpu`: full-size architectures on a GPU, side by side in one process, inside a time budget.

Each row measures one ratio (ours / bare, cached / uncached, bf16 / fp32, ...) with both arms in the
same process, warm-up runs excluded, the device synchronized around every timer, and the allocator
peak of each arm. Rows run in order of value; a row whose estimated cost (its own, plus the models
it needs that are not built yet) exceeds what is left of the budget is skipped and printed as
"skipped (budget)". Every line is printed, flushed, and (with `--json`) written to the JSON file as
soon as it is measured, so a run cut off by its lease still reports everything it got.

`--dry-run` runs the same rows on the CPU with the tiny builders of `pipelines.bench.tiny_models`:
the tests run it, so this suite cannot break unnoticed between leases of a GPU. Its figures mean
nothing; its code paths are the GPU run's. The rows are in `pipelines.bench.gpu_rows`, the models they share in
`pipelines.bench.gpu_setup`.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pipelines.bench.tables import heading, mib, ratio, seconds, table, verdict

DEFAULT_BUDGET_S = 420.0


# -- what a row measures ----------------------------------------------------------------------------


@dataclass
class Measure:
    """One printed line: `value` of the measured arm against `base` of the reference arm.

    `unit` is "s" (times) or "bytes" (peak memory). `target` is a bound on value / base, checked
    with `op` ("<=" or ">="); None when the line is informational.
    """

    label: str
    base_label: str
    base: float | None
    value_label: str
    value: float | None
    unit: str = "s"
    target: float | None = None
    op: str = "<="
    peak_base: int | None = None
    peak_value: int | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.base is None or self.value is None or self.base <= 0 or not math.isfinite(self.base):
            return None
        return self.value / self.base

    @property
    def passed(self) -> bool | None:
        r = self.ratio
        if self.target is None or r is None:
            return None
        return r <= self.target if self.op == "<=" else r >= self.target

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(ratio=self.ratio, passed=self.passed)
        return data


@dataclass(frozen=True)
class Setup:
    """Something several rows share (a built model, files on disk), built by the first row that needs it."""

    key: str
    cost_s: float  # estimated seconds on the target device
    dry_cost_s: float  # estimated seconds in the CPU dry run
    build: Callable  # build(context) -> None


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    value: int  # higher runs first
    cost_s: float  # estimated seconds on the target device, warm-ups included, setups excluded
    dry_cost_s: float
    run: Callable  # run(context) -> list[Measure]
    needs: tuple[str, ...] = ()


@dataclass
class RowRecord:
    key: str
    title: str
    status: str  # "ran", "skipped (budget)", "skipped (setup failed)", "failed"
    estimate_s: float
    seconds: float = 0.0  # measured wall time, setups included
    measures: list[Measure] = field(default_factory=list)
    reason: str = ""

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "status": self.status, "estimate_s": self.estimate_s,
                "seconds": self.seconds, "reason": self.reason, "measures": [m.to_json() for m in self.measures]}


# -- formatting -------------------------------------------------------------------------------------

COLUMNS = ["row", "line", "reference", "measured", "ratio", "target", "verdict", "peak ref -> measured", "note"]


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return seconds(value) if unit == "s" else mib(int(value))


def measure_cells(row_key: str, m: Measure) -> list[str]:
    target = f"{m.op} {m.target:g}" if m.target is not None else ""
    passed = m.passed
    peaks = "-" if m.peak_base is None and m.peak_value is None else f"{mib(m.peak_base)} -> {mib(m.peak_value)}"
    return [row_key, m.label, f"{m.base_label} {_amount(m.base, m.unit)}", f"{m.value_label} {_amount(m.value, m.unit)}",
            ratio(m.ratio), target, "" if passed is None else verdict(passed), peaks, m.note]


def record_cells(record: RowRecord) -> list[list[str]]:
    if record.status != "ran":
        return [[record.key, record.title, "", "", "-", "", "", "", f"{record.status}: {record.reason}"]]
    return [measure_cells(record.key, m) for m in record.measures]


def format_line(cells: list[str]) -> str:
    """One streamed line (the final table sizes its columns to fit; this cannot know them yet)."""
    key, label, base, value, r, target, passed, peaks, note = cells
    text = f"  {key:<16} {label:<34} {base:>22} {value:>22} {r:>8} {target:>7} {passed:>4}"
    if peaks and peaks != "-":
        text += f"  peak {peaks}"
    if note:
        text += f"  {note}"
    return text.rstrip()


# -- the budgeted runner ----------------------------------------------------------------------------


class BudgetRunner:
    """Runs rows by value within `budget_s` seconds of `clock()`; prints and saves as it goes."""

    def __init__(self, rows: list[Row], setups: dict[str, Setup], budget_s: float, *, dry_run: bool = False,
                 clock: Callable[[], float] = time.monotonic, out=None, json_file: Path | None = None, header: dict | None = None):
        self.rows = sorted(rows, key=lambda row: -row.value)
        self.setups = setups
        self.budget_s = budget_s
        self.dry_run = dry_run
        self.clock = clock
        self.out = out or sys.stdout
        self.json_file = Path(json_file) if json_file is not None else None
        self.header = header or {}
        self.built: dict[str, float] = {}  # setup key -> seconds it took
        self.failed_setups: dict[str, str] = {}
        self.records: list[RowRecord] = []
        self.started = 0.0

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def estimate(self, row: Row) -> float:
        own = row.dry_cost_s if self.dry_run else row.cost_s
        setups = [self.setups[key] for key in row.needs if key not in self.built]
        return own + sum(s.dry_cost_s if self.dry_run else s.cost_s for s in setups)

    def run(self, context) -> list[RowRecord]:
        self.started = self.clock()
        plan = ", ".join(f"{row.key} ~{row.dry_cost_s if self.dry_run else row.cost_s:.0f} s" for row in self.rows)
        self.say(f"  plan, by value (estimates without the shared setups): {plan}")
        self.say(f"  {'row':<16} {'line':<34} {'reference':>22} {'measured':>22} {'ratio':>8} {'target':>7} {'':>4}")
        for row in self.rows:
            self.records.append(self.run_row(row, context))
            for cells in record_cells(self.records[-1]):
                self.say(format_line(cells))
            self.save(complete=False)
        self.save(complete=True)
        return self.records

    def run_row(self, row: Row, context) -> RowRecord:
        estimate = self.estimate(row)
        left = self.budget_s - self.elapsed()
        record = RowRecord(row.key, row.title, "ran", estimate)
        broken = [key for key in row.needs if key in self.failed_setups]
        if broken:
            record.status = "skipped (setup failed)"
            record.reason = "; ".join(f"{key}: {self.failed_setups[key]}" for key in broken)
            return record
        if estimate > left:
            record.status = "skipped (budget)"
            record.reason = f"needs ~{estimate:.0f} s, {max(left, 0):.0f} s of {self.budget_s:.0f} s left"
            return record
        start = self.clock()
        for key in row.needs:
            if key in self.built:
                continue
            setup_start = self.clock()
            try:
                self.setups[key].build(context)
            except Exception as error:  # noqa: BLE001 - one broken setup must not cost the other rows
                self.failed_setups[key] = f"{error.__class__.__name__}: {error}"
                traceback.print_exc(file=sys.stderr)
                record.status, record.reason = "skipped (setup failed)", f"{key}: {self.failed_setups[key]}"
                record.seconds = self.clock() - start
                return record
            self.built[key] = self.clock() - setup_start
        try:
            record.measures = list(row.run(context))
        except Exception as error:  # noqa: BLE001 - report it and go on with the next row
            traceback.print_exc(file=sys.stderr)
            record.status, record.reason = "failed", f"{error.__class__.__name__}: {str(error)[:300]}"
        record.seconds = self.clock() - start
        return record

    def summary(self) -> str:
        rows = [cells for record in self.records for cells in record_cells(record)]
        ran = sum(1 for r in self.records if r.status == "ran")
        lines = [heading("Summary"), table(COLUMNS, rows, align="llrrrrlll"),
                 f"  {ran} of {len(self.records)} rows ran in {self.elapsed():.0f} s of a {self.budget_s:.0f} s budget; "
                 f"setups: " + (", ".join(f"{key} {value:.0f} s" for key, value in self.built.items()) or "none")]
        for record in self.records:
            if record.status == "ran":
                lines.append(f"  {record.key}: {record.seconds:.1f} s (estimated {record.estimate_s:.0f} s)")
        return "\n".join(lines)

    def save(self, complete: bool) -> None:
        if self.json_file is None:
            return
        document = {"suite": "gpu", "dry_run": self.dry_run, "budget_s": self.budget_s, "elapsed_s": self.elapsed(),
                    "complete": complete, "environment": self.header, "setups_s": self.built, "failed_setups": self.failed_setups,
                    "rows": [record.to_json() for record in self.records]}
        from pipelines.bench.core import clean_for_json

        self.json_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.json_file.with_name(self.json_file.name + ".partial")
        partial.write_text(json.dumps(clean_for_json(document), indent=2))
        os.replace(partial, self.json_file)  # a reader never sees half a file


# -- entry point ------------------------------------------------------------------------------------


def environment(device) -> dict:
    import diffusers
    import torch
    import transformers

    from pipelines import devices

    env = {
        "timestamp": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device), "device_description": devices.describe_device(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(), "platform": platform.platform(),
    }
    if device.type == "cuda":
        env["cudnn"] = torch.backends.cudnn.version()
        env["flash_sdp_enabled"] = torch.backends.cuda.flash_sdp_enabled()
        env["driver"] = nvidia_driver()
    try:
        import onnxruntime

        env["onnxruntime"] = f"{onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"
    except ImportError:
        env["onnxruntime"] = None
    return env


def nvidia_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi (torch does not expose it), None where it cannot be read."""
    import subprocess

    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else None


def run(manager, json_file: Path | None = None, budget_s: float = DEFAULT_BUDGET_S, dry_run: bool = False, out=None,
        clock: Callable[[], float] = time.monotonic) -> int:
    """Run the suite on the app manager's device (the CPU with `dry_run`); returns the exit code (0 when it ran)."""
    import torch

    from pipelines.bench import gpu_rows, gpu_setup

    out = out or sys.stdout
    device = torch.device("cpu") if dry_run else manager.device
    env = environment(device)
    print(heading(f"Likeness bench --suite gpu{' --dry-run (CPU, tiny configs: the figures mean nothing)' if dry_run else ''}"),
          file=out, flush=True)
    print(f"  {env['timestamp']} · {env['device_description']} · driver {env.get('driver')} · torch {env['torch']} (CUDA {env['cuda']}) · diffusers "
          f"{env['diffusers']} · transformers {env['transformers']} · onnxruntime {env['onnxruntime']} · budget {budget_s:.0f} s",
          file=out, flush=True)
    if device.type != "cuda" and not dry_run:
        print("  no CUDA device: the full-size rows need a GPU (minutes per step on a CPU). Run with --dry-run to check the\n"
              "  suite's code paths on tiny configs, or on a machine with an NVIDIA GPU.", file=out, flush=True)
        return 0
    context = gpu_setup.GpuContext(manager, device, dry_run, out)
    runner = BudgetRunner(gpu_rows.ROWS, gpu_setup.SETUPS, budget_s, dry_run=dry_run, clock=clock, out=out, json_file=json_file, header=env)
    try:
        runner.run(context)
    finally:
        context.close()
    print(runner.summary(), file=out, flush=True)
    for line in context.notes:
        print(f"  note: {line}", file=out, flush=True)
    if json_file is not None:
        print(f"  figures written to {json_file}", file=out, flush=True)
    return 0
