"""Accelerations and injections that attach to a pipeline for one generation and detach after.

Every hook (DeepCache, FLUX block caches, PuLID injection, the true-CFG gate) has the same small
interface, `GenerationHook`; `attached(...)` attaches a list of them and always detaches them, in
reverse order, even when the generation fails or is stopped. The approximate latent cache changes
a run's inputs (starting latents, schedule), not the model, so it lives in pipelines/caches/.
"""
from pipelines.hooks.base import GenerationHook, HookContext, attached, hook_cache_keys

__all__ = ["GenerationHook", "HookContext", "attached", "hook_cache_keys"]
