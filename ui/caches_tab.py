"""The Caches tab: what each cache holds and what it saved, with a clear button per cache.

Reads `manager.caches()` (each with `stats()` and `clear()`); refreshed after every generation and
on a timer, since the Face and Experiments tabs, the API and other sessions generate too.
"""
from __future__ import annotations

import gradio as gr

from pipelines.manager import PipelineManager

HEADERS = ["Cache", "Policy", "Entries", "Size", "Hits", "Misses", "Hit rate", "Time saved"]
NOTE = (
    "The **approximate latents** cache (off by default; *Approximate cache* in the Generate tab, `--approx-cache` "
    "in the CLI) trades exactness for speed: a prompt close to an earlier one resumes from that run's latents. "
    "It is kept on disk under the cache folder and holds embeddings and latents of your prompts (not their text): "
    "do not share one cache folder between users. Its entries are stored latents (one per prompt and K); "
    "its size limit is a byte budget (Settings)."
)


def human_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def rows(manager: PipelineManager) -> list[list]:
    table = []
    for cache in manager.caches():
        if not getattr(cache, "is_open", True):  # the approximate cache's folder is read on first use only
            table.append([cache.name, cache.policy, "on disk, not read yet", "-", 0, 0, "-", "0.00 s"])
            continue
        s = cache.stats()
        asked = s.hits + s.misses
        limit = f"/{s.max_entries}" if s.max_entries else ""
        off = getattr(cache, "unavailable", None)  # the approximate cache's store could not be reached: off for this run
        table.append([s.name, s.policy, f"off for this run: {off}" if off else f"{s.entries}{limit}", human_bytes(s.bytes), s.hits, s.misses,
                      f"{s.hits / asked:.0%}" if asked else "-", f"{s.seconds_saved:.2f} s"])
    return table


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower())


def build(manager: PipelineManager, tab: gr.Tab | None = None) -> dict:
    """Lay out the tab; returns `table` and `refresh` so the app can refresh it after a generation.

    The table is read when a page opens (a callable value) and whenever `tab` (this tab) is shown,
    so a fresh page never shows build-time zeros until the timer ticks.
    """
    refresh = lambda: rows(manager)  # noqa: E731
    table = gr.Dataframe(refresh, headers=HEADERS, interactive=False, elem_id="caches_table", wrap=True)
    message = gr.Markdown(elem_id="caches_message")
    if tab is not None:
        tab.select(refresh, None, table, api_visibility="private", queue=False)

    with gr.Row():
        for cache in manager.caches():
            button = gr.Button(f"Clear {cache.name}", elem_id=f"clear_{slug(cache.name)}", size="sm")
            button.click(clear_one(manager, cache.name), None, [table, message], api_visibility="private")
        clear_all = gr.Button("Clear all", variant="stop", elem_id="clear_all_caches", size="sm")
    gr.Markdown(NOTE)

    def on_clear_all():
        for cache in manager.caches():
            cache.clear()
        return rows(manager), "Cleared every cache."

    clear_all.click(on_clear_all, None, [table, message], api_name="clear_caches")
    timer = gr.Timer(10.0)
    timer.tick(refresh, None, table, api_visibility="private", queue=False)
    return {"table": table, "refresh": refresh}


def clear_one(manager: PipelineManager, name: str):
    def clear():
        for cache in manager.caches():
            if cache.name == name:
                cache.clear()
        return rows(manager), f"Cleared {name}."

    return clear
