"""The Generate tab: prompt and settings in, images and a live step/latency readout out."""
from __future__ import annotations

import dataclasses
import logging

import gradio as gr

from pipelines import demo
from pipelines.errors import LikenessError
from pipelines.manager import PipelineManager
from pipelines.request import GenerationRequest
from pipelines.vae import VAE_CHOICES
from ui import generation_form, prompt_lines_panel
from ui.generation_form import add_lora_tag, lora_choices, model_choices  # noqa: F401  (imported from here by other modules)
from ui.last_used import clean_last_generation, remember_last_generation
from ui.jobs import parallel_jobs
from ui.session import SKIP_REPLIES, STOP_REPLIES, CancelRegistry, arm_then, cache_namespace, result_markdown, session_id, stream_generation

log = logging.getLogger("likeness")
# Request fields the img2img tab edits and Generate does not.
IMG2IMG_FIELDS = ("init_image", "mask", "denoising_strength", "resize_mode", "mask_blur", "inpainting_fill", "inpaint_full_res",
                  "inpaint_full_res_padding", "inpainting_mask_invert")
# Request fields the app sets, never the form: whether to save, and whose approximate-cache entries a run may use.
APP_FIELDS = ("save", "cache_namespace")
# The request fields the form edits, in the order of the handler's inputs (the request's own order).
FORM_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationRequest) if f.name not in APP_FIELDS + IMG2IMG_FIELDS)
KEPT_LATENTS_TTL_S = 6 * 3600  # a session's kept latents are dropped after this long without a new run
RANDOM_DEMO_NOTE = (
    "**Demo model**: a tiny model with random weights, so images are colourful noise. It shows the whole "
    "pipeline working. Put real SD 1.5 / SDXL / FLUX.1 weights in `{models_dir}` and press refresh in the Models tab."
)
TRAINED_DEMO_NOTE = (
    "**Demo model** (tiny, trained here on a 2-core CPU in 60 minutes, 128x128): it knows simple shapes (circle, square, "
    "triangle, star, heart, ring) in 8 colours, 9 positions and 2 sizes on plain or gradient backgrounds, and simple "
    "portraits (hair colour, skin tone). On prompts it never saw it gets backgrounds, faces, hair, skin, colours, positions "
    "and sizes right 90-100 % of the time, shapes 83-91 % and every attribute at once 83-90 % (small stars are its weak spot, "
    "about half right; two objects at once about half), at its CFG 2. Try an example below. "
    "For real pictures, put SD 1.5 / SDXL / "
    "FLUX.1 weights in `{models_dir}` and press refresh in the Models tab."
)
DEMO_NOTE = TRAINED_DEMO_NOTE if demo.SHIP_TRAINED_DEMO else RANDOM_DEMO_NOTE



def _coerce_form(values: dict) -> GenerationRequest:
    """Gradio numbers arrive as floats (or None when the box is empty); the request wants ints."""
    return generation_form.coerce_form(values)


def build(manager: PipelineManager, settings, store, cancels: CancelRegistry) -> dict:
    """Lay out the tab inside the current gr.Blocks; return its components for other tabs to use."""
    last, dropped = clean_last_generation(manager, settings.last_generation)
    chosen_model, is_demo = generation_form.first_model(manager, last)
    entry = manager.entry(chosen_model)
    family, start = entry.family, entry.starting_values()

    model = generation_form.model_row(manager, chosen_model)
    demo_note = gr.Markdown(DEMO_NOTE.format(models_dir=manager.config.models_dir), visible=is_demo)
    if dropped:
        gr.Markdown("⚠ Last-used values not restored: " + "; ".join(dropped), elem_id="last_used_warning", elem_classes=["settings-warning"])
    with gr.Row():
        with gr.Column(scale=3):
            fields, lora_picker, counters = generation_form.prompt_fields(manager, last, model_name=chosen_model)
            sampling, random_seed, reuse_seed = generation_form.sampling_fields(manager, settings, last, family, start)
            fields |= sampling
            fields |= generation_form.hires_fields(manager, last, family=family)
            fields |= generation_form.refiner_fields(manager, last, family=family)
            fields |= generation_form.detailer_fields(last)
            lines_panel = prompt_lines_panel.build_panel()
            with gr.Column(visible=is_demo and demo.SHIP_TRAINED_DEMO) as demo_examples:
                gr.Examples([[p, demo.DEFAULT_SIZE, demo.DEFAULT_SIZE, demo.DEFAULT_STEPS, demo.DEFAULT_CFG] for p in demo.EXAMPLE_PROMPTS],
                            [fields["prompt"], fields["width"], fields["height"], fields["steps"], fields["cfg_scale"]],
                            label="Demo prompts (click one, then Generate)", examples_per_page=len(demo.EXAMPLE_PROMPTS))
        with gr.Column(scale=2):
            panel = generation_form.run_panel()
            readout, preview, gallery = panel.readout, panel.preview, panel.gallery
            with gr.Row():
                send_img2img = gr.Button("Send to img2img", elem_id="send_img2img", size="sm")
                send_inpaint = gr.Button("Send to inpaint", elem_id="send_inpaint", size="sm")
                send_extras = gr.Button("Send to Extras", elem_id="send_extras", size="sm")
            before_after = generation_form.before_after_panel()
            breakdown = gr.Markdown(elem_id="breakdown")
            with gr.Accordion("Re-decode the last latents", open=False):
                with gr.Row():
                    redecode_dtype = gr.Radio(list(VAE_CHOICES), value="fp32", label="Decode again in", elem_id="redecode_dtype")
                    redecode = gr.Button("Re-decode", elem_id="redecode", scale=0)
                redecode_info = gr.Markdown(elem_id="redecode_info")
                redecode_gallery = gr.Gallery(label="Re-decoded", format="png", columns=2, height=300, elem_id="redecode_gallery")
    last_seed = gr.State(-1)
    selected = gr.State(0)  # the gallery image the Send buttons send
    # This browser session's last latents, for Re-decode: per session, so no one decodes another user's image.
    kept_latents = gr.State(None, time_to_live=KEPT_LATENTS_TTL_S)
    form = {"model": model} | fields
    form = {name: form[name] for name in FORM_FIELDS}

    def on_model_extra(entry):
        return gr.update(visible=entry.format == "demo"), gr.update(visible=entry.format == "demo" and demo.SHIP_TRAINED_DEMO)

    generation_form.wire_form(manager, model, form, lora_picker, random_seed, reuse_seed, last_seed,
                              follows_model=(demo_note, demo_examples), on_model_extra=on_model_extra, token_counters=counters)

    # Named parameters, not *args: Gradio injects gr.Request only into a plain signature.
    def run(model, prompt, negative_prompt, steps, cfg_scale, seed, width, height, sampler, batch_size, batch_count, vae_dtype,
            deepcache_interval, deepcache_branch, deepcache_schedule, flux_cache, flux_cache_threshold, approximate_cache=False,
            hires_scale=1.0, hires_upscaler="Latent", hires_steps=0, hires_denoising=0.7,
            face_detail=False, face_detail_strength=0.4, face_detail_steps=0, face_detail_prompt="", face_detail_faces="", clip_skip=1,
            styles=(), subseed=-1, subseed_strength=0.0, tiling=False, hires_prompt="", hires_negative_prompt="", vae="Automatic",
            schedule_type="Automatic", hires_sampler="", hires_schedule_type="", seed_resize_from_w=0, seed_resize_from_h=0,
            hires_checkpoint="", refiner_checkpoint="", refiner_switch_at=0.8, token_merging_ratio=0.0, request: gr.Request = None):
        values = {name: value for name, value in locals().items() if name in FORM_FIELDS}
        unchanged = (gr.update(),) * 2  # the before/after pairs and the selected image
        try:
            generation_request = _coerce_form(values)
            generation_form.check_upscaler(manager, generation_request)
        except (LikenessError, TypeError) as error:
            cancels.forget_armed(session_id(request))
            yield f"⚠ {error}", None, gr.update(), "", -1, gr.update(), *unchanged
            return
        result = None
        for update in stream_generation(manager, generation_request, cancels, session_id(request), namespace=cache_namespace(request)):
            if update.message:
                yield f"⚠ {update.message}", update.preview_output(), gr.update(), "", gr.update(), gr.update(), *unchanged
                return
            if update.result is None:
                yield update.readout, update.preview_output(), gr.update(), gr.update(), gr.update(), gr.update(), *unchanged
            result = update.result
        if remember_last_generation(settings, request, generation_request):
            try:
                store.save(settings)
            except OSError as error:
                log.warning("could not save the last-used values: %s", error)
        images = [(item.path or item.image, f"seed {item.seed}") for item in result.images]
        yield (update.readout, None, images, result_markdown(result), result.seeds[0], result.kept_latents,
               generation_form.before_after_pairs(result), 0)

    generate_event = arm_then(panel.generate.click, cancels, readout, manager).then(
        run, list(form.values()), [readout, preview, gallery, breakdown, last_seed, kept_latents, before_after.pairs, selected],
        api_name="generate", concurrency_id="gpu", concurrency_limit=parallel_jobs(manager),
        show_progress_on=generation_form.progress_shown_on(panel),
        # Raw values: Gradio's own slider step would fail first on an API client's None, "abc" or NaN
        # with no message; `_coerce_form` and `validate_request` name the field and the fix instead.
        preprocess=False,
    )
    generate_event.then(before_after.show, before_after.pairs, before_after.outputs, api_visibility="private", queue=False)
    generation_form.wire_forever(panel, generate_event)
    prompt_lines_panel.wire(lines_panel, manager, cancels, form, readout, preview, gallery, breakdown, last_seed)
    gallery.select(generation_form.selected_index, None, selected, api_visibility="private", queue=False)

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
                   concurrency_id="gpu", concurrency_limit=parallel_jobs(manager))

    # Not queued behind the GPU work they interrupt.
    panel.stop.click(stop_generation, None, readout, api_name="cancel", concurrency_limit=None)
    panel.skip.click(skip_batch, None, readout, api_name="skip", concurrency_limit=None)
    return {"form": form, "generate_event": generate_event, "readout": readout, "gallery": gallery, "last_seed": last_seed,
            "kept_latents": kept_latents, "selected": selected, "send_img2img": send_img2img, "send_inpaint": send_inpaint,
            "send_extras": send_extras}
