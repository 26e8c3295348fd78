"""A1111's prompt editing and alternating words: the schedule each prompt makes (A1111's own documented answers),
and the texts each denoiser call really reads in a generation, on the tiny SD 1.5 / SDXL / FLUX.1 pipelines."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch

from pipelines.generate import encode_prompts
from pipelines.hooks.base import HookContext, attached
from pipelines.hooks.prompt_schedule import PromptScheduleHook
from pipelines.prompts.schedule import has_editing, prompt_schedule, segment_schedule
from pipelines.telemetry import StageEnded
from tests.tiny_models import expected_cfg_text, recorded_calls, tiny_request


def schedule(text: str, steps: int = 10) -> list[list]:
    return [[end, rendered] for end, rendered in prompt_schedule(text, steps)]


# The answers A1111's prompt_parser documents for its schedules (10 steps).
@pytest.mark.parametrize(("text", "expected"), [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("a [{b|d{:.5] c", [[5, "a  c"], [10, "a {b|d{ c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[step, "a" if step % 2 else "(b:1.1)"] for step in range(1, 11)]),
    ("[fe|]male", [[step, "female" if step % 2 else "male"] for step in range(1, 11)]),
    ("[fe|||]male", [[step, "female" if step % 4 == 1 else "male"] for step in range(1, 11)]),
])
def test_a1111s_documented_schedules(text, expected):
    assert schedule(text) == expected


def test_fractions_steps_and_the_cap():
    assert schedule("a [fantasy:cyberpunk:16] landscape", 30) == [[16, "a fantasy landscape"], [30, "a cyberpunk landscape"]]
    assert schedule("[cat:dog:0.25]", 20) == [[5, "cat"], [20, "dog"]]
    assert schedule("[cat:dog:1.0]", 20) == [[20, "cat"]], "1.0 is the whole run (a fraction), 1 is step 1"
    assert schedule("[cat:dog:1]", 20) == [[1, "cat"], [20, "dog"]]
    assert schedule("[cat:dog:50]", 20) == [[20, "cat"]], "a step past the end: the first text throughout"
    assert schedule("[cat:dog:0.01]", 20) == [[20, "dog"]], "switching before step 1: the second text throughout"
    assert schedule("[cat::5] on grass", 20) == [[5, "cat on grass"], [20, " on grass"]]


def test_what_is_not_editing_is_read_as_written():
    for text in ["(red:1.2) cat", "[blue] cat", "a [cat:dog] b", "a [cat:dog|x]", "[a|b:c|d]", "[a:b:c]", "\\[a:b:5\\]", "<lora:x:0.5> cat", "[a:b:-1]"]:
        assert schedule(text, 20) == [[20, text]], text
        assert not has_editing(text)
    assert has_editing("[a:b:5]") and has_editing("x ([a|b]:1.2)")
    deep = "[" * 500 + "a:b:5" + "]" * 500
    assert schedule(deep, 20) == [[20, deep]], "pathological nesting is read as written, not a RecursionError"


def test_hires_pass_schedules_count_from_the_first_pass():
    # A1111: a step number counts from the first pass's start, a fraction from 1 to 2 spans the hires pass.
    assert prompt_schedule("[cat:dog:0.5]", 10, first_pass_steps=20) == [(10, "dog")]
    assert prompt_schedule("[cat:dog:1.5]", 10, first_pass_steps=20) == [(5, "cat"), (10, "dog")]
    assert prompt_schedule("[cat:dog:25]", 10, first_pass_steps=20) == [(5, "cat"), (10, "dog")]
    assert prompt_schedule("[cat:dog:15]", 10, first_pass_steps=20) == [(10, "dog")]


def test_prompt_and_negative_merge_into_segments():
    segments = segment_schedule("[a:b:5]", "x [n:m:12]", 20)
    assert [(s.last_step, s.prompt, s.negative) for s in segments] == [(5, "a", "x n"), (12, "b", "x n"), (20, "b", "x m")]
    assert [(s.last_step, s.prompt) for s in segment_schedule("[a|a]", "", 6)] == [(6, "a")], "no change: one segment"


# -- the denoiser reads each step's prompt ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_each_step_reads_its_own_prompt(shared_manager, family):
    request = tiny_request(family, prompt="a [red cat:blue dog:1] on grass", negative_prompt="[ugly:blurry:2]", steps=4, seed=2, save=False)
    events = []
    with recorded_calls(shared_manager, request.model) as (pipe, calls):
        shared_manager.generate(request, listener=events.append)
    assert len(calls) == 4
    flux = family == "flux"
    texts = [("a red cat on grass", "ugly"), ("a red cat on grass", "ugly"), ("a blue dog on grass", "ugly"), ("a blue dog on grass", "blurry")]
    if flux:  # no negative without true CFG
        texts = [(prompt, "") for prompt, _ in texts]
    for step, (prompt, negative) in enumerate(texts):
        text, pooled = expected_cfg_text(pipe, family, prompt, negative)
        torch.testing.assert_close(calls[step]["text"], text, msg=f"step {step} reads {prompt!r} / {negative!r}")
        if pooled is not None:
            torch.testing.assert_close(calls[step]["pooled"], pooled, msg=f"step {step}'s pooled text")
    detail = next(e.detail for e in events if isinstance(e, StageEnded) and e.stage == "text encode")
    assert detail.startswith("prompt editing: 3 prompts (steps 0-1, 2, 3)"), detail


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_hook_gives_what_swapping_the_pipelines_own_embeds_gives(shared_manager, family):
    """An independent route to the same picture: diffusers' step-end callback replaces the pipeline's
    concatenated embeddings for the steps after the switch."""
    request = tiny_request(family, prompt="[a red cat:a blue dog:1]", negative_prompt="ugly", steps=3, seed=4, save=False)
    edited = shared_manager.generate(request)
    with shared_manager.use(request.model) as model:
        pipe = model.pipe
        sdxl = family == "sdxl"
        first = encode_prompts(model, "a red cat", "ugly", 1, True)
        second = encode_prompts(model, "a blue dog", "ugly", 1, True)

        def swap(_pipe, step_index, _t, tensors):
            if step_index == 1:  # steps 0 and 1 read the first prompt (A1111: step <= 1)
                tensors["prompt_embeds"] = torch.cat([second["negative_prompt_embeds"], second["prompt_embeds"]])
                if sdxl:
                    tensors["add_text_embeds"] = torch.cat([second["negative_pooled_prompt_embeds"], second["pooled_prompt_embeds"]])
            return tensors

        names = ["latents", "prompt_embeds"] + (["add_text_embeds"] if sdxl else [])
        latents = pipe(**first, num_inference_steps=3, guidance_scale=request.cfg_scale, height=request.height, width=request.width,
                       generator=torch.Generator("cpu").manual_seed(4), output_type="latent", callback_on_step_end=swap,
                       callback_on_step_end_tensor_inputs=names).images
        with torch.no_grad():
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
    ours, theirs = np.asarray(edited.images[0].image, dtype=np.int16), np.asarray(image, dtype=np.int16)
    assert np.abs(ours - theirs).max() <= 1, "the same latents, decoded the same way"
    plain = shared_manager.generate(dataclasses.replace(request, prompt="a red cat"))
    assert np.abs(ours - np.asarray(plain.images[0].image, dtype=np.int16)).max() > 0, "the switch changed the picture"


def test_a_schedule_that_never_switches_is_the_plain_prompt_bit_for_bit(shared_manager):
    base = tiny_request("sd15", prompt="a red cat", steps=3, seed=6, save=False)
    plain = shared_manager.generate(base)
    late = shared_manager.generate(dataclasses.replace(base, prompt="[a red cat:a blue dog:9]"))
    assert np.array_equal(np.asarray(plain.images[0].image), np.asarray(late.images[0].image))
    early = shared_manager.generate(dataclasses.replace(base, prompt="[a blue dog:a red cat:0.1]"))
    assert np.array_equal(np.asarray(plain.images[0].image), np.asarray(early.images[0].image))


def test_img2img_counts_the_steps_it_runs(shared_manager):
    """A1111's img2img reads the schedule by the steps it runs: at strength 0.5 of 4 steps, `[a:b:1]` reads `a` at the
    pass's first two steps (0 and 1), though they are steps 2 and 3 of the full schedule."""
    from PIL import Image

    init = Image.new("RGB", (64, 64), (120, 80, 40))
    request = tiny_request("sd15", prompt="[a red cat:a blue dog:1]", negative_prompt="", steps=4, seed=2, save=False,
                           init_image=init, denoising_strength=0.5)
    with recorded_calls(shared_manager, request.model) as (pipe, calls):
        shared_manager.generate(request)
    assert len(calls) == 2
    for call in calls:
        torch.testing.assert_close(call["text"], expected_cfg_text(pipe, "sd15", "a red cat", "")[0])


def test_the_hires_pass_reads_its_own_schedule(shared_manager):
    request = tiny_request("sd15", prompt="[a red cat:a blue dog:0.5]", steps=4, seed=2, save=False, hires_scale=1.5, hires_steps=2,
                           hires_denoising=1.0, hires_upscaler="Latent")
    with recorded_calls(shared_manager, request.model) as (pipe, calls):
        result = shared_manager.generate(request)
    cat, dog = (expected_cfg_text(pipe, "sd15", text, "")[0] for text in ("a red cat", "a blue dog"))
    assert len(calls) == 6, "4 first-pass steps, 2 hires steps"
    for index, expected in enumerate([cat, cat, cat, dog, dog, dog]):  # 0.5 of 4: steps 0-2 read the cat; the hires pass only the dog
        torch.testing.assert_close(calls[index]["text"], expected, msg=f"call {index}")
    assert result.images[0].image.size == (96, 96)


def test_the_hook_attaches_and_detaches_cleanly_and_keeps_other_hooks():
    class Denoiser(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None):
            return encoder_hidden_states.sum() + pooled_projections.sum()

    class Pipe:
        transformer = Denoiser()

    seen = []
    other = Pipe.transformer.register_forward_pre_hook(lambda _m, _a, kw: seen.append(float(kw["encoder_hidden_states"].sum())),
                                                       with_kwargs=True)
    first = {"prompt_embeds": torch.ones(1, 2), "pooled_prompt_embeds": torch.ones(1, 1),
             "negative_prompt_embeds": torch.zeros(1, 2), "negative_pooled_prompt_embeds": torch.zeros(1, 1)}
    later = {"prompt_embeds": torch.full((1, 2), 5.0), "pooled_prompt_embeds": torch.full((1, 1), 5.0),
             "negative_prompt_embeds": torch.full((1, 2), -5.0), "negative_pooled_prompt_embeds": torch.full((1, 1), -5.0)}
    context = HookContext(total_steps=3, height=8, width=8, batch_size=1)
    hook = PromptScheduleHook([(0, first), (2, later)], first_step=0, flux=True)
    with attached(Pipe, [hook], context):
        for step in range(3):  # true CFG: a positive then a negative call each step
            context.step_index = step
            Pipe.transformer(torch.zeros(1), encoder_hidden_states=first["prompt_embeds"], pooled_projections=first["pooled_prompt_embeds"])
            Pipe.transformer(torch.zeros(1), encoder_hidden_states=first["negative_prompt_embeds"],
                             pooled_projections=first["negative_pooled_prompt_embeds"])
    assert seen == [2.0, 0.0, 10.0, -10.0, 10.0, -10.0], "the other pre-hook runs after ours and sees the step's prompt"
    assert hook.swapped == 4
    Pipe.transformer(torch.zeros(1), encoder_hidden_states=first["prompt_embeds"], pooled_projections=first["pooled_prompt_embeds"])
    assert seen[-1] == 2.0 and len(Pipe.transformer._forward_pre_hooks) == 1, "detached: only the other hook is left"
    other.remove()


def test_the_approximate_cache_reuses_only_the_same_edited_prompt(make_manager, shared_models_dir, tmp_path):
    manager = make_manager(shared_models_dir, cache_dir=tmp_path / "cache", latent_cache_entries=0)
    edited = tiny_request("sd15", seed=8, steps=10, approximate_cache=True, prompt="a red circle on a [blue:green:0.6] square")
    assert manager.generate(edited).cache_notes["approx cache"].startswith("miss")
    other_switch = dataclasses.replace(edited, prompt="a red circle on a [blue:green:0.3] square")
    assert manager.generate(other_switch).cache_notes["approx cache"].startswith("miss"), "its latents ran another schedule"
    plain = dataclasses.replace(edited, prompt="a red circle on a blue square")
    assert manager.generate(plain).cache_notes["approx cache"].startswith("miss")
    assert manager.generate(dataclasses.replace(edited, seed=9)).cache_notes["approx cache"].startswith("hit")
