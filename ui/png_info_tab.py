"""The PNG Info tab: read the generation parameters of an image and send them to Generate."""
from __future__ import annotations

import math

import gradio as gr

from pipelines.errors import LikenessError
from pipelines.images import read_embedded_text
from pipelines.infotext import parse_infotext
from pipelines.lora.files import lora_hash
from pipelines.lora.tags import parse_infotext_hashes
from pipelines.manager import PipelineManager
from pipelines.samplers import sampler_from_infotext
from pipelines.vae import VAE_CHOICES

NO_PARAMETERS = "This image carries no generation parameters (no A1111 `parameters` text chunk or EXIF comment)."


def read_image_parameters(path: str | None) -> tuple[str, list[list[str]], str]:
    """(raw text, table rows, message) for an uploaded file; never raises for a bad file.

    A plain (not async) function: Gradio runs it in its thread pool, so a large upload never holds
    the event loop. The pixels are never decoded: only the text chunks (or EXIF) are read.
    """
    if not path:
        return "", [], ""
    try:
        text, notes = read_embedded_text(path)
    except LikenessError as error:
        return "", [], f"⚠ {error}"
    except OSError:
        return "", [], "⚠ This file is not an image Likeness can read (PNG, JPEG or WebP)."
    if not text:
        return "", [], f"⚠ {NO_PARAMETERS}"
    parsed = parse_infotext(text)
    rows = [[key, value] for key, value in parsed.items() if not key.endswith(("-1", "-2"))]
    return text, rows, f"Read {len(rows)} parameters." + "".join(f"  \n⚠ {note}" for note in notes)


def generate_form_values(text: str, manager: PipelineManager, current: dict) -> tuple[dict, list[str]]:
    """Map parsed parameters onto Generate form fields; returns the values and what could not be used."""
    parsed = parse_infotext(text)
    values: dict = {"prompt": parsed.get("Prompt", ""), "negative_prompt": parsed.get("Negative prompt", "")}
    notes = []

    def number(key: str, cast):
        if key not in parsed:
            return None
        try:
            value = float(parsed[key])
            if not math.isfinite(value):
                raise ValueError(value)
            return cast(value)
        except ValueError:  # "abc", "nan", "1e999"
            notes.append(f"{key} {parsed[key]!r} is not a number; left as it was.")
            return None

    for field, key, cast in (("steps", "Steps", int), ("cfg_scale", "CFG scale", float), ("seed", "Seed", int),
                             ("width", "Size-1", int), ("height", "Size-2", int)):
        value = number(key, cast)
        if value is not None:
            values[field] = value
    if "Sampler" in parsed:
        values["sampler"] = sampler_from_infotext(parsed["Sampler"], parsed.get("Schedule type"))
    vae = parsed.get("VAE dtype", "").split(" ")[0].rstrip(",")
    if vae in VAE_CHOICES:
        values["vae_dtype"] = vae
    if "Model" in parsed:
        names = {e.name for e in manager.models() if e.usable}
        by_stem = {name.rsplit("/", 1)[-1]: name for name in names}
        model = parsed["Model"] if parsed["Model"] in names else by_stem.get(parsed["Model"])
        if model:
            values["model"] = model
        else:
            notes.append(f"Model {parsed['Model']!r} is not installed; kept {current.get('model')!r}.")
    if "Lora hashes" in parsed:  # the tags come back with the prompt; say which files differ from the image's
        notes += lora_hash_notes(parsed["Lora hashes"], manager)
    return values, notes


def lora_hash_notes(value: str, manager: PipelineManager) -> list[str]:
    """One note per LoRA of the image that is missing here or whose local file has another hash."""
    local = {entry.name: entry for entry in manager.loras()}
    notes = []
    for name, digest in parse_infotext_hashes(value).items():
        entry = local.get(name)
        if entry is None:
            notes.append(f"LoRA {name!r} is not in {manager.config.models_dir / 'Lora'}; its tag will fail until you add it.")
        elif entry.usable and lora_hash(entry.path) != digest:
            notes.append(f"LoRA {name!r} here has hash {lora_hash(entry.path)}, the image's was {digest}: another version of the file.")
    return notes


def build(manager: PipelineManager, generate_form: dict, tabs: gr.Tabs, generate_tab_id: str) -> dict:
    with gr.Row():
        with gr.Column():
            # A file, not gr.Image: Gradio would decode (and fail on) the upload before our checks see it.
            upload = gr.File(label="Image (PNG, JPEG or WebP)", type="filepath", file_types=["image"], elem_id="png_upload")
        with gr.Column():
            message = gr.Markdown(elem_id="png_message")
            table = gr.Dataframe(headers=["parameter", "value"], interactive=False, wrap=True, elem_id="png_table")
            raw = gr.Textbox(label="Parameters text", lines=4, interactive=False, elem_id="png_raw")
            with gr.Row():
                send = gr.Button("Send to Generate", variant="primary", elem_id="png_send")
                send_img2img = gr.Button("Send to img2img", elem_id="png_send_img2img")
                send_inpaint = gr.Button("Send to inpaint", elem_id="png_send_inpaint")

    upload.change(read_image_parameters, upload, [raw, table, message], api_name="png_info")
    fields = list(generate_form)

    def send_to_generate(text, *current_values):
        current = dict(zip(fields, current_values))
        if not text:
            return ("⚠ Nothing to send: drop an image with generation parameters first.", gr.update(), *[gr.update()] * len(fields))
        values, notes = generate_form_values(text, manager, current)
        message_text = "Sent to Generate." + "".join(f"  \n⚠ {n}" for n in notes)
        updates = [gr.update(value=values[name]) if name in values else gr.update() for name in fields]
        return (message_text, gr.Tabs(selected=generate_tab_id), *updates)

    send.click(send_to_generate, [raw, *generate_form.values()], [message, tabs, *generate_form.values()], api_visibility="private")
    return {"upload": upload, "raw": raw, "send_img2img": send_img2img, "send_inpaint": send_inpaint}
