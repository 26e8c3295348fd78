"""A1111's *Token merging ratio* (ToMe for Stable Diffusion, the `tomesd` package), for one generation.

Before each self-attention of the UNet's full-resolution transformer blocks, the most similar tokens are merged
(bipartite soft matching: a quarter of them, one per 2x2 patch, are the destinations), so the attention runs on
fewer tokens; after it they are copied back out. `ratio` is the share of the tokens merged: 0.5 halves them. The
attention at full resolution is the UNet's costliest part at large sizes, so the gain grows with the picture; the
picture changes a little (README "Token merging" has both, measured).

`tomesd` swaps the class of each `BasicTransformerBlock` for its merging subclass and puts a forward pre-hook on the
UNet (to read the latent size); `remove_patch` undoes both. It patches nothing else, so the other hooks' wrappers
(DeepCache on the UNet's forward, PuLID's attention processors, PEFT's LoRA layers) stay as they are. A1111's own
settings are used: merging before self-attention only, no random destinations (`use_rand=False`: the same seed
gives the same picture), full-resolution blocks only (`max_downsample=1`).

FLUX.1's transformer has no such blocks: the request refuses token merging there.
"""
from __future__ import annotations

from pipelines.hooks.base import HookContext

TOKEN_MERGING_HOOK = "token merging"
MERGED_BLOCK_CLASS = "ToMeBlock"  # the class name tomesd gives its patched blocks


class TokenMergingHook:
    name = TOKEN_MERGING_HOOK

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._unet = None

    def cache_key(self):
        return ("tome", self.ratio)

    def attach(self, pipe, context: HookContext | None = None) -> None:
        import tomesd

        if self._unet is not None:
            raise RuntimeError("TokenMergingHook is already attached; detach it first (pipelines.hooks.attached does).")
        self._unet = pipe.unet
        tomesd.apply_patch(pipe.unet, ratio=self.ratio, max_downsample=1, sx=2, sy=2, use_rand=False, merge_attn=True,
                           merge_crossattn=False, merge_mlp=False)
        if context is not None:
            context.stats[self.name] = {"ratio": self.ratio, "blocks": len(merged_blocks(pipe.unet))}

    def detach(self, pipe) -> None:
        import tomesd

        if self._unet is not None:
            tomesd.remove_patch(self._unet)
            self._unet = None


def merged_blocks(unet) -> list:
    """The UNet's transformer blocks that merge tokens now (tomesd patches every one; those below full resolution
    merge nothing with max_downsample=1)."""
    return [module for module in unet.modules() if type(module).__name__ == MERGED_BLOCK_CLASS]
