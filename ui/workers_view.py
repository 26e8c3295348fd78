"""Ray workers and the queue as the status bar, the Models tab and the queue readouts show them.

Worker rows come from `DispatchingManager.workers()` (each worker's own status, asked when shown);
with the in-process manager there are no workers and those are not shown. Queue rows come from
`manager.jobs()` (`pipelines.jobs.JobView`): which worker runs each job, each waiting job's place;
the in-process manager answers them too, naming "this process".
"""
from __future__ import annotations

from pipelines.jobs import JobView

QUEUE_COLUMNS = ["job", "from", "where", "model", "prompt"]
PROMPT_SHOWN = 60  # characters of a prompt in the queue table
WORKER_COLUMNS = ["worker", "device", "state", "models in memory", "jobs done", "running now", "restarts", "host"]


def has_workers(manager) -> bool:
    return callable(getattr(type(manager), "workers", None))


def loaded_text(row: dict) -> str:
    return ", ".join(f"{record['name']} ({record['level']})" for record in row.get("loaded", ())) or "none"


def state_text(row: dict) -> str:
    state = row.get("state", "?")
    return state if state in ("busy", "idle") else f"⚠ {state}"  # not answering (starting, or gone)


def worker_table(manager) -> list[list]:
    by_id = {job.id: job for job in jobs_of(manager)}
    rows = []
    for row in manager.workers():
        running = "; ".join(running_on_worker(job, by_id.get(job["job"])) for job in row.get("running", ()))
        rows.append([row["name"], row.get("device_label") or row.get("device", "?"), state_text(row), loaded_text(row),
                     row.get("jobs_done", 0), running, row.get("restarts", 0), row.get("host", "")])
    return rows


def running_on_worker(job: dict, view: JobView | None) -> str:
    """A worker's running job: what it is and whose (the pool's view), model and prompt (the worker's own)."""
    what = f"{view.tag.kind} from {owner_text(view)}, " if view is not None else ""
    return f"{what}{job['model']}: {job['prompt'][:40]}"


def workers_status(manager) -> str:
    """The status bar with workers: one short clause per worker, and how many jobs wait for one."""
    parts = [f"{row['name']} ({row.get('device', '?')}, {state_text(row)}, {row.get('jobs_done', 0)} jobs, {loaded_text(row)})"
             for row in manager.workers()]
    waiting = sum(1 for job in jobs_of(manager) if job.state == "waiting")
    line = f"**Workers** {len(parts)}: " + " · ".join(parts)
    return line + (f" · **waiting for a worker** {waiting}" if waiting else "")


# -- the queue ------------------------------------------------------------------------------------

def jobs_of(manager) -> list[JobView]:
    """Running jobs (with their worker) then waiting ones (with their place); [] for a manager that keeps none."""
    jobs = getattr(manager, "jobs", None)
    return list(jobs()) if callable(jobs) else []


def owner_text(job: JobView, viewer: str | None = None) -> str:
    """Whose job it is, as a reader of the queue sees it: "you", "a browser tab", "the API", "this app"."""
    tag = job.tag
    if viewer and tag.owner == viewer:
        return "you"
    if tag.source == "browser":
        return "a browser tab"
    if tag.source == "api":
        return "the API"
    return "this app"  # the CLI, a script, a benchmark


def queue_rows(manager, viewer: str | None = None) -> list[list]:
    """The Models tab's queue table: one row per job, running ones first (with the worker and device running
    it), then waiting ones in the order they will start."""
    return [[job.tag.kind, owner_text(job, viewer), job.where(), job.model, job.prompt[:PROMPT_SHOWN]] for job in jobs_of(manager)]


def worker_of_session(manager, session: str) -> str:
    """The worker running this browser session's job ("worker-1 (cpu)"), or "" while it waits or after it ended."""
    return next((job.where() for job in jobs_of(manager) if job.state == "running" and job.tag.owner == session), "")


def running_text(job: JobView, viewer: str | None = None) -> str:
    """One running job for the waiting readout: "txt2img from a browser tab on worker-1 (cpu)"."""
    return f"{job.tag.kind} from {owner_text(job, viewer)} on {job.where()}"


def residency(manager) -> dict[str, str]:
    """Model name -> where it sits on the workers ("worker-1 RAM, worker-2 VRAM")."""
    where: dict[str, list[str]] = {}
    for row in manager.workers():
        for record in row.get("loaded", ()):
            where.setdefault(record["name"], []).append(f"{row['name']} {record['level']}")
    return {name: ", ".join(places) for name, places in where.items()}
