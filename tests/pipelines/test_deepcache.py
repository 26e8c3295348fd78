"""DeepCache: exactness at N=1, schedules, no state across generations, refusals with messages, and
sitting alongside accelerate's offload hook."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import hooks as accelerate_hooks

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.demo_model import build_tiny_sd15_pipeline
from pipelines.errors import InvalidRequest
from pipelines.hooks import HookContext, attached
from pipelines.hooks.deepcache import DeepCacheConfig, DeepCacheHook, full_steps
from pipelines.manager import ManagerConfig, PipelineManager
from pipelines.metrics import psnr
from pipelines.request import GenerationRequest


@pytest.fixture(scope="module")
def pipe():
    pipeline = build_tiny_sd15_pipeline(unet_channels=(32, 64, 64, 64), sd15_block_layout=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run(pipe, hooks, steps=8, size=(128, 128), seed=1):
    context = HookContext(steps, size[1], size[0], 1)

    def advance(_pipe, index, _t, tensors):
        context.step_index = index + 1
        return tensors

    with attached(pipe, hooks, context):
        image = pipe("a lighthouse", num_inference_steps=steps, width=size[0], height=size[1], guidance_scale=7.0,
                     generator=torch.Generator().manual_seed(seed), output_type="np", callback_on_step_end=advance).images[0]
    return (image * 255).round().astype(np.uint8), context.stats


def test_interval_one_reproduces_the_uncached_image_exactly(pipe):
    plain, _ = run(pipe, [])
    same, stats = run(pipe, [DeepCacheHook(DeepCacheConfig(interval=1))])
    assert np.array_equal(plain, same)
    assert stats["deepcache"] == {"full_steps": 8, "cached_steps": 0}


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_cached_steps_stay_close_to_the_uncached_image(pipe, branch):
    plain, _ = run(pipe, [])
    cached, stats = run(pipe, [DeepCacheHook(DeepCacheConfig(interval=2, branch=branch))])
    assert stats["deepcache"] == {"full_steps": 4, "cached_steps": 4}
    assert not np.array_equal(plain, cached), "no step was really cached"
    assert psnr(plain, cached) > 25


def test_detach_restores_the_unet(pipe):
    hook = DeepCacheHook(DeepCacheConfig(interval=3))
    run(pipe, [hook])
    assert "forward" not in pipe.unet.__dict__
    assert all(not block._forward_pre_hooks for block in pipe.unet.up_blocks)


def test_no_state_leaks_between_sizes(pipe):
    hook = DeepCacheHook(DeepCacheConfig(interval=3))
    run(pipe, [hook], size=(128, 128))
    reused, _ = run(pipe, [hook], size=(160, 128), seed=5)
    fresh, _ = run(pipe, [DeepCacheHook(DeepCacheConfig(interval=3))], size=(160, 128), seed=5)
    assert np.array_equal(reused, fresh)


def test_schedules():
    assert full_steps(10, DeepCacheConfig(interval=3)) == {0, 3, 6, 9}
    assert full_steps(10, DeepCacheConfig(interval=1)) == set(range(10))
    quadratic = sorted(full_steps(20, DeepCacheConfig(interval=4, schedule="quadratic", center=0.5)))
    assert quadratic[0] == 0 and len(quadratic) >= 4
    gaps = np.diff(quadratic)
    middle = [g for s, g in zip(quadratic, gaps) if 5 <= s <= 13]
    ends = [g for s, g in zip(quadratic, gaps) if s < 5 or s > 13]
    assert max(middle) <= max(ends), "full steps should be densest around the centre"
    with pytest.raises(ValueError):
        DeepCacheConfig(interval=0)


def test_manager_applies_deepcache_and_refuses_what_does_not_apply(tmp_path):
    manager = PipelineManager(ManagerConfig(tmp_path / "models", tmp_path / "out", tmp_path / "cache", device="cpu", include_hf_cache=False))
    base = dict(model=DEMO_MODEL_NAME, prompt="x", steps=6, width=64, height=64, seed=3, save=False)
    result = manager.generate(GenerationRequest(**base, deepcache_interval=3))
    assert result.hook_stats["deepcache"] == {"full_steps": 2, "cached_steps": 4}
    assert "DeepCache: N=3 B=0 uniform" in result.images[0].infotext
    with pytest.raises(InvalidRequest, match="too deep"):
        manager.generate(GenerationRequest(**base, deepcache_interval=3, deepcache_branch=5))
    with pytest.raises(InvalidRequest, match="DeepCache interval must be between"):
        manager.generate(GenerationRequest(**base, deepcache_interval=0))
    with pytest.raises(ValueError, match="1-step"):
        DeepCacheHook(DeepCacheConfig(interval=2)).attach(manager_pipe(manager), HookContext(1, 64, 64, 1))


def manager_pipe(manager):
    with manager.use(DEMO_MODEL_NAME) as model:
        return model.pipe


def unet_inputs(pipe, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    return sample, torch.tensor(500), text


@pytest.mark.parametrize("branch", range(9))
def test_a_cached_step_on_the_same_input_equals_the_full_unet(pipe, branch):
    """With features kept from the very same input, the shallow path must give the full UNet's
    output: this checks that every branch wires its layers and skip connections as the UNet does."""
    hook = DeepCacheHook(DeepCacheConfig(interval=2, branch=branch))
    context = HookContext(4, 128, 128, 2)
    sample, timestep, text = unet_inputs(pipe)
    with attached(pipe, [hook], context), torch.no_grad():
        full = pipe.unet(sample, timestep, text).sample
        context.step_index = 1  # not a full step: served from the kept features
        cached = pipe.unet(sample, timestep, text).sample
    assert context.stats["deepcache"] == {"full_steps": 1, "cached_steps": 1}
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)


def resnets_run_on_a_cached_step(pipe, branch: int) -> set[str]:
    hook = DeepCacheHook(DeepCacheConfig(interval=2, branch=branch))
    context = HookContext(4, 128, 128, 2)
    ran: set[str] = set()
    handles = [module.register_forward_hook(lambda *_a, name=name: ran.add(name))
               for name, module in pipe.unet.named_modules() if name.rsplit(".", 2)[-2:-1] == ["resnets"]]
    sample, timestep, text = unet_inputs(pipe)
    try:
        with attached(pipe, [hook], context), torch.no_grad():
            pipe.unet(sample, timestep, text)
            ran.clear()
            context.step_index = 1
            pipe.unet(sample, timestep, text)
    finally:
        for handle in handles:
            handle.remove()
    return ran


def test_branches_count_layers_like_the_paper():
    """SD 1.5 layout: branch 0 runs only the last up layer; each branch adds one layer per side."""
    pipeline = build_tiny_sd15_pipeline(unet_channels=(32, 64, 64, 64), sd15_block_layout=True)
    assert resnets_run_on_a_cached_step(pipeline, 0) == {"up_blocks.3.resnets.2"}
    assert resnets_run_on_a_cached_step(pipeline, 1) == {"down_blocks.0.resnets.0", "up_blocks.3.resnets.1", "up_blocks.3.resnets.2"}
    assert resnets_run_on_a_cached_step(pipeline, 3) == {
        "down_blocks.0.resnets.0", "down_blocks.0.resnets.1",
        "up_blocks.2.resnets.2", "up_blocks.3.resnets.0", "up_blocks.3.resnets.1", "up_blocks.3.resnets.2"}


def test_kept_features_never_cross_into_a_resumed_run(pipe):
    """A run that starts mid-schedule (the approximate cache resumes at step K) computes its first
    step in full even when a step of an earlier batch left features of the same shape."""
    hook = DeepCacheHook(DeepCacheConfig(interval=4, branch=0))
    context = HookContext(8, 128, 128, 2)
    sample, timestep, text = unet_inputs(pipe)
    with attached(pipe, [hook], context), torch.no_grad():
        pipe.unet(sample, timestep, text)  # step 0: full
        context.step_index = 1
        pipe.unet(sample, timestep, text)  # step 1: cached
        context.step_index = 5  # a jump: another run resumed at step 5 (not a full step of N=4)
        pipe.unet(sample, timestep, text)
    assert context.stats["deepcache"] == {"full_steps": 2, "cached_steps": 1}


class CountingHook(accelerate_hooks.ModelHook):
    """Stands in for accelerate's CPU-offload hook (`enable_model_cpu_offload` on an 8 GB card):
    whatever DeepCache does, this must run around every UNet call, or an offloaded UNet stays on the CPU."""

    def __init__(self):
        self.pre = self.post = 0

    def pre_forward(self, module, *args, **kwargs):
        self.pre += 1
        return args, kwargs

    def post_forward(self, module, output):
        self.post += 1
        return output


def test_an_accelerate_hook_runs_on_every_step_and_survives_detach(pipe):
    plain, _ = run(pipe, [DeepCacheHook(DeepCacheConfig(interval=3))])
    counting = CountingHook()
    accelerate_hooks.add_hook_to_module(pipe.unet, counting)
    try:
        image, stats = run(pipe, [DeepCacheHook(DeepCacheConfig(interval=3))], steps=8)
        assert stats["deepcache"] == {"full_steps": 3, "cached_steps": 5}
        assert (counting.pre, counting.post) == (8, 8), "the offload hook must wrap full and cached steps alike"
        assert np.array_equal(image, plain)
        # Detached: the accelerate hook is still there and still wraps the UNet.
        assert pipe.unet._hf_hook is counting and not hasattr(pipe.unet, "_diffusers_hook")
        sample, timestep, text = unet_inputs(pipe)
        with torch.no_grad():
            pipe.unet(sample, timestep, text)
        assert counting.pre == 9
    finally:
        accelerate_hooks.remove_hook_from_module(pipe.unet)
        assert pipe.unet.forward.__func__ is type(pipe.unet).forward  # accelerate put back the plain forward
        pipe.unet.__dict__.pop("forward", None)  # (as a bound method; the module-wide fixture wants none)


def test_deepcache_under_accelerate_cpu_offload(pipe):
    """`cpu_offload_with_hook` is what `enable_model_cpu_offload` installs per model; on the CPU it
    runs its real pre_forward (a move to the execution device) on every call."""
    from accelerate import cpu_offload_with_hook

    plain, _ = run(pipe, [DeepCacheHook(DeepCacheConfig(interval=3))])
    _, handle = cpu_offload_with_hook(pipe.unet, execution_device="cpu")
    calls = []
    original = pipe.unet._hf_hook.pre_forward
    pipe.unet._hf_hook.pre_forward = lambda module, *a, **k: (calls.append(1), original(module, *a, **k))[1]
    try:
        image, _ = run(pipe, [DeepCacheHook(DeepCacheConfig(interval=3))], steps=8)
        assert len(calls) == 8 and np.array_equal(image, plain)
    finally:
        handle.remove()
        pipe.unet.__dict__.pop("forward", None)  # accelerate restores the plain forward as a bound method
    assert not hasattr(pipe.unet, "_hf_hook")


def test_registering_a_second_deepcache_on_the_same_unet_says_how_to_fix_it(pipe):
    context = HookContext(4, 64, 64, 1)
    with attached(pipe, [DeepCacheHook()], context):
        with pytest.raises(RuntimeError, match="detach that one first"):
            DeepCacheHook().attach(pipe, context)
    assert "forward" not in pipe.unet.__dict__ and not hasattr(pipe.unet, "_diffusers_hook")
