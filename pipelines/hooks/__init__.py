"""Accelerations and injections that attach to a pipeline for one generation and detach after.

Every hook (DeepCache, FLUX block caches, the approximate latent cache, PuLID injection) has the
same small interface, `GenerationHook`; `attached(...)` attaches a list of them and always detaches
them, in reverse order, even when the generation fails or is stopped.
"""
from pipelines.hooks.base import GenerationHook, HookContext, attached

__all__ = ["GenerationHook", "HookContext", "attached"]
