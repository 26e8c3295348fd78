"""Plain-text tables for the benchmark reports (no dependencies, monospace output)."""
from __future__ import annotations

import math
import statistics


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """Columns sized to fit; `align` is one char per column, 'l' or 'r' (default: first left, rest right)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = align or ("l" + "r" * (len(headers) - 1))

    def line(row: list[str]) -> str:
        parts = [cell.ljust(w) if a == "l" else cell.rjust(w) for cell, w, a in zip(row, widths, align)]
        return "  " + "  ".join(parts).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def heading(title: str) -> str:
    return f"\n{title}\n{'=' * len(title)}"


def seconds(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.{digits}f} s" if value < 100 else f"{value:.0f} s"


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3f}x" if value >= 0.001 else f"{value:.1e}x"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def finish_suite(figures: dict, started: float, json_file, say) -> int:
    """Every suite's last lines: its total time, and the figures as JSON when asked for."""
    import json
    import time
    from pathlib import Path

    from pipelines.bench.core import clean_for_json

    figures["total_seconds"] = time.perf_counter() - started
    say(f"\n  suite took {figures['total_seconds']:.0f} s")
    if json_file is not None:
        Path(json_file).write_text(json.dumps(clean_for_json(figures), indent=2))
    return 0
