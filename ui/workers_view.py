"""Ray workers as the status bar and the Models tab show them (`python app.py --workers ray`).

The rows come from `DispatchingManager.workers()` (each worker's own status, asked when shown);
with the in-process manager there are no workers and nothing here is shown.
"""
from __future__ import annotations

WORKER_COLUMNS = ["worker", "device", "state", "models in memory", "jobs done", "running now", "restarts", "host"]


def has_workers(manager) -> bool:
    return callable(getattr(type(manager), "workers", None))


def loaded_text(row: dict) -> str:
    return ", ".join(f"{record['name']} ({record['level']})" for record in row.get("loaded", ())) or "none"


def state_text(row: dict) -> str:
    state = row.get("state", "?")
    return state if state in ("busy", "idle") else f"⚠ {state}"  # not answering (starting, or gone)


def worker_table(manager) -> list[list]:
    rows = []
    for row in manager.workers():
        running = "; ".join(f"{job['model']}: {job['prompt'][:40]}" for job in row.get("running", ()))
        rows.append([row["name"], row.get("device_label") or row.get("device", "?"), state_text(row), loaded_text(row),
                     row.get("jobs_done", 0), running, row.get("restarts", 0), row.get("host", "")])
    return rows


def workers_status(manager) -> str:
    """The status bar with workers: one short clause per worker."""
    parts = [f"{row['name']} ({row.get('device', '?')}, {state_text(row)}, {row.get('jobs_done', 0)} jobs, {loaded_text(row)})"
             for row in manager.workers()]
    return f"**Workers** {len(parts)}: " + " · ".join(parts)


def residency(manager) -> dict[str, str]:
    """Model name -> where it sits on the workers ("worker-1 RAM, worker-2 VRAM")."""
    where: dict[str, list[str]] = {}
    for row in manager.workers():
        for record in row.get("loaded", ()):
            where.setdefault(record["name"], []).append(f"{row['name']} {record['level']}")
    return {name: ", ".join(places) for name, places in where.items()}
