"""The generation controls shared by the Generate and img2img tabs, built once here and laid out by each tab.

Each builder lays its components out inside the caller's current Gradio context and returns them
keyed by the `GenerationRequest` field they edit, so a tab's handler receives named values
(`inputs_kwargs`), never a positional list. `prefix` keeps the element ids of two tabs apart
(Generate uses "", img2img "i2i_"): `#prompt` and `#i2i_prompt`.

    model, demo_note = model_row(manager, chosen, is_demo, prefix)
    fields, lora_picker, counters = prompt_fields(manager, last, prefix, model_name)
    fields |= sampling_fields(manager, settings, last, family, defaults, prefix)
    fields |= hires_fields(manager, last, prefix, family) | refiner_fields(manager, last, prefix, family) | detailer_fields(last, prefix)
    wire_form(manager, model, fields, lora_picker, random_seed, reuse_seed, last_seed, token_counters=counters)
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.catalog import DEMO_MODEL_NAME, StartingValues
from pipelines.errors import LikenessError
from pipelines.families import Family
from pipelines.lora.tags import extract_lora_tags
from pipelines.manager import PipelineManager
from pipelines.prompts.styles import STYLES_FILE
from pipelines.request import (DEEPCACHE_SCHEDULES, FLUX_CACHE_CHOICES, MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_CFG, MAX_CLIP_SKIP,
                               MAX_HIRES_SCALE, MAX_REFINER_SWITCH, MAX_SEED, MAX_STEPS, MAX_TOKEN_MERGING, MIN_HIRES_SCALE, MIN_REFINER_SWITCH,
                               GenerationRequest)
from pipelines.choices import HIRES_SAME_CHECKPOINT, HIRES_SAME_SAMPLER, HIRES_SAME_SCHEDULE, REFINER_NONE, SCHEDULE_TYPES
from pipelines.samplers import AUTOMATIC, sampler_names, schedule_names
from pipelines.upscale import list_upscalers
from pipelines.vae_files import VAE_AUTOMATIC, vae_names
from pipelines.vae import VAE_CHOICES
from ui import inputs
from ui.last_used import vae_rule_info

FAMILY_SHORT = {Family.SD15: "SD 1.5", Family.SDXL: "SDXL", Family.FLUX: "FLUX.1"}
# Request fields that are whole numbers: Gradio numbers arrive as floats.
WHOLE_FIELDS = ("steps", "seed", "width", "height", "batch_size", "batch_count", "deepcache_interval", "deepcache_branch",
                "hires_steps", "face_detail_steps", "mask_blur", "inpaint_full_res_padding", "clip_skip", "subseed")
HIRES_FIELDS = ("hires_scale", "hires_upscaler", "hires_steps", "hires_denoising", "hires_prompt", "hires_negative_prompt")
DETAILER_FIELDS = ("face_detail", "face_detail_strength", "face_detail_steps", "face_detail_prompt", "face_detail_faces")


def model_choices(manager: PipelineManager) -> list[tuple[str, str]]:
    return [(e.name + (" — demo, not a real model" if e.format == "demo" else ""), e.name) for e in manager.models() if e.usable]


def lora_choices(manager: PipelineManager) -> list[tuple[str, str]]:
    """The usable LoRAs, of any family, for the picker: ("name (family)", name), after an empty choice."""
    loras = sorted((e for e in manager.loras() if e.usable), key=lambda e: e.name.lower())
    return [("", "")] + [(f"{e.name} ({FAMILY_SHORT.get(e.family, '?')})", e.name) for e in loras]


def upscaler_choices(manager: PipelineManager) -> list[tuple[str, str]]:
    """Hires upscalers as A1111 names them; a file that cannot be used says why in its label."""
    choices = list_upscalers(manager.config.models_dir, manager.config.allow_pickle)
    return [(c.name if c.usable else f"{c.name} — cannot be used: {c.problem}", c.name) for c in choices]


def upscaler_problem(manager: PipelineManager, name) -> str | None:
    """Why the chosen upscaler cannot run (checked before the job queues for the GPU); None when it can."""
    if not isinstance(name, str):
        return None  # validate_request names a wrong type
    for choice in list_upscalers(manager.config.models_dir, manager.config.allow_pickle):
        if choice.name == name:
            return None if choice.usable else f"Hires upscaler {name!r} cannot be used: {choice.problem}"
    return None  # an unknown name: the hires stage lists what there is


def check_upscaler(manager: PipelineManager, request: GenerationRequest) -> None:
    """LikenessError when hires fix is on with an upscaler file that cannot be used (before the job waits for the GPU)."""
    scale = request.hires_scale
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 1:
        if problem := upscaler_problem(manager, request.hires_upscaler):
            raise LikenessError(problem)


def add_lora_tag(prompt: str | None, name: str | None) -> str:
    """The prompt with ` <lora:name:1>` appended, unless a tag for that LoRA is already in it."""
    prompt = prompt or ""
    if not name:
        return prompt
    try:
        present = {ref.name for ref in extract_lora_tags(prompt)[1]}
    except (LikenessError, ValueError):  # a malformed tag elsewhere: fall back to a plain text check
        present = {name} if f"<lora:{name}:" in prompt or f"<lora:{name}>" in prompt else set()
    if name in present:
        return prompt
    return f"{prompt.rstrip()} <lora:{name}:1>".lstrip()


def coerce_form(values: dict) -> GenerationRequest:
    """Gradio numbers arrive as floats (or None when the box is empty); the request wants ints."""
    cleaned = dict(values)
    for name in WHOLE_FIELDS:
        if name not in cleaned:
            continue
        value = cleaned[name]
        if value is None:
            raise LikenessError(f"{name.replace('_', ' ').capitalize()} is empty; enter a number.")
        if isinstance(value, float) and value.is_integer():
            cleaned[name] = int(value)
    for name in ("cfg_scale", "denoising_strength", "hires_scale", "hires_denoising", "face_detail_strength", "subseed_strength",
                 "refiner_switch_at", "token_merging_ratio"):
        if name in cleaned and cleaned[name] is None:
            raise LikenessError(f"{name.replace('_', ' ').capitalize().replace('Cfg', 'CFG')} is empty; enter a number.")
    if "styles" in cleaned:  # a multiselect sends a list (or None when cleared)
        cleaned["styles"] = tuple(cleaned["styles"]) if isinstance(cleaned["styles"], list) else cleaned["styles"] or ()
    return GenerationRequest(**cleaned)


def model_row(manager: PipelineManager, chosen: str, prefix: str = "") -> gr.Dropdown:
    with gr.Row():
        return gr.Dropdown(model_choices(manager), value=chosen, label="Model", scale=3, elem_id=f"{prefix}model", allow_custom_value=True)


@dataclass
class FormExtras:
    """Controls that edit no request field themselves but act on those that do."""

    lora_picker: gr.Dropdown
    random_seed: gr.Button
    reuse_seed: gr.Button


def prompt_fields(manager: PipelineManager, last: dict, prefix: str = "", model_name: str = "") -> tuple[dict, gr.Dropdown, tuple]:
    """Prompt, negative prompt (each with A1111's token counter under it), the LoRA picker and the prompt styles (with
    saving the prompts as a style). Returns the fields, the LoRA picker and the two counters (`wire_form` wires them)."""
    prompt = gr.Textbox(label="Prompt", lines=3, value=last.get("prompt", ""), elem_id=f"{prefix}prompt", placeholder="a portrait photo of …")
    prompt_tokens = token_counter(manager, model_name, last.get("prompt", ""), last.get("steps"), f"{prefix}prompt_tokens")
    negative = gr.Textbox(label="Negative prompt", lines=2, value=last.get("negative_prompt", ""), elem_id=f"{prefix}negative_prompt")
    negative_tokens = token_counter(manager, model_name, last.get("negative_prompt", ""), last.get("steps"), f"{prefix}negative_prompt_tokens")
    with gr.Row():
        lora_picker = gr.Dropdown(lora_choices(manager), value="", label="LoRA", elem_id=f"{prefix}lora_picker", scale=1,
                                  info="adds <lora:name:1> to the prompt; edit the weight there")
        # A custom value: a remembered style since removed from the file is named by the run, not a page error.
        styles = gr.Dropdown(manager.styles.names(), value=list(last.get("styles", ())), multiselect=True, label="Styles",
                             info=f"A1111's {STYLES_FILE} in the models folder; added to the prompts when you generate",
                             elem_id=f"{prefix}styles", allow_custom_value=True, scale=1)
    with gr.Accordion("Save a style, or write the chosen styles into the prompts", open=False, elem_id=f"{prefix}style_panel"):
        with gr.Row():
            style_name = gr.Textbox(label="Style name", elem_id=f"{prefix}style_name", scale=3,
                                    placeholder="the same name replaces that style; {prompt} in the prompt marks where yours goes")
            save_style = gr.Button("Save as a style", elem_id=f"{prefix}save_style", scale=1, size="sm")
            apply_styles = gr.Button("Write into the prompts", elem_id=f"{prefix}apply_styles", scale=1, size="sm")
        style_message = gr.Markdown(elem_id=f"{prefix}style_message")
    wire_styles(manager, StyleControls(styles, style_name, save_style, apply_styles, style_message), prompt, negative)
    return {"prompt": prompt, "negative_prompt": negative, "styles": styles}, lora_picker, (prompt_tokens, negative_tokens)


def token_counter(manager: PipelineManager, model_name: str, text, steps, elem_id: str) -> gr.HTML:
    """The counter under a prompt box; its first value is read at each page load, as the box's text is the remembered one."""
    return gr.HTML(lambda: token_label(manager, model_name, text, steps), elem_id=elem_id, elem_classes=["token-counter"])


def token_label(manager: PipelineManager, model_name, text, steps) -> str:
    """'12/75' as A1111 shows it (the chunks of 75 tokens the prompt fills; T5's 512 on FLUX.1), with what it counts in
    its tooltip; empty when the model cannot say (unknown, or its tokenizer files are missing)."""
    steps = steps if isinstance(steps, (int, float)) and 1 <= steps <= 1000 else 20
    count = manager.prompt_tokens(model_name, text if isinstance(text, str) else "", int(steps)) if model_name else None
    if count is None:
        return ""
    if count.encoder == "T5":
        why = f"T5 reads {count.limit} tokens; the rest is cut" if count.over else f"tokens T5 reads of its {count.limit}"
    else:
        why = f"tokens in {count.limit // 75} chunk{'s' if count.limit > 75 else ''} of 75 (a longer prompt takes another chunk)"
    classes = "token-count token-over" if count.over else "token-count"
    return f'<span class="{classes}" title="{why}">{count.label()}</span>'


def wire_token_counters(manager: PipelineManager, model: gr.Dropdown, fields: dict, counters: tuple) -> None:
    """Each counter follows its box, the model (another tokenizer) and the steps (prompt editing's texts), outside the
    generation queue (a count never waits behind a run) and only for the last change while typing."""
    for box, counter in zip((fields["prompt"], fields["negative_prompt"]), counters):
        gr.on([box.change, model.change, fields["steps"].change], lambda name, text, steps: token_label(manager, name, text, steps),
              [model, box, fields["steps"]], counter, queue=False, show_progress="hidden", trigger_mode="always_last",
              api_visibility="private")


@dataclass
class StyleControls:
    styles: gr.Dropdown
    name: gr.Textbox
    save: gr.Button
    apply: gr.Button  # A1111's "apply the selected styles to the prompts"
    message: gr.Markdown


def wire_styles(manager: PipelineManager, controls: StyleControls, prompt: gr.Textbox, negative: gr.Textbox) -> None:
    """The style list is read again when opened (a style saved elsewhere, or the file edited, shows); Save writes
    the prompts under the name and selects nothing new (a saved style is for the next prompt); Write puts the chosen
    styles' words into the prompt boxes and clears the choice, so they are not added a second time."""
    def choices(chosen):
        return gr.update(choices=manager.styles.names(), value=chosen)

    def save_style(style_name, prompt_text, negative_text, chosen):
        try:
            text = manager.styles.save(style_name, prompt_text, negative_text)
        except (LikenessError, OSError) as error:
            return f"⚠ {error}", gr.update()
        return text, gr.update(choices=manager.styles.names(), value=chosen)

    def write_styles(chosen, prompt_text, negative_text):
        if not chosen:
            return "⚠ Choose one or more styles first.", gr.update(), gr.update(), gr.update()
        try:
            written = manager.styles.apply(chosen, prompt_text or "", negative_text or "")
        except LikenessError as error:
            return f"⚠ {error}", gr.update(), gr.update(), gr.update()
        return f"Wrote {', '.join(chosen)} into the prompts.", written[0], written[1], []

    controls.styles.focus(choices, controls.styles, controls.styles, api_visibility="private", queue=False)
    controls.save.click(save_style, [controls.name, prompt, negative, controls.styles], [controls.message, controls.styles],
                        api_visibility="private", queue=False)
    controls.apply.click(write_styles, [controls.styles, prompt, negative], [controls.message, prompt, negative, controls.styles],
                         api_visibility="private", queue=False)


def vae_dropdown(manager: PipelineManager, chosen: str, prefix: str = "") -> gr.Dropdown:
    """A1111's SD VAE: Automatic (the model's own) or a file of models/VAE; the list is read again each time it opens."""
    names = vae_names(manager.config.models_dir, manager.config.allow_pickle)
    # Any value (allow_custom_value): Gradio would check an API client's value against the list the page was built with,
    # so a file added since would be refused with its message; the request checks it against models/VAE and names it.
    dropdown = gr.Dropdown(names, value=chosen if chosen in names else VAE_AUTOMATIC, label="SD VAE", scale=1, allow_custom_value=True,
                           info="Automatic = the model's own; files from models/VAE", elem_id=f"{prefix}vae")
    dropdown.focus(lambda value: gr.Dropdown(choices=vae_names(manager.config.models_dir, manager.config.allow_pickle)), dropdown, dropdown,
                   queue=False, api_visibility="private")
    return dropdown


def sampling_fields(manager: PipelineManager, settings, last: dict, family: Family, start: StartingValues,
                    prefix: str = "") -> tuple[dict, gr.Button, gr.Button]:
    """Steps, CFG, size, sampler, seed, batch, VAE precision and the cache panels."""
    spec = family.spec
    with gr.Row():
        steps = inputs.Slider(1, MAX_STEPS, value=last.get("steps", start.steps), step=1, label="Steps", elem_id=f"{prefix}steps")
        cfg = inputs.Slider(0, MAX_CFG, value=last.get("cfg_scale", start.cfg), step=0.5, label="CFG scale", elem_id=f"{prefix}cfg")
    with gr.Row():
        width = inputs.Slider(64, 2048, value=last.get("width", start.size[0]), step=8, label="Width", elem_id=f"{prefix}width")
        height = inputs.Slider(64, 2048, value=last.get("height", start.size[1]), step=8, label="Height", elem_id=f"{prefix}height")
        swap = gr.Button("⇅", elem_id=f"{prefix}swap_size", scale=0, min_width=44, size="sm")  # A1111's "Swap width and height"
    # The raw values, swapped as they stand (preprocess=False): a width the form would refuse still moves, and is refused at Generate.
    swap.click(lambda w, h: (h, w), [width, height], [width, height], queue=False, preprocess=False, api_visibility="private")
    with gr.Row():
        sampler_value = last.get("sampler", spec.default_sampler)
        sampler = gr.Dropdown(sampler_names(family), value=sampler_value, label="Sampler", allow_custom_value=True,  # as below
                              elem_id=f"{prefix}sampler")
        # A1111's: Automatic = the sampler's own (Karras for DPM++ 2M); the README says what each one is for. Its list
        # follows the sampler in the page; an API client's value is checked by the request (with its message), not by
        # Gradio against the list the page was built with (`allow_custom_value`): Karras with DPM++ 2M is fine there.
        schedule_type = gr.Dropdown(schedule_names(family, sampler_value), value=last.get("schedule_type", AUTOMATIC), label="Schedule type",
                                    allow_custom_value=True, elem_id=f"{prefix}schedule_type")
        seed = inputs.Number(value=last.get("seed", -1), precision=0, label="Seed (-1 = random)", minimum=-1, maximum=MAX_SEED, elem_id=f"{prefix}seed")
        random_seed = gr.Button("Random", elem_id=f"{prefix}random_seed", min_width=80, scale=0, size="sm")
        reuse_seed = gr.Button("Reuse last", elem_id=f"{prefix}reuse_seed", min_width=96, scale=0, size="sm")  # one line
    with gr.Accordion("Variation seed, resize seed from (A1111's Extra)", open=False, elem_id=f"{prefix}variation_panel"):
        with gr.Row():
            subseed = inputs.Number(value=last.get("subseed", -1), precision=0, label="Variation seed (-1 = random)", minimum=-1,
                                    maximum=MAX_SEED, elem_id=f"{prefix}subseed")
            subseed_strength = inputs.Slider(0, 1, value=last.get("subseed_strength", 0.0), step=0.01, label="Variation strength",
                                             info="0 = off; small values: the same picture, a little changed (SD 1.5, SDXL, FLUX.1)",
                                             elem_id=f"{prefix}subseed_strength")
        with gr.Row():  # A1111's: the seed's noise drawn at this size, centred: its composition kept at another size
            seed_resize_w = inputs.Slider(0, 2048, value=last.get("seed_resize_from_w", 0), step=8, label="Resize seed from width",
                                          info="0 = off; the size the seed was first used at", elem_id=f"{prefix}seed_resize_from_w")
            seed_resize_h = inputs.Slider(0, 2048, value=last.get("seed_resize_from_h", 0), step=8, label="Resize seed from height",
                                          info="both set, and another size than the picture's", elem_id=f"{prefix}seed_resize_from_h")
    with gr.Row():
        batch_size = inputs.Slider(1, MAX_BATCH_SIZE, value=last.get("batch_size", 1), step=1, label="Batch size", elem_id=f"{prefix}batch_size")
        batch_count = inputs.Slider(1, MAX_BATCH_COUNT, value=last.get("batch_count", 1), step=1, label="Batch count", elem_id=f"{prefix}batch_count")
        # A1111 keeps it in Settings (often in the quick settings bar); here it sits with the run's other numbers.
        clip_skip = inputs.Slider(1, MAX_CLIP_SKIP, value=last.get("clip_skip", 1), step=1, label="Clip skip",
                                  info="SD 1.5; 1 = last layer", elem_id=f"{prefix}clip_skip")
        tiling = gr.Checkbox(value=bool(last.get("tiling", False)), label="Tiling", info="a picture that repeats seamlessly (SD 1.5, SDXL)",
                             elem_id=f"{prefix}tiling")
    with gr.Row():
        vae_dtype = gr.Radio(list(VAE_CHOICES), value=settings.vae_dtype, label="VAE precision", scale=3,
                             info=vae_rule_info(settings.vae_dtype, manager.vae_auto_brief()), elem_id=f"{prefix}vae_dtype")
        vae = vae_dropdown(manager, last.get("vae", VAE_AUTOMATIC), prefix)
    with gr.Accordion("DeepCache (SD 1.5 / SDXL)", open=False):
        with gr.Row():
            deepcache_interval = inputs.Slider(1, 10, value=last.get("deepcache_interval", 1), step=1, label="Interval N (1 = off)",
                                               info="one full UNet step, then N-1 cached", elem_id=f"{prefix}deepcache_interval")
            deepcache_branch = inputs.Slider(0, 8, value=last.get("deepcache_branch", 0), step=1, label="Branch",
                                             info="layers on the shallow path: 0 = fastest; higher = closer to the uncached image (SD 1.5 0-8, SDXL 0-5)",
                                             elem_id=f"{prefix}deepcache_branch")
            deepcache_schedule = gr.Radio(list(DEEPCACHE_SCHEDULES), value=last.get("deepcache_schedule", "uniform"),
                                          label="Schedule", elem_id=f"{prefix}deepcache_schedule")
    with gr.Accordion("Token merging (SD 1.5 / SDXL)", open=False, elem_id=f"{prefix}token_merging_panel"):
        token_merging_ratio = inputs.Slider(0, MAX_TOKEN_MERGING, value=last.get("token_merging_ratio", 0.0), step=0.05,
                                            label="Token merging ratio (0 = off)", elem_id=f"{prefix}token_merging_ratio",
                                            info="A1111's ToMe: the share of the tokens merged before each full-resolution "
                                                 "self-attention; faster at large sizes, the picture changes a little")
    with gr.Accordion("Block cache (FLUX.1)", open=False):
        with gr.Row():
            flux_cache = gr.Radio(list(FLUX_CACHE_CHOICES), value=last.get("flux_cache", "off"), label="Cache", elem_id=f"{prefix}flux_cache")
            flux_cache_threshold = inputs.Slider(0.01, 0.5, value=last.get("flux_cache_threshold", 0.08), step=0.01, label="Threshold",
                                                 info="first-block: 0.08 nearly lossless (~1.5x), 0.12 ~1.9x", elem_id=f"{prefix}flux_cache_threshold")
    with gr.Accordion("Approximate cache (trades exactness for speed)", open=False):
        approximate_cache = gr.Checkbox(
            value=last.get("approximate_cache", False), label="Resume from a similar earlier prompt", elem_id=f"{prefix}approximate_cache",
            info="A prompt close to one generated before (same model, size, sampler, steps, CFG) starts from that run's "
                 "latents after K steps and runs only the rest: faster, but the image keeps some of the earlier "
                 "composition and its seed no longer reproduces it alone. Kept on disk for this user; see the Caches tab. "
                 "Off for img2img and inpainting.")
    fields = {"steps": steps, "cfg_scale": cfg, "seed": seed, "width": width, "height": height, "sampler": sampler,
              "batch_size": batch_size, "batch_count": batch_count, "vae_dtype": vae_dtype,
              "deepcache_interval": deepcache_interval, "deepcache_branch": deepcache_branch, "deepcache_schedule": deepcache_schedule,
              "flux_cache": flux_cache, "flux_cache_threshold": flux_cache_threshold, "approximate_cache": approximate_cache,
              "clip_skip": clip_skip, "subseed": subseed, "subseed_strength": subseed_strength, "tiling": tiling, "vae": vae,
              "schedule_type": schedule_type, "seed_resize_from_w": seed_resize_w, "seed_resize_from_h": seed_resize_h,
              "token_merging_ratio": token_merging_ratio}
    return fields, random_seed, reuse_seed


def hires_fields(manager: PipelineManager, last: dict, prefix: str = "", family: Family = Family.SD15) -> dict:
    """A1111's "Hires. fix": a second pass at `scale` x the size (1 = off)."""
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{prefix}hires_panel") as panel:
        with gr.Row():
            scale = inputs.Slider(MIN_HIRES_SCALE, MAX_HIRES_SCALE, value=last.get("hires_scale", 1.0), step=0.05, label="Upscale by (1 = off)",
                                  elem_id=f"{prefix}hires_scale")
            upscaler = gr.Dropdown(upscaler_choices(manager), value=last.get("hires_upscaler", "Latent"), label="Upscaler",
                                   allow_custom_value=True,  # as the SD VAE: a file added to models/ESRGAN since the start
                                   elem_id=f"{prefix}hires_upscaler", info="ESRGAN files go in models/ESRGAN")
        with gr.Row():
            steps = inputs.Slider(0, MAX_STEPS, value=last.get("hires_steps", 0), step=1, label="Hires steps (0 = same as Steps)",
                                  elem_id=f"{prefix}hires_steps")
            denoising = inputs.Slider(0, 1, value=last.get("hires_denoising", 0.7), step=0.01, label="Denoising strength",
                                      elem_id=f"{prefix}hires_denoising")
        # A1111's "Hires sampler" / "Hires schedule type": "Use same ..." = the first pass's. Last-used values are checked
        # with hires fix off (where they are not read): one these lists lack starts as "Use same ...".
        samplers = hires_sampler_choices(family)
        last_sampler = last.get("hires_sampler") if last.get("hires_sampler") in samplers else HIRES_SAME_SAMPLER
        schedules = hires_schedule_choices(family, last_sampler)
        last_schedule = last.get("hires_schedule_type") if last.get("hires_schedule_type") in schedules else HIRES_SAME_SCHEDULE
        with gr.Row():
            hires_sampler = gr.Dropdown(samplers, value=last_sampler, label="Hires sampler", allow_custom_value=True,  # as the schedule type
                                        elem_id=f"{prefix}hires_sampler")
            hires_schedule = gr.Dropdown(schedules, value=last_schedule, label="Hires schedule type", allow_custom_value=True,
                                         elem_id=f"{prefix}hires_schedule_type")
        checkpoints = manager.hires_checkpoint_choices(family)
        last_checkpoint = last.get("hires_checkpoint") if last.get("hires_checkpoint") in checkpoints else HIRES_SAME_CHECKPOINT
        hires_checkpoint = gr.Dropdown(checkpoints, value=last_checkpoint, label="Hires checkpoint", allow_custom_value=True,
                                       elem_id=f"{prefix}hires_checkpoint",
                                       info="another model of the same family runs the hires pass (each model loads once a run)")
        with gr.Row():
            hires_prompt = gr.Textbox(value=last.get("hires_prompt", ""), label="Hires prompt", lines=2, placeholder="empty = the prompt",
                                      elem_id=f"{prefix}hires_prompt")
            hires_negative = gr.Textbox(value=last.get("hires_negative_prompt", ""), label="Hires negative prompt", lines=2,
                                        placeholder="empty = the negative prompt", elem_id=f"{prefix}hires_negative_prompt")
    # ESRGAN files dropped into the folder since the page was built show up when the panel opens (headers only: instant).
    panel.expand(lambda: gr.update(choices=upscaler_choices(manager)), None, upscaler, api_visibility="private", queue=False)
    return {"hires_scale": scale, "hires_upscaler": upscaler, "hires_steps": steps, "hires_denoising": denoising,
            "hires_prompt": hires_prompt, "hires_negative_prompt": hires_negative, "hires_sampler": hires_sampler,
            "hires_schedule_type": hires_schedule, "hires_checkpoint": hires_checkpoint}


def refiner_fields(manager: PipelineManager, last: dict, prefix: str = "", family: Family = Family.SD15) -> dict:
    """A1111's "Refiner": another model of the family takes over the denoise at "Switch at" of the steps."""
    choices = manager.refiner_choices(family)
    last_refiner = last.get("refiner_checkpoint") if last.get("refiner_checkpoint") in choices else REFINER_NONE
    with gr.Accordion("Refiner", open=False, elem_id=f"{prefix}refiner_panel"):
        with gr.Row():
            checkpoint = gr.Dropdown(choices, value=last_refiner, label="Checkpoint", allow_custom_value=True, elem_id=f"{prefix}refiner_checkpoint",
                                     info="another model of the same family takes over the last steps, then runs the hires pass")
            switch_at = inputs.Slider(MIN_REFINER_SWITCH, MAX_REFINER_SWITCH, value=last.get("refiner_switch_at", 0.8), step=0.01,
                                      label="Switch at", elem_id=f"{prefix}refiner_switch_at",
                                      info="the share of the steps before the switch: 0.8 of 20 = 16 on the model, 4 on the refiner")
    return {"refiner_checkpoint": checkpoint, "refiner_switch_at": switch_at}


def wire_refiner(manager: PipelineManager, model: gr.Dropdown, refiner: gr.Dropdown) -> None:
    """The refiner list follows the model's family (a choice the new list lacks goes back to None) and the models folder
    (read again when the list is opened)."""

    def choices_for(name, current=None, keep_value=True):
        try:
            choices = manager.refiner_choices(manager.entry(name).family)
        except (LikenessError, TypeError):
            return gr.update()
        if not keep_value:
            return gr.update(choices=choices)
        return gr.update(choices=choices, value=current if current in choices else REFINER_NONE)

    model.change(choices_for, [model, refiner], refiner, api_visibility="private", queue=False, preprocess=False)
    refiner.focus(lambda name: choices_for(name, keep_value=False), model, refiner, api_visibility="private", queue=False, preprocess=False)


def hires_sampler_choices(family: Family) -> list[str]:
    return [HIRES_SAME_SAMPLER, *sampler_names(family)]


def hires_schedule_choices(family: Family, hires_sampler) -> list[str]:
    """"Use same scheduler" and the schedule types the hires sampler can run (every one with the same sampler: the
    first pass's may be any)."""
    if hires_sampler in (None, "", HIRES_SAME_SAMPLER):
        return [HIRES_SAME_SCHEDULE, *SCHEDULE_TYPES]
    return [HIRES_SAME_SCHEDULE, *schedule_names(family, hires_sampler)]


def detailer_fields(last: dict, prefix: str = "") -> dict:
    """The face detailer: each detected face re-drawn at the model's native size (with PuLID's identity in the Face tab)."""
    with gr.Accordion("Face detailer", open=False, elem_id=f"{prefix}detailer_panel"):
        with gr.Row():
            enabled = gr.Checkbox(value=last.get("face_detail", False), label="Re-draw each face", elem_id=f"{prefix}face_detail",
                                  info="after the image: detect faces, re-generate each at full resolution, paste back")
            faces = gr.Textbox(value=last.get("face_detail_faces", ""), label="Faces (1 = largest)", placeholder="all; or e.g. 1,3",
                               elem_id=f"{prefix}face_detail_faces")
        with gr.Row():
            strength = inputs.Slider(0, 1, value=last.get("face_detail_strength", 0.4), step=0.01, label="Denoising strength",
                                     elem_id=f"{prefix}face_detail_strength")
            steps = inputs.Slider(0, MAX_STEPS, value=last.get("face_detail_steps", 0), step=1, label="Steps (0 = same as Steps)",
                                  elem_id=f"{prefix}face_detail_steps")
        prompt = gr.Textbox(value=last.get("face_detail_prompt", ""), label="Face prompt", lines=1, placeholder="empty = the main prompt",
                            elem_id=f"{prefix}face_detail_prompt")
    return {"face_detail": enabled, "face_detail_strength": strength, "face_detail_steps": steps,
            "face_detail_prompt": prompt, "face_detail_faces": faces}


@dataclass
class RunPanel:
    """The right-hand column: buttons, live readout, preview, results."""

    generate: gr.Button
    skip: gr.Button
    stop: gr.Button
    readout: gr.Markdown
    preview: gr.Image
    gallery: gr.Gallery
    forever: gr.Checkbox


def run_panel(prefix: str = "", label: str = "Generate") -> RunPanel:
    with gr.Row():
        generate = gr.Button(label, variant="primary", elem_id=f"{prefix}generate")
        skip = gr.Button("Skip", elem_id=f"{prefix}skip", scale=0, min_width=70)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}stop")
    # A1111's "Generate forever" (its Generate button's right-click menu), as a box in sight: `wire_forever` says how.
    forever = gr.Checkbox(False, label="Generate forever", info="start again each time a run ends, until unticked or Stop",
                          elem_id=f"{prefix}generate_forever")
    readout = gr.Markdown("Ready.", elem_id=f"{prefix}readout")
    preview = gr.Image(label="Preview", format="png", interactive=False, height=192, elem_id=f"{prefix}preview",
                       elem_classes=["live-preview"])  # scaled up to the box, pixelated (ui/style.py)
    # Not an upload box, though the Send buttons read it as an input. Its height follows the images: Gradio
    # gives a single image the whole width, and in a fixed-height box its bottom was cut off behind a scrollbar.
    gallery = gr.Gallery(label="Images", format="png", columns=2, height="auto", interactive=False, elem_id=f"{prefix}gallery")
    return RunPanel(generate, skip, stop, readout, preview, gallery, forever)


def wire_forever(panel: RunPanel, run_event, prefix: str = "") -> None:
    """Generate forever, in the browser: when a run ends with the box ticked, Generate is pressed again (a random seed
    draws a new picture each time, as in A1111). A run that ends in a message (⚠) or was stopped unticks it, so a form
    the app refuses does not repeat its message forever; Stop unticks it at once. Nothing runs on the server for it:
    each repeat is an ordinary Generate press, queued like any other."""
    box = f"document.querySelector('#{prefix}generate_forever input[type=checkbox]')"
    again = f"""() => {{
        const box = {box};
        if (!box || !box.checked) return;
        setTimeout(() => {{
            const text = document.querySelector('#{prefix}readout')?.innerText || '';
            if (text.startsWith('⚠') || text.includes('Stopped')) {{ if (box.checked) box.click(); return; }}
            if (box.checked) document.querySelector('#{prefix}generate')?.click();
        }}, 200);
    }}"""
    run_event.then(None, None, None, js=again, api_visibility="private", queue=False)
    panel.stop.click(None, None, None, js=f"() => {{ const box = {box}; if (box && box.checked) box.click(); }}", api_visibility="private",
                     queue=False)


def progress_shown_on(panel: RunPanel) -> list:
    """Where Gradio draws its progress for a run: the preview and the images, never the readout.

    The readout is ours (stage, step, and while queued the place in the queue and the job ahead); under Gradio's
    tracker it would be faded and overlaid with Gradio's own guess ("queue: 1/1 | 3.4/39.7s"). The Esc shortcut
    reads the gallery's tracker to know that a run is queued or running (ui/shortcuts.py)."""
    return [panel.preview, panel.gallery]


def schedule_update(family: Family, sampler: str, current: str):
    """The schedule types the sampler can run; the one chosen stays when it is among them, else Automatic."""
    names = schedule_names(family, sampler)
    return gr.update(choices=names, value=current if current in names else AUTOMATIC)


def wire_hires_sampling(manager: PipelineManager, model: gr.Dropdown, hires_sampler: gr.Dropdown, hires_schedule: gr.Dropdown,
                        hires_checkpoint: gr.Dropdown) -> None:
    """The hires sampler and checkpoint lists follow the model's family (the checkpoints also the models folder, read
    again at each change); the hires schedule types follow the hires sampler. A choice the new list lacks goes back to
    "Use same ..."."""

    def lists(name, current_sampler, current_schedule, current_checkpoint):
        try:
            family = manager.entry(name).family
        except (LikenessError, TypeError):
            return gr.update(), gr.update(), gr.update()
        samplers = hires_sampler_choices(family)
        kept_sampler = current_sampler if current_sampler in samplers else HIRES_SAME_SAMPLER
        schedules = hires_schedule_choices(family, kept_sampler)
        kept_schedule = current_schedule if current_schedule in schedules else HIRES_SAME_SCHEDULE
        checkpoints = manager.hires_checkpoint_choices(family)
        kept_checkpoint = current_checkpoint if current_checkpoint in checkpoints else HIRES_SAME_CHECKPOINT
        return (gr.update(choices=samplers, value=kept_sampler), gr.update(choices=schedules, value=kept_schedule),
                gr.update(choices=checkpoints, value=kept_checkpoint))

    inputs, outputs = [model, hires_sampler, hires_schedule, hires_checkpoint], [hires_sampler, hires_schedule, hires_checkpoint]
    model.change(lists, inputs, outputs, api_visibility="private", queue=False, preprocess=False)
    hires_sampler.input(lists, inputs, outputs, api_visibility="private", queue=False, preprocess=False)

    def checkpoints_now(name):  # models added to the folder since (as the SD VAE list does)
        try:
            return gr.update(choices=manager.hires_checkpoint_choices(manager.entry(name).family))
        except (LikenessError, TypeError):
            return gr.update()

    hires_checkpoint.focus(checkpoints_now, model, hires_checkpoint, api_visibility="private", queue=False, preprocess=False)


def wire_form(manager: PipelineManager, model: gr.Dropdown, fields: dict, lora_picker: gr.Dropdown, random_seed: gr.Button,
              reuse_seed: gr.Button, last_seed: gr.State, follows_model: tuple = (), on_model_extra=None, token_counters: tuple = ()) -> None:
    """The form's own events: the model picks the sampler list and LoRA choices, the LoRA picker adds a tag, the seed
    buttons, the token counters.

    `on_model_extra(entry)` returns updates for the `follows_model` components (e.g. the demo note).
    """
    sampler, prompt, seed = fields["sampler"], fields["prompt"], fields["seed"]

    schedule_type = fields["schedule_type"]

    def on_model_change(name, current_sampler, current_schedule):
        try:
            entry = manager.entry(name)
        except (LikenessError, TypeError):  # a raw value: not a model's name
            return (gr.update(), gr.update(), gr.update(choices=lora_choices(manager))) + (gr.update(),) * len(follows_model)
        names = sampler_names(entry.family)
        keep = current_sampler if current_sampler in names else entry.family.spec.default_sampler
        extra = tuple(on_model_extra(entry)) if on_model_extra else ()
        return (gr.update(choices=names, value=keep), schedule_update(entry.family, keep, current_schedule),
                gr.update(choices=lora_choices(manager))) + extra

    # Raw values (preprocess=False): Gradio checks a dropdown's value against the choices it knows for the session, and
    # a schedule type chosen among choices just sent by another event could be refused in between ("Error").
    model.change(on_model_change, [model, sampler, schedule_type], [sampler, schedule_type, lora_picker, *follows_model],
                 api_visibility="private", preprocess=False)

    def on_sampler_change(name, current_sampler, current_schedule):
        try:
            family = manager.entry(name).family
        except (LikenessError, TypeError):
            return gr.update()
        return schedule_update(family, current_sampler, current_schedule)

    # .input: the user's pick (the model's change above sets both itself)
    sampler.input(on_sampler_change, [model, sampler, schedule_type], schedule_type, api_visibility="private", queue=False,
                  preprocess=False)
    if "hires_sampler" in fields:
        wire_hires_sampling(manager, model, fields["hires_sampler"], fields["hires_schedule_type"], fields["hires_checkpoint"])
    if "refiner_checkpoint" in fields:
        wire_refiner(manager, model, fields["refiner_checkpoint"])

    def on_lora_pick(name, current_prompt):
        if not name:
            return gr.update(), gr.update()
        return add_lora_tag(current_prompt, name), ""

    lora_picker.input(on_lora_pick, [lora_picker, prompt], [prompt, lora_picker], api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private")
    reuse_seed.click(lambda s: s, last_seed, seed, api_visibility="private")
    if token_counters:
        wire_token_counters(manager, model, fields, token_counters)


def first_model(manager: PipelineManager, last: dict) -> tuple[str, bool]:
    """The model the form starts on (the last-used one when it is still usable) and whether it is the demo."""
    chosen = last.get("model") if last.get("model") in [n for _, n in model_choices(manager)] else manager.default_model()
    return chosen, chosen == DEMO_MODEL_NAME


def selected_index(event: gr.SelectData) -> int:
    """The gallery image the user clicked (the Send buttons send it)."""
    return event.index if isinstance(event.index, int) else 0


@dataclass
class BeforeAfter:
    """The face detailer's before/after view: a slider over the first detailed image of the last run."""

    pairs: gr.State  # [(before, after)] of the last run, per session
    panel: gr.Accordion
    slider: gr.ImageSlider

    @property
    def outputs(self) -> list:
        return [self.panel, self.slider]

    @staticmethod
    def show(pairs):
        if not pairs:
            return gr.update(visible=False), gr.update(value=None)
        label = "Face detailer: before / after" + (f" (the first of {len(pairs)} detailed images)" if len(pairs) > 1 else "")
        return gr.update(visible=True, label=label), gr.update(value=pairs[0])


def before_after_panel(prefix: str = "") -> BeforeAfter:
    with gr.Accordion("Face detailer: before / after", open=True, visible=False, elem_id=f"{prefix}before_after") as panel:
        slider = gr.ImageSlider(label="before | after (drag)", format="png", interactive=False, elem_id=f"{prefix}before_after_slider")
    return BeforeAfter(gr.State([]), panel, slider)


def before_after_pairs(result) -> list:
    """(before, after) for each image the face detailer changed: `GeneratedImage.before_detail` when the engine keeps it."""
    pairs = []
    for item in result.images:
        before = getattr(item, "before_detail", None)
        if before is not None:
            pairs.append((before, item.path or item.image))
    return pairs
