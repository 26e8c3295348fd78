"""The PNG Info tab: read the generation parameters of an image and send them to Generate."""
from __future__ import annotations

import math
from dataclasses import dataclass

import gradio as gr

from pipelines.choices import HIRES_SAME_CHECKPOINT, HIRES_SAME_SAMPLER, HIRES_SAME_SCHEDULE, REFINER_NONE, SCHEDULE_TYPES
from pipelines.errors import LikenessError
from pipelines.families import Family
from pipelines.images import read_embedded_text
from pipelines.infotext import MODEL_TITLE, parse_infotext
from pipelines.lora.files import lora_hash
from pipelines.lora.tags import parse_infotext_hashes
from pipelines.manager import PipelineManager
from pipelines.samplers import find_schedule_type, sampler_from_infotext, split_sampler_name
from pipelines.request import MAX_REFINER_SWITCH, MIN_REFINER_SWITCH
from pipelines.upscale import list_upscalers
from pipelines.vae import VAE_CHOICES
from pipelines.vae_files import VAE_AUTOMATIC, find_vae

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
    rows = parameter_rows(parse_infotext(text))
    return text, rows, f"Read {len(rows)} parameters." + "".join(f"  \n⚠ {note}" for note in notes)


def parameter_rows(parsed: dict) -> list[list[str]]:
    """[parameter, value] rows of parsed infotext, without the split-size helpers ("Size-1", "Size-2")."""
    return [[key, value] for key, value in parsed.items() if not key.endswith(("-1", "-2"))]


# Infotext keys that describe a run rather than set it: nothing to apply, listed as "recorded only".
RECORD_ONLY = ("Model hash", "VAE hash", "Version", "Stage times", "Caches", "Denoiser dtype", "Face hash", "Lora hashes", "TI hashes")
# The form field each applied infotext key sets ("Denoising strength" only belongs to Generate with hires fix).
KEY_FIELDS = {"Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "CFG scale": "cfg_scale", "Seed": "seed",
              "Size": "width", "Sampler": "sampler", "Schedule type": "schedule_type", "VAE dtype": "vae_dtype", "Model": "model",
              "Hires upscale": "hires_scale", "Hires upscaler": "hires_upscaler", "Hires steps": "hires_steps",
              "Denoising strength": "hires_denoising", "Clip skip": "clip_skip", "Variation seed": "subseed",
              "Variation seed strength": "subseed_strength", "Tiling": "tiling", "Hires prompt": "hires_prompt",
              "Hires negative prompt": "hires_negative_prompt", "VAE": "vae", "Hires sampler": "hires_sampler",
              "Hires schedule type": "hires_schedule_type", "Seed resize from": "seed_resize_from_w", "Hires checkpoint": "hires_checkpoint",
              "Refiner": "refiner_checkpoint", "Refiner switch at": "refiner_switch_at", "Refiner switch by sampling steps": "refiner_switch_at",
              "Token merging ratio": "token_merging_ratio"}

NUMBERS = (("steps", "Steps", int), ("cfg_scale", "CFG scale", float), ("seed", "Seed", int), ("width", "Size-1", int), ("height", "Size-2", int),
           ("clip_skip", "Clip skip", int), ("subseed", "Variation seed", int), ("subseed_strength", "Variation seed strength", float),
           ("token_merging_ratio", "Token merging ratio", float))
# Hires fix numbers, read only when the image had hires fix ("Denoising strength" alone is img2img's).
HIRES_NUMBERS = (("hires_scale", "Hires upscale", float), ("hires_steps", "Hires steps", int), ("hires_denoising", "Denoising strength", float))


def generate_form_values(text: str, manager: PipelineManager, current: dict) -> tuple[dict, list[str]]:
    """Map parsed parameters onto Generate form fields; returns the values and what could not be used."""
    parsed = parse_infotext(text)
    # The PNG holds the finished prompts: styles of this folder found in them are chosen again and their words taken
    # out (A1111's paste does the same); none found clears the choice, so no style is added to the prompt twice.
    prompt, negative = parsed.get("Prompt", ""), parsed.get("Negative prompt", "")
    styles, prompt, negative = manager.styles.extract(prompt, negative) if manager is not None else ([], prompt, negative)
    values: dict = {"prompt": prompt, "negative_prompt": negative, "styles": styles}
    notes = [f"Styles found in the prompt: {', '.join(styles)}; chosen in Styles, and the prompt shows the rest."] if styles else []

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

    for field, key, cast in NUMBERS + (HIRES_NUMBERS if "Hires upscale" in parsed else ()):
        value = number(key, cast)
        if value is not None:
            values[field] = value
    if "Clip skip" not in parsed:  # A1111 writes it only when it is not 1, and its paste sets 1 without it
        values["clip_skip"] = 1
    if "Variation seed strength" not in parsed:  # written only when on: none means off
        values["subseed_strength"] = 0.0
    if "Token merging ratio" not in parsed:  # likewise (A1111's key)
        values["token_merging_ratio"] = 0.0
    values |= seed_resize_values(parsed.get("Seed resize from"), notes)
    values["tiling"] = parsed.get("Tiling", "").strip().lower() == "true"  # A1111 writes "Tiling: True" only when on
    # Written only when they differ from the main prompts: absent means "the main prompt" (A1111's paste clears them too).
    values["hires_prompt"], values["hires_negative_prompt"] = parsed.get("Hires prompt", ""), parsed.get("Hires negative prompt", "")
    vae = parsed.get("VAE dtype", "").split(" ")[0].rstrip(",:")  # "fp32: this VAE overflows in fp16 (force_upcast)" -> fp32
    if vae in VAE_CHOICES:
        values["vae_dtype"] = vae
    families = {e.name: e.family for e in manager.models() if e.usable} if manager is not None else {}
    if "Model" in parsed:
        by_stem = {name.rsplit("/", 1)[-1]: name for name in families}
        model = parsed["Model"] if parsed["Model"] in families else by_stem.get(parsed["Model"])
        if model:
            values["model"] = model
        else:
            notes.append(f"Model {parsed['Model']!r} is not installed; kept {current.get('model')!r}.")
    # The model the form will show decides what "Euler" + "Simple" is: FLUX.1's flow-match Euler (Forge) or A1111's.
    family = families.get(values.get("model", current.get("model")))
    if "Sampler" in parsed:
        values["sampler"], values["schedule_type"], schedule_note = sampler_from_infotext(parsed["Sampler"], parsed.get("Schedule type"), family)
        notes += [schedule_note] if schedule_note else []
    values |= hires_values(parsed, manager, notes, family)
    values |= refiner_values(parsed, manager, notes)
    values |= vae_values(parsed, manager, notes)
    if "Lora hashes" in parsed:  # the tags come back with the prompt; say which files differ from the image's
        notes += lora_hash_notes(parsed["Lora hashes"], manager)
    return values, notes


def seed_resize_values(text: str | None, notes: list[str]) -> dict:
    """A1111's `Seed resize from: 512x768` (written only when on; none = off, as its paste reads it)."""
    if text is None:
        return {"seed_resize_from_w": 0, "seed_resize_from_h": 0}
    width, _, height = text.strip().partition("x")
    if not (width.isdigit() and height.isdigit()):
        notes.append(f"Seed resize from {text!r} is not WIDTHxHEIGHT; left as it was.")
        return {}
    return {"seed_resize_from_w": int(width), "seed_resize_from_h": int(height)}


def vae_values(parsed: dict, manager: PipelineManager, notes: list[str]) -> dict:
    """The image's SD VAE if it is in models/VAE here; none written means the model's own (A1111's paste too)."""
    name = parsed.get("VAE")
    if name is None:
        return {"vae": VAE_AUTOMATIC}
    try:
        path = find_vae(name, manager.config.models_dir, manager.config.allow_pickle)
    except LikenessError:
        notes.append(f"VAE {name!r} is not in {manager.config.models_dir / 'VAE'}; kept the one chosen.")
        return {}
    return {"vae": path.name if path is not None else VAE_AUTOMATIC}


def hires_values(parsed: dict, manager: PipelineManager, notes: list[str], family: Family | None = None) -> dict:
    """Hires fix as the image had it: off (scale 1) when it had none, as A1111's paste does; its upscaler if installed."""
    if "Hires upscale" not in parsed:
        return {"hires_scale": 1.0, "hires_sampler": HIRES_SAME_SAMPLER, "hires_schedule_type": HIRES_SAME_SCHEDULE,
                "hires_checkpoint": HIRES_SAME_CHECKPOINT}
    values = hires_sampling_values(parsed, notes, family) | hires_checkpoint_values(parsed.get("Hires checkpoint"), manager, notes)
    name = parsed.get("Hires upscaler")
    if name is None:
        return values
    if name in {choice.name for choice in list_upscalers(manager.config.models_dir, manager.config.allow_pickle)}:
        return values | {"hires_upscaler": name}
    notes.append(f"Hires upscaler {name!r} is not installed; kept the one chosen.")
    return values


def hires_checkpoint_values(text: str | None, manager: PipelineManager, notes: list[str]) -> dict:
    """A1111's `Hires checkpoint: name [hash]` (written only when another model ran the hires pass): that model when it
    is installed, else "Use same checkpoint" with a note."""
    if not text:
        return {"hires_checkpoint": HIRES_SAME_CHECKPOINT}
    title = MODEL_TITLE.match(text.strip())
    name = title.group("name") if title else text.strip()
    if manager is not None and name in manager.model_names():
        return {"hires_checkpoint": name}
    notes.append(f"Hires checkpoint {name!r} is not installed; {HIRES_SAME_CHECKPOINT} was chosen.")
    return {"hires_checkpoint": HIRES_SAME_CHECKPOINT}


def refiner_values(parsed: dict, manager: PipelineManager, notes: list[str]) -> dict:
    """A1111's `Refiner: name [hash]` and `Refiner switch at` (written only when a refiner ran; none = None, as its
    paste reads it). A1111 switches by the noise level unless `Refiner switch by sampling steps` says otherwise: then
    the picture may differ a little here, where the switch is by steps (a note says so)."""
    text = parsed.get("Refiner")
    if not text:
        return {"refiner_checkpoint": REFINER_NONE}
    title = MODEL_TITLE.match(text.strip())
    name = title.group("name") if title else text.strip()
    values = {"refiner_checkpoint": name}
    if manager is not None and name not in manager.model_names():
        notes.append(f"Refiner {name!r} is not installed; {REFINER_NONE} was chosen.")
        values = {"refiner_checkpoint": REFINER_NONE}
    try:
        switch_at = float(parsed.get("Refiner switch at", "0.8"))
        if not MIN_REFINER_SWITCH <= switch_at <= MAX_REFINER_SWITCH:
            raise ValueError(switch_at)
        values["refiner_switch_at"] = switch_at
    except ValueError:
        notes.append(f"Refiner switch at {parsed['Refiner switch at']!r} is not a number from {MIN_REFINER_SWITCH:g} to {MAX_REFINER_SWITCH:g}; "
                     "left as it was.")
    if parsed.get("Refiner switch by sampling steps", "").strip().lower() != "true":
        notes.append("The image's refiner switched at a noise level (A1111's default); Likeness switches after that share of the steps, "
                     "so the picture may differ a little.")
    return values


def hires_sampling_values(parsed: dict, notes: list[str], family: Family | None = None) -> dict:
    """A1111 writes `Hires sampler` and `Hires schedule type` only when they differ from the first pass's: none written
    is "Use same ..."."""
    sampler, schedule = parsed.get("Hires sampler"), parsed.get("Hires schedule type")
    values = {"hires_sampler": HIRES_SAME_SAMPLER, "hires_schedule_type": HIRES_SAME_SCHEDULE}
    if sampler:
        values["hires_sampler"], schedule_type, note = sampler_from_infotext(sampler, schedule, family)
        if schedule or split_sampler_name(sampler)[1]:  # written, or in the name ("DPM++ 2M Karras")
            values["hires_schedule_type"] = schedule_type
        notes += [f"Hires: {note}"] if note else []
    elif schedule:
        found = find_schedule_type(schedule)
        if found is None:
            notes.append(f"Hires schedule type {schedule!r} is not available here; {HIRES_SAME_SCHEDULE} was chosen.")
        else:
            values["hires_schedule_type"] = found
    return values


def unapplied_keys(text: str, takes) -> tuple[list[str], list[str]]:
    """(settings the image had that the form `takes` cannot set, keys that only record the run), as 'key: value'.

    A key with its own note (a model not installed, a value that is not a number) is counted as applied:
    the note already says what happened to it.
    """
    parsed = parse_infotext(text)
    settings, records = [], []
    for key, value in parsed.items():
        if key in ("Prompt", "Negative prompt") or key.endswith(("-1", "-2")):
            continue
        if key in RECORD_ONLY:
            records.append(key)
            continue
        field = KEY_FIELDS.get(key)
        if key == "Denoising strength" and "Hires upscale" not in parsed:
            field = "denoising_strength"  # img2img's strength
        if field is None or field not in takes:
            settings.append(f"{key}: {value}")
    return settings, records


def sent_report(where: str, notes: list[str], text: str, takes) -> str:
    """The message shown where the user lands after a Send: what was sent, each warning, then every
    field of the image that was not applied (and those that only record the run)."""
    settings, records = unapplied_keys(text, takes) if text else ([], [])
    lines = [f"Sent to {where}"] + [f"⚠ {note}" for note in notes]
    if settings:
        lines.append("⚠ Not applied (no such setting here): " + "; ".join(settings))
    if records:
        lines.append("Recorded only, nothing to set: " + ", ".join(records))
    return "  \n".join(lines)


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


def wire_send_to_generate(manager: PipelineManager, generate_form: dict, tabs: gr.Tabs, generate_tab_id: str,
                          button: gr.Button, text: gr.Textbox, message: gr.Markdown, nothing_to_send: str,
                          landing: gr.Markdown | None = None) -> None:
    """`button` puts the parameters text in `text` onto the Generate form and shows Generate. What could
    not be applied is said where the user lands: `landing` (Generate's readout) when given, else `message`;
    `message` (where the user was) keeps a short "Sent" and says `nothing_to_send` when there is nothing.
    PNG Info and History both send this way."""
    fields = list(generate_form)
    landed = [landing] if landing is not None else []

    def send_to_generate(text, *current_values):
        current = dict(zip(fields, current_values))
        if not text:  # the user stays where they are: say it there
            return (nothing_to_send, gr.update(), *[gr.update()] * len(landed), *[gr.update()] * len(fields))
        values, notes = generate_form_values(text, manager, current)
        report = sent_report("Generate.", notes, text, fields)
        updates = [sent_update(name, values) for name in fields]
        here = "Sent to Generate." if landed else report
        return (here, gr.Tabs(selected=generate_tab_id), *[report] * len(landed), *updates)

    button.click(send_to_generate, [text, *generate_form.values()], [message, tabs, *landed, *generate_form.values()],
                 api_visibility="private")


def sent_update(name: str, values: dict):
    """The update that puts a sent value in its form field. A schedule type comes with every choice: the dropdown
    holds the choices of the sampler shown before, which may lack it (the sampler's own change narrows them again)."""
    if name not in values:
        return gr.update()
    if name == "schedule_type":
        return gr.update(value=values[name], choices=list(SCHEDULE_TYPES))
    if name == "hires_schedule_type":
        return gr.update(value=values[name], choices=[HIRES_SAME_SCHEDULE, *SCHEDULE_TYPES])
    return gr.update(value=values[name])


@dataclass
class ParametersPanel:
    table: gr.Dataframe
    raw: gr.Textbox
    send: gr.Button  # to Generate
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_extras: gr.Button


def parameters_panel(prefix: str, raw_lines: int) -> ParametersPanel:
    """An image's parameters (table and text) with its Send buttons, as PNG Info and History show them; elem_ids
    `<prefix>_table`, `<prefix>_raw`, `<prefix>_send`, `<prefix>_send_img2img`, `<prefix>_send_inpaint`, `<prefix>_send_extras`."""
    table = gr.Dataframe(headers=["parameter", "value"], interactive=False, wrap=True, elem_id=f"{prefix}_table")
    raw = gr.Textbox(label="Parameters text", lines=raw_lines, interactive=False, elem_id=f"{prefix}_raw")
    with gr.Row():  # the four on one line in PNG Info's column (Gradio's 160 px minimum wraps the fourth alone)
        send = gr.Button("Send to Generate", variant="primary", elem_id=f"{prefix}_send", min_width=110)
        send_img2img = gr.Button("Send to img2img", elem_id=f"{prefix}_send_img2img", min_width=110)
        send_inpaint = gr.Button("Send to inpaint", elem_id=f"{prefix}_send_inpaint", min_width=110)
        send_extras = gr.Button("Send to Extras", elem_id=f"{prefix}_send_extras", min_width=110)
    return ParametersPanel(table, raw, send, send_img2img, send_inpaint, send_extras)


def build(manager: PipelineManager, generate_form: dict, tabs: gr.Tabs, generate_tab_id: str, generate_message: gr.Markdown | None = None) -> dict:
    with gr.Row():
        with gr.Column():
            # A file, not gr.Image: Gradio would decode (and fail on) the upload before our checks see it.
            upload = gr.File(label="Image (PNG, JPEG or WebP)", type="filepath", file_types=["image"], elem_id="png_upload")
        with gr.Column():
            message = gr.Markdown(elem_id="png_message")
            panel = parameters_panel("png", raw_lines=4)
    raw = panel.raw

    upload.change(read_image_parameters, upload, [raw, panel.table, message], api_name="png_info")
    wire_send_to_generate(manager, generate_form, tabs, generate_tab_id, panel.send, raw, message,
                          nothing_to_send="⚠ Nothing to send: drop an image with generation parameters first.", landing=generate_message)
    return {"upload": upload, "raw": raw, "send_img2img": panel.send_img2img, "send_inpaint": panel.send_inpaint,
            "send_extras": panel.send_extras, "message": message}
