"""The stages that turn latents into saved images: VAE decode, recording (infotext), save."""
from __future__ import annotations

from pipelines.generate import decode_latents, infotext_params, save_batch
from pipelines.infotext import build_infotext
from pipelines.request import GeneratedImage


class VaeDecode:
    """Under the VAE precision policy (NaN re-decode in fp32, tiles on out-of-memory); the outcome says what ran."""

    name = "VAE decode"

    def wanted(self, plan) -> bool:
        return True

    def run(self, plan, state, info: dict) -> None:
        state.decoded, state.outcome = decode_latents(plan.model, state.latents, state.height, state.width, plan.options.vae)
        state.vae_label = info["detail"] = state.outcome.label()
        state.fell_back = state.fell_back or bool(state.outcome.fallback_samples)
        for note in state.outcome.notes:
            state.warn(plan.bus, note)
        state.last_latents = state.latents.detach().to("cpu")
        state.latents = None


def record_batch(plan, state) -> None:
    """The batch's images with their infotext: this batch's own stage times, the run's shared ones."""
    request, model = plan.request, plan.first_model or plan.model  # the infotext's Model: the first pass's
    prepare_names = {stage.name for stage in plan.prepare}
    seconds = state.batch_stage_seconds(plan.clock, prepare_names)
    extra = plan.options.infotext_extra | state.batch_extra
    state.batch = [
        GeneratedImage(image, seed, build_infotext(
            request.prompt, request.negative_prompt,
            infotext_params(model, request, seed, state.outcome.sample_label(i), seconds, state.cache_notes, state.subseeds[i]) | extra
            | (state.image_extra[i] if i < len(state.image_extra) else {})),
            before_detail=state.before_detail[i] if i < len(state.before_detail) else None)
        for i, (image, seed) in enumerate(zip(state.decoded, state.seeds))
    ]


class Save:
    """Each image to the outputs folder (crash-safe); an unwritable folder costs the file, never the image."""

    name = "save"

    def wanted(self, plan) -> bool:
        return bool(plan.request.save and plan.options.outputs_dir)

    def run(self, plan, state, info: dict) -> None:
        save_batch(state.batch, plan.options.outputs_dir, lambda text: state.warn(plan.bus, text))
