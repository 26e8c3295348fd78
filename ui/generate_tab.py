"""The Generate tab: prompt and settings in, images and a live step/latency readout out."""
from __future__ import annotations

import dataclasses
import logging

import gradio as gr

from pipelines import demo
from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.errors import LikenessError
from pipelines.families import Family
from pipelines.lora.tags import extract_lora_tags
from pipelines.manager import PipelineManager
from pipelines.request import (DEEPCACHE_SCHEDULES, FLUX_CACHE_CHOICES, MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_CFG, MAX_SEED, MAX_STEPS,
                               GenerationRequest)
from pipelines.samplers import sampler_names
from pipelines.vae import VAE_CHOICES
from ui import inputs
from ui.last_used import clean_last_generation, vae_rule_info
from ui.session import SKIP_REPLIES, STOP_REPLIES, CancelRegistry, arm_then, result_markdown, session_id, stream_generation

log = logging.getLogger("likeness")
# The request fields the form edits, in the order of the handler's inputs.
FORM_FIELDS = (
    "model", "prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "sampler", "batch_size", "batch_count", "vae_dtype",
    "deepcache_interval", "deepcache_branch", "deepcache_schedule", "flux_cache", "flux_cache_threshold",
    "approximate_cache",
)
KEPT_LATENTS_TTL_S = 6 * 3600  # a session's kept latents are dropped after this long without a new run
RANDOM_DEMO_NOTE = (
    "**Demo model**: a tiny model with random weights, so images are colourful noise. It shows the whole "
    "pipeline working. Put real SD 1.5 / SDXL / FLUX.1 weights in `{models_dir}` and press refresh in the Models tab."
)
TRAINED_DEMO_NOTE = (
    "**Demo model** (tiny, trained here on procedural pictures): it draws simple shapes (circle, square, triangle, star, "
    "heart, ring) in 8 colours, at 9 positions, small or big, on plain or gradient backgrounds, two shapes side by side, "
    "and simple portraits (hair colour, skin tone), at 128x128. Try an example below. For real pictures and faces, put "
    "SD 1.5 / SDXL / FLUX.1 weights in `{models_dir}` and press refresh in the Models tab."
)
DEMO_NOTE = TRAINED_DEMO_NOTE if demo.SHIP_TRAINED_DEMO else RANDOM_DEMO_NOTE


def model_choices(manager: PipelineManager) -> list[tuple[str, str]]:
    return [(e.name + (" — demo, not a real model" if e.format == "demo" else ""), e.name) for e in manager.models() if e.usable]


FAMILY_SHORT = {Family.SD15: "SD 1.5", Family.SDXL: "SDXL", Family.FLUX: "FLUX.1"}


def lora_choices(manager: PipelineManager) -> list[tuple[str, str]]:
    """The usable LoRAs, of any family, for the picker: ("name (family)", name), after an empty choice."""
    loras = sorted((e for e in manager.loras() if e.usable), key=lambda e: e.name.lower())
    return [("", "")] + [(f"{e.name} ({FAMILY_SHORT.get(e.family, '?')})", e.name) for e in loras]


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


def _coerce_form(values: dict) -> GenerationRequest:
    """Gradio numbers arrive as floats (or None when the box is empty); the request wants ints."""
    cleaned = dict(values)
    for name in ("steps", "seed", "width", "height", "batch_size", "batch_count", "deepcache_interval", "deepcache_branch"):
        value = cleaned.get(name)
        if value is None:
            raise LikenessError(f"{name.replace('_', ' ').capitalize()} is empty; enter a number.")
        if isinstance(value, float) and value.is_integer():
            cleaned[name] = int(value)
    if cleaned.get("cfg_scale") is None:
        raise LikenessError("CFG scale is empty; enter a number.")
    return GenerationRequest(**cleaned)


def build(manager: PipelineManager, settings, store, cancels: CancelRegistry) -> dict:
    """Lay out the tab inside the current gr.Blocks; return its components for other tabs to use."""
    last, dropped = clean_last_generation(manager, settings.last_generation)
    default_model = manager.default_model()
    family = manager.entry(default_model).family
    spec = family.spec
    chosen_model = last.get("model") if last.get("model") in [n for _, n in model_choices(manager)] else default_model
    is_demo = chosen_model == DEMO_MODEL_NAME
    # The demo was trained at 128x128: its own defaults, unless the user's last values say otherwise.
    default_size = (demo.DEFAULT_SIZE, demo.DEFAULT_SIZE) if is_demo else spec.default_size
    default_steps = demo.DEFAULT_STEPS if is_demo else spec.default_steps

    with gr.Row():
        model = gr.Dropdown(model_choices(manager), value=chosen_model, label="Model", scale=3, elem_id="model", allow_custom_value=True)
    demo_note = gr.Markdown(DEMO_NOTE.format(models_dir=manager.config.models_dir), visible=is_demo)
    if dropped:
        gr.Markdown("⚠ Last-used values not restored: " + "; ".join(dropped), elem_id="last_used_warning", elem_classes=["settings-warning"])
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, value=last.get("prompt", ""), elem_id="prompt", placeholder="a portrait photo of …")
            negative = gr.Textbox(label="Negative prompt", lines=2, value=last.get("negative_prompt", ""), elem_id="negative_prompt")
            with gr.Row():
                lora_picker = gr.Dropdown(lora_choices(manager), value="", label="LoRA", elem_id="lora_picker", scale=1,
                                          info="adds <lora:name:1> to the prompt; edit the weight there")
            with gr.Row():
                steps = inputs.Slider(1, MAX_STEPS, value=last.get("steps", default_steps), step=1, label="Steps", elem_id="steps")
                cfg = inputs.Slider(0, MAX_CFG, value=last.get("cfg_scale", spec.default_cfg), step=0.5, label="CFG scale", elem_id="cfg")
            with gr.Row():
                width = inputs.Slider(64, 2048, value=last.get("width", default_size[0]), step=8, label="Width", elem_id="width")
                height = inputs.Slider(64, 2048, value=last.get("height", default_size[1]), step=8, label="Height", elem_id="height")
            with gr.Row():
                sampler = gr.Dropdown(sampler_names(family), value=last.get("sampler", spec.default_sampler), label="Sampler", elem_id="sampler")
                seed = inputs.Number(value=last.get("seed", -1), precision=0, label="Seed (-1 = random)", minimum=-1, maximum=MAX_SEED, elem_id="seed")
                random_seed = gr.Button("Random", elem_id="random_seed", min_width=60, scale=0, size="sm")
                reuse_seed = gr.Button("Reuse last", elem_id="reuse_seed", min_width=60, scale=0, size="sm")
            with gr.Row():
                batch_size = inputs.Slider(1, MAX_BATCH_SIZE, value=last.get("batch_size", 1), step=1, label="Batch size", elem_id="batch_size")
                batch_count = inputs.Slider(1, MAX_BATCH_COUNT, value=last.get("batch_count", 1), step=1, label="Batch count", elem_id="batch_count")
            vae_dtype = gr.Radio(list(VAE_CHOICES), value=settings.vae_dtype, label="VAE precision",
                                 info=vae_rule_info(settings.vae_dtype, manager.vae_status()), elem_id="vae_dtype")
            with gr.Accordion("DeepCache (SD 1.5 / SDXL)", open=False):
                with gr.Row():
                    deepcache_interval = inputs.Slider(1, 10, value=last.get("deepcache_interval", 1), step=1, label="Interval N (1 = off)",
                                                   info="one full UNet step, then N-1 cached", elem_id="deepcache_interval")
                    deepcache_branch = inputs.Slider(0, 8, value=last.get("deepcache_branch", 0), step=1, label="Branch",
                                                 info="layers on the shallow path: 0 = fastest; higher = closer to the uncached image (SD 1.5 0-8, SDXL 0-5)", elem_id="deepcache_branch")
                    deepcache_schedule = gr.Radio(list(DEEPCACHE_SCHEDULES), value=last.get("deepcache_schedule", "uniform"),
                                                  label="Schedule", elem_id="deepcache_schedule")
            with gr.Accordion("Block cache (FLUX.1)", open=False):
                with gr.Row():
                    flux_cache = gr.Radio(list(FLUX_CACHE_CHOICES), value=last.get("flux_cache", "off"),
                                          label="Cache", elem_id="flux_cache")
                    flux_cache_threshold = inputs.Slider(0.01, 0.5, value=last.get("flux_cache_threshold", 0.08), step=0.01, label="Threshold",
                                                     info="first-block: 0.08 nearly lossless (~1.5x), 0.12 ~1.9x", elem_id="flux_cache_threshold")
            with gr.Accordion("Approximate cache (trades exactness for speed)", open=False):
                approximate_cache = gr.Checkbox(
                    value=last.get("approximate_cache", False), label="Resume from a similar earlier prompt", elem_id="approximate_cache",
                    info="A prompt close to one generated before (same model, size, sampler, steps, CFG) starts from that run's "
                         "latents after K steps and runs only the rest: faster, but the image keeps some of the earlier "
                         "composition and its seed no longer reproduces it alone. Kept on disk for this user; see the Caches tab.")
            with gr.Column(visible=is_demo and demo.SHIP_TRAINED_DEMO) as demo_examples:
                gr.Examples([[p, demo.DEFAULT_SIZE, demo.DEFAULT_SIZE, demo.DEFAULT_STEPS] for p in demo.EXAMPLE_PROMPTS],
                            [prompt, width, height, steps], label="Demo prompts (click one, then Generate)", examples_per_page=6)
        with gr.Column(scale=2):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                skip = gr.Button("Skip", elem_id="skip", scale=0, min_width=70)
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            readout = gr.Markdown("Ready.", elem_id="readout")
            preview = gr.Image(label="Preview", format="png", interactive=False, height=192, elem_id="preview")
            gallery = gr.Gallery(label="Images", format="png", columns=2, height=420, elem_id="gallery")
            breakdown = gr.Markdown(elem_id="breakdown")
            with gr.Accordion("Re-decode the last latents", open=False):
                with gr.Row():
                    redecode_dtype = gr.Radio(list(VAE_CHOICES), value="fp32", label="Decode again in", elem_id="redecode_dtype")
                    redecode = gr.Button("Re-decode", elem_id="redecode", scale=0)
                redecode_info = gr.Markdown(elem_id="redecode_info")
                redecode_gallery = gr.Gallery(label="Re-decoded", format="png", columns=2, height=300, elem_id="redecode_gallery")
    last_seed = gr.State(-1)
    # This browser session's last latents, for Re-decode: per session, so no one decodes another user's image.
    kept_latents = gr.State(None, time_to_live=KEPT_LATENTS_TTL_S)
    form = dict(zip(FORM_FIELDS, (model, prompt, negative, steps, cfg, seed, width, height, sampler, batch_size, batch_count, vae_dtype,
                                  deepcache_interval, deepcache_branch, deepcache_schedule, flux_cache, flux_cache_threshold,
                                  approximate_cache)))

    def on_model_change(name, current_sampler):
        try:
            entry = manager.entry(name)
        except LikenessError:
            return gr.update(), gr.update(), gr.update(), gr.update(choices=lora_choices(manager))
        names = sampler_names(entry.family)
        keep = current_sampler if current_sampler in names else entry.family.spec.default_sampler
        examples = entry.format == "demo" and demo.SHIP_TRAINED_DEMO
        return (gr.update(visible=entry.format == "demo"), gr.update(visible=examples), gr.update(choices=names, value=keep),
                gr.update(choices=lora_choices(manager)))

    model.change(on_model_change, [model, sampler], [demo_note, demo_examples, sampler, lora_picker], api_visibility="private")

    def on_lora_pick(name, current_prompt):
        if not name:
            return gr.update(), gr.update()
        return add_lora_tag(current_prompt, name), ""

    lora_picker.input(on_lora_pick, [lora_picker, prompt], [prompt, lora_picker], api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private")
    reuse_seed.click(lambda s: s, last_seed, seed, api_visibility="private")

    # Named parameters, not *args: Gradio injects gr.Request only into a plain signature.
    def run(model, prompt, negative_prompt, steps, cfg_scale, seed, width, height, sampler, batch_size, batch_count, vae_dtype,
            deepcache_interval, deepcache_branch, deepcache_schedule, flux_cache, flux_cache_threshold, approximate_cache=False,
            request: gr.Request = None):
        values = {name: value for name, value in locals().items() if name in FORM_FIELDS}
        try:
            generation_request = _coerce_form(values)
        except (LikenessError, TypeError) as error:
            cancels.forget_armed(session_id(request))
            yield f"⚠ {error}", None, gr.update(), "", -1, gr.update()
            return
        result = None
        for update in stream_generation(manager, generation_request, cancels, session_id(request)):
            if update.message:
                yield f"⚠ {update.message}", update.preview, gr.update(), "", gr.update(), gr.update()
                return
            if update.result is None:
                yield update.readout, update.preview, gr.update(), gr.update(), gr.update(), gr.update()
            result = update.result
        settings.last_generation = dataclasses.asdict(generation_request)
        try:
            store.save(settings)
        except OSError as error:
            log.warning("could not save the last-used values: %s", error)
        images = [(item.path or item.image, f"seed {item.seed}") for item in result.images]
        yield update.readout, None, images, result_markdown(result), result.seeds[0], result.kept_latents

    generate_event = arm_then(generate.click, cancels).then(
        run, list(form.values()), [readout, preview, gallery, breakdown, last_seed, kept_latents],
        api_name="generate", concurrency_id="gpu", concurrency_limit=1,
        # Raw values: Gradio's own slider step would fail first on an API client's None, "abc" or NaN
        # with no message; `_coerce_form` and `validate_request` name the field and the fix instead.
        preprocess=False,
    )

    def stop_generation(request: gr.Request = None):
        return STOP_REPLIES[cancels.signal(session_id(request))]

    def skip_batch(request: gr.Request = None):
        return SKIP_REPLIES[cancels.signal(session_id(request), skip=True)]

    def on_redecode(dtype, kept):
        try:
            result = manager.redecode(kept, dtype)
        except LikenessError as error:
            return f"⚠ {error}", gr.update()
        scores = ", ".join("identical" if score == float("inf") else f"{score:.1f} dB" for score in result.psnr_vs_first)
        notes = "".join(f"  \n⚠ {n}" for n in result.notes)
        text = (f"Decoded in **{result.vae_label}** in {result.seconds:.2f} s (first decode: {kept.vae_label}). "
                f"PSNR against the first decode: {scores}.{notes}")
        return text, [(image, f"seed {seed} · {result.vae_label}") for image, seed in zip(result.images, kept.seeds)]

    redecode.click(on_redecode, [redecode_dtype, kept_latents], [redecode_info, redecode_gallery], api_name="redecode",
                   concurrency_id="gpu", concurrency_limit=1)

    # Not queued behind the GPU work they interrupt.
    stop.click(stop_generation, None, readout, api_name="cancel", concurrency_limit=None)
    skip.click(skip_batch, None, readout, api_name="skip", concurrency_limit=None)
    return {"form": form, "generate_event": generate_event, "readout": readout, "gallery": gallery, "last_seed": last_seed,
            "kept_latents": kept_latents}
