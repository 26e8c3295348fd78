"""The History tab: the outputs of past runs, newest first, as Fooocus's log and InvokeAI's gallery show them.

Thumbnails a page at a time, filtered by prompt words and model; a click shows the image's
parameters, with Send to Generate / img2img / inpaint (the same sending as PNG Info), a link to the
full-size file, and Delete, which moves the file to the trash folder and can be undone. The listing
(pipelines.history) reads text chunks only and is refreshed when the tab is shown and after a run.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
from pathlib import Path

import gradio as gr

from pipelines.history import (TRASH_FOLDER, HistoryEntry, HistoryError, HistoryIndex, HistoryPage, HistoryQuery, TrashedImage,
                               delete_image, model_names, page_of, restore_image)
from pipelines.manager import PipelineManager
from ui.png_info_tab import parameter_rows, parameters_panel

TAB_ID = "history"
ALL_MODELS = ""
CAPTION_CHARS = 48


@dataclasses.dataclass
class HistoryTab:
    """What app.py wires to other tabs: the refresh (for the tab's select and after runs) and the sending."""
    refresh: object  # refresh(text, model, page) -> updates for `refresh_outputs`
    refresh_inputs: list
    refresh_outputs: list
    selected_path: gr.State  # the full path of the clicked image, as img2img's receive takes it
    raw: gr.Textbox
    message: gr.Markdown
    send_generate: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_extras: gr.Button


def empty_state(outputs_dir: Path, listing: HistoryPage, text: str, model: str) -> str:
    """Why the page shows no image, and what to do (empty string when it shows some)."""
    if listing.entries:
        return ""
    if listing.total == 0:
        return (f"**No images yet.** Every image you generate is saved under `{outputs_dir}` (a folder per day) "
                "and appears here, newest first.")
    wanted = " and ".join(part for part in (f"prompt words “{text.strip()}”" if text.strip() else "",
                                            f"model {model}" if model else "") if part)
    return f"**No image matches {wanted}.** Clear the filter to see all {listing.total} images."


def position_text(listing: HistoryPage) -> str:
    if not listing.entries:
        return ""
    first, last = listing.first_number, listing.first_number + len(listing.entries) - 1
    filtered = f" ({listing.total} in the folder)" if listing.matched != listing.total else ""
    return f"Page {listing.page} of {listing.page_count} · images {first}–{last} of {listing.matched}{filtered}"


def caption(entry: HistoryEntry) -> str:
    """The prompt under a thumbnail, or what is wrong with the file."""
    # A note's first phrase ("Damaged", "No generation parameters in this file"); the details give the rest.
    text = (f"⚠ {entry.note.split(':', 1)[0].split('.', 1)[0]}" if entry.note else entry.prompt).replace("\n", " ")
    return text if len(text) <= CAPTION_CHARS else text[:CAPTION_CHARS - 1] + "…"


def details_text(entry: HistoryEntry) -> str:
    """The clicked image: its file, when it was made, a link to the full-size file, and any note."""
    made = dt.datetime.fromtimestamp(entry.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    link = "gradio_api/file=" + urllib.parse.quote(str(entry.path.resolve()))
    lines = [f"**{entry.relative}** · {made} · {entry.size / 1024:,.0f} KB · [Open full size]({link})"]
    if entry.note:
        lines.append(f"⚠ {entry.note}")
    return "  \n".join(lines)


def build(manager: PipelineManager, tab: gr.Tab) -> HistoryTab:
    """Lay out the tab inside the current gr.Blocks; `tab` is its gr.Tab, whose selection refreshes it."""
    index = HistoryIndex()  # one listing cache for every browser session
    with gr.Row(elem_id="history_filters"):
        text = gr.Textbox(label="Prompt contains", placeholder="words of the prompt, in any order", scale=3, elem_id="history_text")
        model = gr.Dropdown(label="Model", choices=[("All models", ALL_MODELS)], value=ALL_MODELS, scale=2, elem_id="history_model")
    with gr.Row(equal_height=True, elem_id="history_pager"):
        newer = gr.Button("‹ Newer", size="sm", scale=0, min_width=110, interactive=False, elem_id="history_newer")
        position = gr.Markdown(elem_id="history_position")
        older = gr.Button("Older ›", size="sm", scale=0, min_width=110, interactive=False, elem_id="history_older")
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=110, elem_id="history_refresh")
    empty = gr.Markdown(visible=False, elem_id="history_empty")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Outputs, newest first", columns=6, height=640, allow_preview=False, object_fit="cover",
                                 show_label=False, elem_id="history_gallery")
        with gr.Column(scale=2):
            details = gr.Markdown("Click an image to see its parameters.", elem_id="history_details")
            panel = parameters_panel("history", raw_lines=3)
            table, raw = panel.table, panel.raw
            with gr.Row():
                delete = gr.Button("Delete (to trash)", size="sm", elem_id="history_delete")
                undo = gr.Button("Undo delete", size="sm", elem_id="history_undo")
            message = gr.Markdown(elem_id="history_message")
    page = gr.State(1)
    shown = gr.State([])  # relative paths of the page's images, in gallery order
    selected = gr.State(None)  # relative path of the clicked image
    selected_path = gr.State(None)
    trashed = gr.State([])  # this session's deletions, newest last: (original, trashed) pairs for Undo

    def outputs_dir() -> Path:
        return Path(manager.config.outputs_dir)  # read each time: Settings can move it

    cleared = ("Click an image to see its parameters.", [], "", None, None)

    def show(text_value, model_value, page_number):
        """The page `page_number` of the filtered listing, the model choices, and the details cleared."""
        entries = index.entries(outputs_dir())
        names = model_names(entries)
        model_value = model_value if model_value in names else ALL_MODELS
        listing = page_of(entries, HistoryQuery(text=text_value or "", model=model_value, page=int(page_number or 1)))
        why_empty = empty_state(outputs_dir(), listing, text_value or "", model_value)
        return (
            gr.update(value=[(str(entry.path), caption(entry)) for entry in listing.entries], visible=bool(listing.entries)),
            position_text(listing),
            gr.update(value=why_empty, visible=bool(why_empty)),
            gr.update(choices=[("All models", ALL_MODELS)] + [(name, name) for name in names], value=model_value),
            listing.page, [entry.relative for entry in listing.entries],
            gr.update(interactive=listing.page > 1), gr.update(interactive=listing.page < listing.page_count),
            *cleared,
        )

    listing_outputs = [gallery, position, empty, model, page, shown, newer, older, details, table, raw, selected, selected_path]
    private = {"api_visibility": "private"}

    def first_page(text_value, model_value):
        return show(text_value, model_value, 1)

    def step(delta):
        return lambda text_value, model_value, page_number: show(text_value, model_value, int(page_number or 1) + delta)

    tab.select(show, [text, model, page], listing_outputs, **private)
    refresh.click(show, [text, model, page], listing_outputs, **private)
    text.submit(first_page, [text, model], listing_outputs, **private)
    text.change(first_page, [text, model], listing_outputs, trigger_mode="always_last", **private)  # as one types
    model.input(first_page, [text, model], listing_outputs, **private)
    newer.click(step(-1), [text, model, page], listing_outputs, **private)
    older.click(step(+1), [text, model, page], listing_outputs, **private)

    def choose(relative_paths, event: gr.SelectData):
        relative = relative_paths[event.index] if 0 <= event.index < len(relative_paths) else None
        entry = index.entry(outputs_dir(), relative) if relative else None
        if entry is None:
            return "⚠ This image is no longer in the outputs folder (deleted or moved elsewhere). Press Refresh.", [], "", None, None
        return details_text(entry), parameter_rows(entry.parameters), entry.infotext, entry.relative, str(entry.path)

    gallery.select(choose, shown, [details, table, raw, selected, selected_path], **private)

    def delete_selected(relative, stack, text_value, model_value, page_number):
        if not relative:
            return "⚠ Click an image first, then Delete.", stack, *show(text_value, model_value, page_number)
        try:
            item = delete_image(outputs_dir(), relative)
        except HistoryError as error:
            return f"⚠ {error}", stack, *show(text_value, model_value, page_number)
        note = (f"Moved {relative} to the trash (`{TRASH_FOLDER}/` in the outputs folder). "
                "Undo delete puts it back.")
        return note, stack + [[item.original, item.trashed]], *show(text_value, model_value, page_number)

    def undo_delete(stack, text_value, model_value, page_number):
        if not stack:
            return "Nothing to undo: no image was deleted in this window.", stack, *show(text_value, model_value, page_number)
        *rest, (original, trashed_path) = stack
        try:
            restored = restore_image(outputs_dir(), TrashedImage(original, trashed_path))
        except HistoryError as error:
            return f"⚠ {error}", rest, *show(text_value, model_value, page_number)
        where = "" if restored == original else f" as {restored} (a new image took its name meanwhile)"
        return f"Restored {original}{where}.", rest, *show(text_value, model_value, page_number)

    delete.click(delete_selected, [selected, trashed, text, model, page], [message, trashed, *listing_outputs], **private)
    undo.click(undo_delete, [trashed, text, model, page], [message, trashed, *listing_outputs], **private)
    return HistoryTab(show, [text, model, page], listing_outputs, selected_path, raw, message, panel.send, panel.send_img2img,
                      panel.send_inpaint, panel.send_extras)
