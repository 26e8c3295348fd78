"""A1111's Refiner: another model of the family takes over the denoise at the switch step.

The run is split in two plans (pipelines/stages: a split run), so each model loads once whatever the batch count: the
first plan's denoise stops after the switch step (`GenerationPlan.stop_after`); this stage, the second plan's first,
goes on from those latents on the refiner through the rest of the same schedule (the approximate cache's resuming
scheduler: the full schedule's remaining steps), then the hires pass, the decode and the face detailer run on it.
Deterministic samplers (Euler, DDIM, flow Euler) take the same steps as one model would; a multistep solver (DPM++
2M, UniPC) restarts its history at the switch, so the refiner's first step is first order; ancestral samplers draw
the rest of their noise from the seed as a run would.
"""
from __future__ import annotations

from pipelines.caches.approximate_run import Resume
from pipelines.stages.denoise import denoise_batch, stopped


def refiner_infotext(model, request) -> dict[str, str]:
    """A1111's keys: the refiner's short title, its Switch at, and that it switched by sampling steps (its option)."""
    return {"Refiner": f"{model.name} [{model.model_hash}]" if model.model_hash else model.name,
            "Refiner switch at": f"{request.refiner_switch_at:g}", "Refiner switch by sampling steps": "True"}


class RefinerDenoise:
    name = "refiner"

    def wanted(self, plan) -> bool:
        return plan.resume_at is not None

    def run(self, plan, state, info: dict) -> None:
        model, request, start = plan.model, plan.request, plan.resume_at
        latents = state.latents.to(model.device, model.dtype)
        offset = plan.batch_step_offset(state.batch_index) - start  # the readout counts this batch's steps after all first passes'
        state.latents = denoise_batch(plan, state, Resume(start_step=start, latents=latents), step_offset=offset)
        state.batch_extra |= refiner_infotext(model, request)
        info["detail"] = f"steps {start + 1}-{request.steps} on {model.name}"
        stopped(plan, state)  # Stop raises; Skip ends the batch here (no decode)
