"""Train the demo model from procedural scenes on the CPU (`python app.py train-demo --out DIR`).

Recipe (chosen by trial runs on a 2-core CPU; the module docstring of `pipelines.demo.model` has
the architecture):
1. VAE: L1 (optionally weighted up near the drawn outlines: `outline_weight`) + an edge loss (L1 between the image gradients of input
   and reconstruction, which keeps shape corners sharp) + a small KL, on random 64x64 crops (the VAE is fully convolutional), in
   bfloat16 autocast and channels-last (many cheap steps beat a wider VAE: see `vae_steps`).
2. The decoder alone is sharpened on whole scenes (the same losses), then the training scenes are encoded once (posterior mean and std, sampled afresh every step).
3. UNet + text encoder together, until `unet_steps` or the deadline: v-prediction on a zero-terminal-SNR schedule,
   in bfloat16 autocast, the learning rate held at its peak for 70 % of the time, the loss weighted up where
   objects are, timesteps drawn more often from the noisier half (80 % from the quieter part once the rate
   anneals: `late_quiet_share`), 10 % empty captions
   (so classifier-free guidance works), each caption in a random phrasing every time, an EMA of
   the UNet weights is what gets saved. If one position axis is still missing at step 5500, an axis phase of
   minimal pairs teaches it (`axis_phase_steps` and the settings after it).
4. The last fifth of the UNet phase is a polish (`polish_share`): the averaged weights, a fresh optimizer, a lower rate and
   the quieter timesteps alone. The shipped weights are one run of this recipe: 60 minutes in all (README "Demo model").
Seeded throughout: the same arguments give the same weights (on the same torch build and threads).
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

LATENT_DOWNSCALE = 8  # the VAE's: a latent pixel is an 8x8 block of the image
UNET_WARMUP = 200  # UNet phase: steps of linear learning-rate warm-up


@dataclass
class TrainConfig:
    seed: int = 0
    scenes: int = 8000
    # VAE steps matter more than its width (trials, 1 thread each, classifier after a round trip, before the
    # decoder phase): 3300 steps all attributes 88.5 %, shape 87 %; 2000 steps (fp32, KL weight 1e-7) 70 %, 65 %; twice the width
    # (32/64/128/128) for 1600 steps in more time 38.5 %. bfloat16 and channels-last make a step 1.6x cheaper.
    vae_steps: int = 4500
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 1e-3
    vae_clip: float = 1.0
    edge_weight: float = 1.0
    # The L1 on pixels within 2 px of an edge of the drawn scene counts this many times a flat one (1: an even
    # L1, the recipe of the shipped weights). With an even L1 the VAE rounds a small star's tips off (a five-sided
    # blob, read as a circle). Round trip of 288 held-out scenes, shape: a VAE trained from scratch with 9 reached
    # 94.5 % (small stars 14 of 25) against the shipped VAE's 88.2 % (0 of 25). But a UNet learns its latents worse:
    # the full run at full speed (2026-12-03, 8042 UNet steps) drew held-out shapes 55.0 % right against the shipped
    # model's 76.8 % (288 prompts), big hearts read as circles, small stars still blobs. So it stays off.
    outline_weight: float = 1.0
    kl_weight: float = 1e-5
    unet_steps: int = 16000  # an upper bound: the deadline (max_minutes) ends the phase, annealed
    decoder_steps: int = 800
    decoder_batch: int = 8
    decoder_lr: float = 5e-4
    decoder_edge_weight: float = 2.0
    # 16 scenes a step: twice the updates of 32 for the same time, and ahead on every object attribute
    # after 14 minutes of UNet (trial runs side by side, 1 thread each: colour 58 vs 47 %, position 28 vs 17 %).
    unet_batch: int = 16
    unet_lr: float = 6e-4
    text_lr: float = 6e-4
    uncond_fraction: float = 0.1
    ema_decay: float = 0.997
    unet_channels: tuple = (64, 96, 128, 128)
    # Two heads per attention layer: the same weights as eight, and 1.4x faster a step on this CPU
    # (head width 32-64 instead of 8-16; measured: 0.66 vs 0.92 s a step at batch 32 on 2 threads).
    unet_heads: int = 2
    # The loss on latent pixels an object or face touches counts this many times a background one:
    # a small shape covers 3 % of the picture, so an even loss spends most of its gradient on flat colour.
    object_weight: float = 3.0
    # This share of the timesteps is drawn from the noisier half, where where, what colour and how big
    # an object is get decided; the rest stay uniform over all 1000.
    high_noise_share: float = 0.5
    # Once the learning rate anneals (`lr_hold`), this share of the timesteps comes from the quieter part
    # [0, quiet_limit) instead (and none are redrawn from the noisier half): where and what colour are
    # learnt by then, a small shape's corners are decided late in sampling, at low noise. Measured on the
    # shipped model, 1733 more steps (16 min, lr 1.5e-4) each way, 150 held-out single shapes: all timesteps
    # from [0, 600) drew shapes 120/150 right (small squares 4/8, small rings 12/13), the shipped mix 111/150
    # (0/8, 11/13), the model before 110/150; positions 148 / 142 / 147 of 150. 0.8: the shipped weights' recipe
    # (README "Demo model"); the polish (`polish_share`, or a run with `--resume-from`) takes 1.
    late_quiet_share: float = 0.8
    quiet_limit: int = 600
    # Once the UNet has learnt one position axis (`axis_response`), it sees only scenes placed along the other
    # (left, right, "left of"; or top, bottom, "above") or not placed at all (faces, the centre), until it has
    # learnt that one too or for at most `axis_phase_steps` steps; then every scene again. One axis is learnt
    # first, at random, and the other then often never (the last 3 full runs; the UNet has no position input,
    # only its zero padding). Measured: the shipped-drawings run that never learnt left/right (vertical 0.60,
    # horizontal 0.01 after 10,204 steps), 2036 more steps on left/right scenes alone: horizontal 0.16 and
    # rising (the last 500 steps); with every scene and the same schedule it stayed at 0.01. But in a run from scratch
    # (3000, README "One axis at a time") 3000 steps of top/bottom scenes alone did not teach that axis. A safety net
    # in the shipped recipe (2000, with the three settings below): a run that has both axes never starts it.
    axis_phase_steps: int = 2000
    # The phase above starts no earlier than this step. Early in a run (one axis learnt at step ~3250) 1000-3000
    # steps of the other axis alone taught it nothing (runs 22 and 25), and later alone did not help either (from
    # step 6000: nothing in 1500 steps); with `axis_phase_restart` from step 5500 it came in 500 (README "The axis
    # phase later, and restarted"). 0: as soon as one axis is learnt; the shipped recipe's 5500.
    axis_phase_from: int = 5500
    # At the phase's start the UNet takes its averaged (EMA) weights and a fresh optimizer, and the learning rate
    # warms up again: the state a resumed run starts from, in which a resumed trial and a whole run (both with
    # `minimal_pairs`, `pair_difference_weight` 1) learnt the missing axis in 500 steps. On in the shipped recipe.
    axis_phase_restart: bool = True
    # Half of every UNet batch is the other half's `minimal_partner`s (the same scene with one caption word
    # changed: the other side, the reversed relation, other hair or skin), with the same caption phrasing, noise
    # and timestep: at pure noise the prompt is all that tells the two apart, so the word's effect is what the
    # pair's loss teaches, not averaged out across unrelated scenes. On every scene it did not teach the second
    # position axis (two full runs, README "Minimal pairs"); with `axis_phase_steps` and `pair_difference_weight` 1 a
    # missing axis came in 500 steps instead of 1750 (resumed trials side by side). On in the shipped recipe, for the
    # axis phase alone (`pairs_in_axis_phase_only`).
    minimal_pairs: bool = True
    # With `minimal_pairs`: the loss also counts the pair's difference, (prediction a - prediction b) against
    # (target a - target b), this many times. The difference is what the changed word should do (an object on the
    # other side), so this multiplies the gradient that teaches it (1: 5x the plain loss's weight on it) without
    # weighting up the background and colour the two share. 0: pairs alone; 1 in the shipped recipe.
    pair_difference_weight: float = 1.0
    # With `minimal_pairs`: pairs only during the axis phase (`axis_phase_steps`), every batch of distinct scenes
    # otherwise. With pairs throughout, both axes came but shape fell to 57.9 % (half as many distinct scenes a step;
    # README "The axis phase later, and restarted"); shape is learnt from every scene, the axis from the pairs.
    pairs_in_axis_phase_only: bool = True
    # Every phase runs its matmuls and convolutions in bfloat16 autocast (weights, optimizer and loss stay
    # float32), the VAE also channels-last: the UNet 1.11x the steps in the same time on this CPU (AVX512-BF16;
    # 0.34 vs 0.38 s a training step, interleaved; the bare forward and backward gain 1.3x), a VAE step 1.6x
    # (0.12 vs 0.20 s at crop 64, batch 16, 2 threads; channels-last alone 1.06x, bfloat16 alone 1.3x).
    # None: only where the CPU computes bfloat16 natively (`native_bf16`). Without it (AVX2 alone: an AMD EPYC,
    # 2026-12-04) bfloat16 is emulated, a UNet step 8.0 s instead of 0.50 s in float32, a VAE step 7.6 instead of
    # 0.46 s: the hour's recipe would take days.
    bf16: bool | None = None
    # The UNet phase's training step through `torch.compile` (inductor, C++ on the CPU), the UNet's parts one by one
    # (CompiledRegions): the UNet's forward and backward 1.16x alone, but the whole training loop 3.5-3.9 steps a second
    # against eager's 4.4 (README "Demo model"). Off: the two hour-long runs that compiled the whole UNet drew held-out
    # shapes 2-3 points worse, and that backward was wrong (torch 2.13: 318 of the 494 weight tensors got exactly no
    # gradient). Needs a C++ compiler.
    compile: bool = False
    # The UNet's learning rate stays at its peak for this share of its time, then anneals (cosine) to 5 %.
    # With a cosine from the start, the model shipped before had learnt left/right but not top/bottom (one
    # axis is learnt first, at random); 400-600 more steps at the peak rate taught it the other axis.
    lr_hold: float = 0.7
    # The last share of the UNet phase is a polish: the averaged (EMA) weights, a fresh optimizer and EMA, a peak
    # rate of `polish_lr` (warm-up, then cosine with no hold) and every timestep from the quieter part (t <
    # `quiet_limit`), the main run annealed to its end before it: the 2026-12-05 weights' second run (`--resume-from`,
    # 12 min) folded into the hour. Shipped since 2026-12-06 (one 60-minute run, 9399 + 2441 UNet steps): on the
    # checker's 288 held-out prompts every target met (shape 90.8 %, all attributes 89.6 %); on two more sets of 288
    # shape 85.6 and 83.4 % (the 72-minute weights before: 91.1 and 86.3 %, 90.0 % on the checker's).
    polish_share: float = 0.2
    polish_lr: float = 1.5e-4
    vae_channels: tuple = (16, 32, 64, 64)
    # One GroupNorm group: GroupNorm subtracts each group's mean over the image, so with 2 channels a
    # group a flat background's colour can only leak through the zero-padded borders (with 8 groups:
    # colours washed out, L1 0.14 after 800 steps); with one group the channel pattern carries it.
    vae_groups: int = 1
    # Two threads on an idle machine (a VAE step 0.21 s vs 0.31 s on one). On 2 cores shared with other
    # work, OpenMP's spinning second thread made steps up to 10x slower: pass --threads 1 there.
    threads: int = 2
    max_minutes: float = 60.0  # a safety stop: the UNet phase ends early (and says so) past this
    vae_from: str | None = None  # a trained VAE folder (an earlier run's vae-phase1): skip the VAE phases
    resume_from: str | None = None  # a finished model folder: train its UNet and text encoder further


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 in hardware (the AVX512-BF16 or AMX-BF16 flag); elsewhere torch emulates
    it, many times slower than float32. False where the flags cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _annealed(step: int, total: int, warmup: int, elapsed: float, hold: float) -> float:
    """How far (0-1) the learning rate's anneal has gone: 0 during the warm-up and until `hold` (0-1) of the rest
    of the phase. `elapsed` (0-1, the share of the phase's time budget used) moves it along too, so a phase cut
    short by the deadline still ends annealed."""
    if step < warmup:
        return 0.0
    progress = max((step - warmup) / max(1, total - warmup), elapsed)
    return min(1.0, max(0.0, progress - hold) / max(1e-9, 1.0 - hold))


def _lr_factor(step: int, total: int, warmup: int = 100, elapsed: float = 0.0, hold: float = 0.0) -> float:
    """Linear warm-up, the peak rate until `hold` (0-1) of the phase, then cosine down to 5 %."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * _annealed(step, total, warmup, elapsed, hold))) * 0.95 + 0.05


@dataclass
class UNetSchedule:
    """Where the UNet phase stands at a step: its learning-rate factor and its share of quieter timesteps. The main
    run warms up, holds its peak for `lr_hold` of its time and anneals (cosine to 5 %) by the polish's start; the
    polish (the last `polish_share` of the phase, by steps or time, whichever comes first) warms up again to
    `polish_lr` and anneals over what is left, every timestep from the quieter part."""

    config: TrainConfig
    budget_s: float  # the phase's time until the deadline
    polish_step: int | None = None  # the step the polish began at
    polish_s: float = 0.0  # the phase's seconds when it began

    @property
    def main_share(self) -> float:
        return 1.0 - self.config.polish_share

    def polish_due(self, step: int, seconds: float) -> bool:
        """Whether the polish begins at this step (once)."""
        if self.config.polish_share <= 0 or self.polish_step is not None:
            return False
        return max(step / self.config.unet_steps, seconds / self.budget_s) >= self.main_share

    def begin_polish(self, step: int, seconds: float) -> None:
        self.polish_step, self.polish_s = step, seconds

    def at(self, step: int, seconds: float) -> tuple[float, float]:
        """(learning-rate factor of the recipe's peak, share of timesteps from the quieter part)."""
        config = self.config
        if self.polish_step is None:
            steps, elapsed = round(config.unet_steps * self.main_share), seconds / (self.budget_s * self.main_share)
            annealing = _annealed(step, steps, UNET_WARMUP, elapsed, config.lr_hold) > 0
            return _lr_factor(step, steps, UNET_WARMUP, elapsed, config.lr_hold), config.late_quiet_share if annealing else 0.0
        into, steps = step - self.polish_step, max(1, config.unet_steps - self.polish_step)
        elapsed = (seconds - self.polish_s) / max(1e-9, self.budget_s - self.polish_s)
        annealing = _annealed(into, steps, UNET_WARMUP, elapsed, 0.0) > 0
        return config.polish_lr / config.unet_lr * _lr_factor(into, steps, UNET_WARMUP, elapsed, 0.0), 1.0 if annealing else 0.0


# The UNet's parts compiled one by one for the training step (regional compiling, as diffusers' `compile_repeated_blocks`).
# Compiling the whole UNet (torch 2.13, inductor on the CPU) gave 318 of its 494 weight tensors exactly no gradient:
# compiled alone, the up block that takes the deepest skip connections left 82 of them (the last down blocks) at zero.
# Each ResNet block and transformer compiled alone gives every tensor its gradient, 0.37 % off float32's (eager
# bfloat16: 1.9 %), at 197-201 instead of 228-234 ms for the UNet's forward and backward (batch 16, the shipped
# weights, interleaved blocks of 20; the whole UNet compiled: 1.30x, but wrong).
COMPILED_REGIONS = ("ResnetBlock2D", "Transformer2DModel")


class CompiledRegions:
    """Within `with`, each of the UNet's COMPILED_REGIONS is replaced by its `torch.compile`d twin (sharing its
    weights); outside, the UNet is the plain one again, so the axis probe, the EMA and saving never see a compiled
    module (no eval-mode graph is compiled, no `_orig_mod.` key is saved). The backward of a forward run inside
    goes through the compiled code."""

    def __init__(self, unet):
        import torch
        import torch._dynamo.config

        # one region's code, many shapes: each shape is its own compile, more than dynamo's default limit of 8
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self.swaps = []  # (parent, child name, plain module, compiled module)
        for name, module in unet.named_modules():
            if type(module).__name__ in COMPILED_REGIONS:
                parent_name, _, child = name.rpartition(".")
                self.swaps.append((unet.get_submodule(parent_name), child, module, torch.compile(module)))

    def __enter__(self):
        for parent, child, _plain, compiled in self.swaps:
            parent._modules[child] = compiled
        return self

    def __exit__(self, *exc):
        for parent, child, plain, _compiled in self.swaps:
            parent._modules[child] = plain
        return False


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, mininterval=2.0)


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _edge_loss(a, b):
    import torch

    dxa, dya = a[..., :, 1:] - a[..., :, :-1], a[..., 1:, :] - a[..., :-1, :]
    dxb, dyb = b[..., :, 1:] - b[..., :, :-1], b[..., 1:, :] - b[..., :-1, :]
    return torch.mean(torch.abs(dxa - dxb)) + torch.mean(torch.abs(dya - dyb))


def _outline(batch):
    """1 on pixels within 2 px of an edge of the drawn scene (a step of more than 0.15 in any channel, on the
    -1..1 scale, to a neighbour: object and face outlines, not a gradient background's slope), else 0."""
    import torch.nn.functional as F

    dx = (batch[..., :, 1:] - batch[..., :, :-1]).abs().amax(1, keepdim=True)
    dy = (batch[..., 1:, :] - batch[..., :-1, :]).abs().amax(1, keepdim=True)
    steps = F.pad(dx, (0, 1, 0, 0)) + F.pad(dy, (0, 0, 0, 1))
    return F.max_pool2d((steps > 0.15).float(), 5, stride=1, padding=2)


def _outline_l1(recon, batch, outline_weight: float):
    """L1 with pixels near an outline weighted `outline_weight` times, normalised to the weights' sum."""
    import torch

    if outline_weight == 1.0:
        return torch.mean(torch.abs(recon - batch))  # exactly the even L1 (the same sums as before the option)
    weights = 1.0 + (outline_weight - 1.0) * _outline(batch)
    return torch.sum(weights * torch.abs(recon - batch)) / (torch.sum(weights) * batch.shape[1])


def _crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size crop, most often centred on a pixel that differs from the corner (an object's),
    since most of a scene is flat background and shapes are what the VAE must keep sharp."""
    limit = image.shape[0] - size
    if limit <= 0:
        return image
    if rng.random() < 0.75:
        ys, xs = np.nonzero(np.abs(image.astype(np.int16) - image[0, 0].astype(np.int16)).sum(axis=2) > 60)
        if len(ys):
            pick = rng.integers(len(ys))
            y = int(np.clip(ys[pick] - size // 2, 0, limit))
            x = int(np.clip(xs[pick] - size // 2, 0, limit))
            return image[y:y + size, x:x + size]
    y, x = rng.integers(0, limit + 1, size=2)
    return image[y:y + size, x:x + size]


def _kl(posterior):
    """The posterior's KL to N(0, 1), in float32 (under autocast its parameters are bfloat16), summed over
    a sample's latent and averaged over the batch."""
    import torch

    mean, logvar = posterior.mean.float(), posterior.logvar.float()
    return torch.mean(0.5 * torch.sum(mean * mean + torch.exp(logvar) - 1.0 - logvar, dim=(1, 2, 3)))


def _round_trip(vae, batch, bf16: bool, train_encoder: bool = True):
    """Encode, sample the posterior, decode (bfloat16 autocast, channels-last): the posterior and the float32
    reconstruction. Without `train_encoder` no gradient reaches the encoder (the decoder phase)."""
    import torch

    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            posterior = vae.encode(batch).latent_dist
            latents = posterior.mean + posterior.std * torch.randn_like(posterior.std)
        return posterior, vae.decode(latents).sample.float()


def train_vae(vae, images: np.ndarray, config: TrainConfig, log) -> None:
    import torch

    generator = np.random.default_rng(config.seed + 1)
    with torch.no_grad():
        # Start with a small posterior std (log-variance -8): at the default 1 the decoder sees mostly
        # noise and the first few hundred steps learn little (measured: L1 0.4 -> 0.13 in 350 steps).
        vae.quant_conv.bias[vae.config.latent_channels:] = -8.0
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    vae.train()
    vae.to(memory_format=torch.channels_last)
    crop = config.vae_crop
    with _progress(config.vae_steps, "VAE") as bar:
        for step in range(config.vae_steps):
            index = generator.integers(len(images), size=config.vae_batch)
            batch = _to_tensor(np.stack([_crop(images[i], crop, generator) for i in index]))
            posterior, recon = _round_trip(vae, batch, config.bf16)
            l1 = torch.mean(torch.abs(recon - batch))
            edge = _edge_loss(recon, batch)
            kl = _kl(posterior)
            loss = _outline_l1(recon, batch, config.outline_weight) + config.edge_weight * edge + config.kl_weight * kl
            for group in optimizer.param_groups:
                group["lr"] = config.vae_lr * _lr_factor(step, config.vae_steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), config.vae_clip)
            optimizer.step()
            bar.update(1)
            if step % 25 == 0 or step == config.vae_steps - 1:
                bar.set_postfix(l1=f"{l1.item():.4f}", edge=f"{edge.item():.4f}")
                log({"phase": "vae", "step": step, "l1": l1.item(), "edge": edge.item(), "kl": kl.item()})
    vae.eval()


def position_axis(scene) -> str:
    """The axis a scene's caption places things along: "horizontal", "vertical", "both" (a corner) or ""
    (a face, a shape in the centre)."""
    from pipelines.demo import scenes

    if scene.kind == "face":
        return ""
    if scene.kind == "pair":
        return "horizontal" if scene.relation in ("left of", "right of") else "vertical"
    column, row = scenes.POSITIONS[scene.objects[0].position]
    return {(False, False): "", (True, False): "horizontal", (False, True): "vertical", (True, True): "both"}[(column != 1, row != 1)]


def render_scenes(config: TrainConfig) -> tuple[np.ndarray, list[list[str]], np.ndarray, np.ndarray]:
    """The training scenes (none held out), every phrasing of each caption, which latent pixels (8x8 image
    blocks) each scene's objects or face touch (bool N x 16 x 16), and each scene's `position_axis`.
    With `minimal_pairs` N is twice `scenes`: scene i + `scenes` is scene i's `minimal_partner`, drawn with the
    same jitter and background (the first `scenes` are the same as without pairs)."""
    from pipelines.demo import scenes

    rng = np.random.default_rng(config.seed)
    partner_rng = np.random.default_rng(config.seed + 5)
    count = config.scenes * (2 if config.minimal_pairs else 1)
    images = np.empty((count, scenes.SIZE, scenes.SIZE, 3), np.uint8)
    side = scenes.SIZE // LATENT_DOWNSCALE
    touched = np.empty((count, side, side), bool)
    drawn, render_states = [], []
    for index in range(config.scenes):
        drawn.append(scenes.random_scene(rng, held_out=False))
        render_states.append(rng.bit_generator.state)
        images[index], touched[index] = _draw(drawn[-1], rng, side)
    for index in range(config.scenes, count):
        original = index - config.scenes
        drawn.append(scenes.minimal_partner(drawn[original], partner_rng))
        same_jitter = np.random.default_rng()
        same_jitter.bit_generator.state = render_states[original]
        images[index], touched[index] = _draw(drawn[-1], same_jitter, side)
    captions = [[scenes.caption(scene, scenes.FixedStyle(style)) for style in range(scenes.CAPTION_STYLES)] for scene in drawn]
    return images, captions, touched, np.array([position_axis(scene) for scene in drawn])


def _draw(scene, rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene's image and the latent pixels its objects touch (coverage above 5 % in the 8x8 block)."""
    from pipelines.demo import scenes

    image, coverage = scenes.render_with_mask(scene, rng)
    return image, coverage.reshape(side, LATENT_DOWNSCALE, side, LATENT_DOWNSCALE).max(axis=(1, 3)) > 0.05


AXIS_LEARNT = 0.25  # `axis_response` on EDGE_PROBES above this: the axis is learnt (0.36-0.43 when it is, 0.01 when not)


class AxisCurriculum:
    """Which scenes the UNet draws from (`TrainConfig.axis_phase_steps`): every scene until one position axis
    is learnt; then only scenes placed along the other axis (or not placed: faces, the centre) until that is
    learnt too, or for at most `phase_steps`; then every scene again. The phase starts no earlier than step
    `phase_from` (`TrainConfig.axis_phase_from`)."""

    def __init__(self, axes: np.ndarray, phase_steps: int, phase_from: int = 0):
        self.axes = axes
        self.phase_steps = phase_steps
        self.phase_from = phase_from
        self.missing: str | None = None  # the axis taught alone, during its phase
        self.finished = phase_steps <= 0
        self.phase_start = 0
        self._pool = np.arange(len(axes))  # kept between phase changes: the training loop asks every step

    @property
    def positions(self) -> str:
        return self.missing or "all"

    def pool(self) -> np.ndarray:
        return self._pool

    def _teach_alone(self, axis: str | None) -> None:
        self.missing = axis
        self._pool = np.arange(len(self.axes)) if axis is None else np.flatnonzero((self.axes == "") | (self.axes == axis))

    def advance(self, step: int, response: dict[str, float] | None = None) -> None:
        """After `step`, with `response` (`axis_response` on EDGE_PROBES) when it was measured."""
        if self.finished:
            return
        if self.missing is None:
            learnt = [axis for axis, value in (response or {}).items() if value >= AXIS_LEARNT]
            if len(learnt) == 1 and step + 1 >= self.phase_from:
                self._teach_alone("vertical" if learnt[0] == "horizontal" else "horizontal")
                self.phase_start = step + 1
            self.finished = len(learnt) == 2
        elif (response is not None and response[self.missing] >= AXIS_LEARNT) or step + 1 - self.phase_start >= self.phase_steps:
            self._teach_alone(None)
            self.finished = True


def finetune_decoder(vae, images: np.ndarray, config: TrainConfig, log) -> None:
    """Sharpen the decoder alone (the encoder, hence the latents the UNet learnt, stay as they are):
    whole scenes, L1 + edge loss. The VAE phase leaves edges soft and colours a little washed out."""
    import torch

    generator = np.random.default_rng(config.seed + 4)
    torch.manual_seed(config.seed + 4)
    vae.requires_grad_(False)
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=config.decoder_lr, weight_decay=0.0)
    vae.decoder.train()
    with _progress(config.decoder_steps, "decoder") as bar:
        for step in range(config.decoder_steps):
            index = generator.integers(len(images), size=config.decoder_batch)
            batch = _to_tensor(images[index])
            _, recon = _round_trip(vae, batch, config.bf16, train_encoder=False)
            l1 = torch.mean(torch.abs(recon - batch))
            edge = _edge_loss(recon, batch)
            loss = _outline_l1(recon, batch, config.outline_weight) + config.decoder_edge_weight * edge
            for group in optimizer.param_groups:
                group["lr"] = config.decoder_lr * _lr_factor(step, config.decoder_steps, warmup=50)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.vae_clip)
            optimizer.step()
            bar.update(1)
            if step % 25 == 0 or step == config.decoder_steps - 1:
                bar.set_postfix(l1=f"{l1.item():.4f}", edge=f"{edge.item():.4f}")
                log({"phase": "decoder", "step": step, "l1": l1.item(), "edge": edge.item()})
    vae.requires_grad_(True)
    vae.eval()


def encode_scenes(vae, images: np.ndarray, batch: int = 64):
    """Posterior means and stds of every scene, float32 N x 4 x 16 x 16 each."""
    import torch

    means, stds = [], []
    with torch.no_grad(), _progress(len(images), "encode") as bar:
        for start in range(0, len(images), batch):
            posterior = vae.encode(_to_tensor(images[start:start + batch])).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
            bar.update(min(batch, len(images) - start))
    return torch.cat(means), torch.cat(stds)


def tokenize_captions(tokenizer, captions_per_scene: list[list[str]]):
    """int64 N x styles x 77 token ids."""
    import torch

    styles = len(captions_per_scene[0])
    flat = [text for captions in captions_per_scene for text in captions]
    ids = tokenizer(flat, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return ids.view(len(captions_per_scene), styles, -1).to(torch.long)


def sample_timesteps(count: int, high_noise_share: float, total: int, generator, quiet_share: float = 0.0, quiet_limit: int = 600):
    """Uniform timesteps, a `high_noise_share` of them redrawn from the noisier half [total/2, total), or
    (`quiet_share` > 0) a `quiet_share` of them from the quieter part [0, quiet_limit) instead."""
    import torch

    t = torch.randint(0, total, (count,), generator=generator)
    if quiet_share > 0:
        quieter = torch.randint(0, quiet_limit, (count,), generator=generator)
        return torch.where(torch.rand(count, generator=generator) < quiet_share, quieter, t)
    noisier = torch.randint(total // 2, total, (count,), generator=generator)
    return torch.where(torch.rand(count, generator=generator) < high_noise_share, noisier, t)


def loss_weights(touched, object_weight: float):
    """Per latent pixel: `object_weight` where an object or face is, 1 elsewhere (N x 1 x 16 x 16)."""
    return 1.0 + (object_weight - 1.0) * touched.unsqueeze(1).float()


AXIS_PROBES = {"vertical": ("in the top left corner", "in the bottom left corner"),
               "horizontal": ("in the top left corner", "in the top right corner")}
# The same along each axis alone: the axis curriculum's phases show no corners
EDGE_PROBES = {"vertical": ("at the top", "at the bottom"), "horizontal": ("on the left", "on the right")}
AXIS_PROBE_OBJECTS = (("yellow", "circle", "a white"), ("red", "square", "a navy"), ("blue", "heart", "a cream"))


def axis_response(unet, text_encoder, tokenizer, probes: dict = AXIS_PROBES) -> dict[str, float]:
    """How much the UNet's first-step prediction (t = 999, pure noise in) changes when the prompt's
    position moves along each axis, relative to the prediction's size (about 0.4 when the axis is learnt,
    about 0.01 when it is not). Logged while training: the two axes are learnt one after the other."""
    import torch

    prompts = [f"a big {colour} {shape} {where} on {background} background" for colour, shape, background in AXIS_PROBE_OBJECTS
               for pair in probes.values() for where in pair]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    noise = torch.randn((1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = unet(noise.expand(len(prompts), -1, -1, -1), torch.full((len(prompts),), 999), text_encoder(ids)[0]).sample
    v = v.view(len(AXIS_PROBE_OBJECTS), len(probes), 2, *v.shape[1:])  # objects x axes x (one end, the other) x latent
    change = (v[:, :, 0] - v[:, :, 1]).abs().mean(dim=(0, 2, 3, 4)) / v.abs().mean()
    return {axis: round(float(value), 3) for axis, value in zip(probes, change)}


@dataclass
class UNetBatch:
    index: np.ndarray  # which training scenes
    ids: object  # their caption token ids (empty for the dropped ones)
    latents: object  # sampled from each scene's posterior, scaled
    noise: object
    timesteps: object
    dropped: np.ndarray  # whose caption was dropped (empty), for classifier-free guidance


def pair_difference_loss(error, weights, dropped: np.ndarray):
    """The squared difference of the two halves' errors (a minimal pair: same noise and timestep, one word apart),
    weighted where either scene has an object; pairs whose captions were both dropped tell nothing and are left out."""
    import torch

    half = error.shape[0] // 2
    kept = torch.from_numpy(~dropped[:half])
    if not kept.any():
        return error.new_zeros(())
    difference = (error[:half] - error[half:])[kept]
    where = torch.maximum(weights[:half], weights[half:])[kept]
    return torch.mean(where * difference**2) / torch.mean(where)


def draw_batch(pool: np.ndarray, partners: int, token_ids, empty, means, stds, scaling: float, config: TrainConfig, picker,
               generator, total_timesteps: int, quiet_share: float) -> UNetBatch:
    """One UNet batch from `pool`. With `partners` (0: unpaired) the second half is the first half's partners (scene
    index + `partners`) with the same phrasing, dropped caption, noise and timestep. The random draws come in
    the order of the recipe before pairs existed, so its runs reproduce."""
    import torch

    drawn = config.unet_batch // 2 if partners else config.unet_batch
    index = pool[picker.integers(len(pool), size=drawn)]
    style = picker.integers(token_ids.shape[1], size=drawn)
    drop = picker.random(drawn) < config.uncond_fraction
    if partners:
        index, style, drop = np.concatenate([index, index + partners]), np.tile(style, 2), np.tile(drop, 2)
    ids = token_ids[index, style].clone()
    ids[torch.from_numpy(drop)] = empty
    eps = torch.randn(means[index].shape, generator=generator)
    latents = (means[index] + stds[index] * eps) * scaling
    noise = torch.randn((drawn, *latents.shape[1:]), generator=generator)
    t = sample_timesteps(drawn, config.high_noise_share, total_timesteps, generator,
                         quiet_share=quiet_share, quiet_limit=config.quiet_limit)
    if partners:
        noise, t = noise.repeat(2, 1, 1, 1), t.repeat(2)
    return UNetBatch(index, ids, latents, noise, t, drop)


def _unet_optimizer(unet, text_encoder, config: TrainConfig):
    import torch

    return torch.optim.AdamW([
        {"params": unet.parameters(), "lr": config.unet_lr, "base": config.unet_lr},
        {"params": text_encoder.parameters(), "lr": config.text_lr, "base": config.text_lr},
    ], weight_decay=0.01, fused=True)


def _restarted_from_average(unet, ema, text_encoder, config: TrainConfig):
    """The UNet takes its averaged (EMA) weights; returns a fresh optimizer: the state a resumed run starts from."""
    unet.load_state_dict(ema.state_dict())
    return _unet_optimizer(unet, text_encoder, config)


def train_unet(unet, text_encoder, tokenizer, means, stds, token_ids, touched, axes, scaling: float, config: TrainConfig, log,
               deadline: float) -> dict:
    import copy

    import torch
    from diffusers import DDPMScheduler
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pipelines.demo.model import SCHEDULER_CONFIG

    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "steps_offset"})
    generator = torch.Generator().manual_seed(config.seed + 2)
    picker = np.random.default_rng(config.seed + 3)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids[0]
    # The fused AdamW and the plain-matmul attention (its backward: CPU flash attention's is 8x its forward
    # here) make a step 1.1x cheaper on this CPU (270 vs 300 ms at batch 16, 2 threads); the same algorithm, other rounding.
    optimizer = _unet_optimizer(unet, text_encoder, config)
    ema = copy.deepcopy(unet).requires_grad_(False)
    unet.train()
    text_encoder.train()
    partners = config.scenes if config.minimal_pairs else 0  # scene i's partner is scene i + partners
    curriculum = AxisCurriculum(axes[:config.scenes], config.axis_phase_steps, config.axis_phase_from)
    edges = None  # the curriculum's measurement, every 250 steps while it has phases left
    done, stopped_early = 0, False
    smoothed = None
    started = time.monotonic()
    schedule = UNetSchedule(config, max(1.0, deadline - started))
    # The training step's forward alone goes through the compiled regions (CompiledRegions); the text encoder stays eager.
    compiled = CompiledRegions(unet) if config.compile else contextlib.nullcontext()
    with _progress(config.unet_steps, "UNet+text") as bar:
        for step in range(config.unet_steps):
            if time.monotonic() > deadline:
                stopped_early = True
                break
            positions, pool = curriculum.positions, curriculum.pool()
            paired = partners if curriculum.missing or not config.pairs_in_axis_phase_only else 0
            if config.axis_phase_restart and curriculum.missing and step == curriculum.phase_start:
                optimizer = _restarted_from_average(unet, ema, text_encoder, config)
            seconds = time.monotonic() - started
            if schedule.polish_due(step, seconds):  # as the resumed run of the 2026-12-05 weights started
                optimizer = _restarted_from_average(unet, ema, text_encoder, config)
                schedule.begin_polish(step, seconds)  # the EMA averages afresh from here
            factor, quiet_share = schedule.at(step, seconds)
            batch = draw_batch(pool, paired, token_ids, empty, means, stds, scaling, config, picker, generator,
                               noise_scheduler.config.num_train_timesteps, quiet_share)
            index, ids, latents, noise, t = batch.index, batch.ids, batch.latents, batch.noise, batch.timesteps
            noisy = noise_scheduler.add_noise(latents, noise, t)
            target = noise_scheduler.get_velocity(latents, noise, t)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16), sdpa_kernel(SDPBackend.MATH), compiled:
                hidden = text_encoder(ids)[0]
                pred = unet(noisy, t, hidden).sample
            weights = loss_weights(touched[index], config.object_weight)
            error = pred.float() - target
            loss = torch.mean(weights * error**2) / torch.mean(weights)
            if paired and config.pair_difference_weight > 0:
                loss = loss + config.pair_difference_weight * pair_difference_loss(error, weights, batch.dropped)
            if config.axis_phase_restart and curriculum.phase_start:
                factor *= min(1.0, (step + 1 - curriculum.phase_start) / UNET_WARMUP)  # warmed up again after the restart
            for group in optimizer.param_groups:
                group["lr"] = group["base"] * factor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
            optimizer.step()
            averaged = step - (schedule.polish_step or 0)  # steps since the EMA (re)started
            decay = min(config.ema_decay, (1 + averaged) / (10 + averaged))
            with torch.no_grad():
                for e, p in zip(ema.parameters(), unet.parameters()):
                    e.lerp_(p, 1 - decay)
            done = step + 1
            smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
            bar.update(1)
            if step % 25 == 0 or step == config.unet_steps - 1:
                bar.set_postfix(loss=f"{smoothed:.4f}")
                record = {"phase": "unet", "step": step, "loss": loss.item(), "smoothed": smoothed, "lr_factor": round(factor, 4),
                          "positions": positions,
                          "quiet_timesteps": quiet_share, "polish": schedule.polish_step is not None}
                if step % 250 == 0:
                    record["axis_response"] = axis_response(unet, text_encoder, tokenizer)
                    if not curriculum.finished:
                        edges = record["edge_response"] = axis_response(unet, text_encoder, tokenizer, EDGE_PROBES)
                log(record)
            curriculum.advance(step, edges)
            edges = None
    unet.load_state_dict(ema.state_dict())
    unet.eval()
    text_encoder.eval()
    return {"unet_steps_done": done, "polish_from_step": schedule.polish_step, "stopped_early": stopped_early, "final_loss_smoothed": smoothed,
            "axis_response": axis_response(unet, text_encoder, tokenizer)}


def _trained_vae(folder: Path, timings: dict):
    """A VAE from an earlier run's `vae-phase1` (or a model's `vae/`): its two phases are skipped and the
    time they took there is carried over, so `total_s` stays the cost of the whole recipe."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=None).float().eval()
    log_file = folder.parent / "train_log.jsonl"
    if log_file.is_file():
        seconds = [json.loads(line)["seconds"] for line in log_file.read_text().splitlines() if '"phase": "decoder"' in line]
        timings["vae_and_decoder_s_in_earlier_run"] = seconds[-1] if seconds else None
    timings["vae_from"] = str(folder)
    return vae


def _trained_unet_and_text(folder: Path):
    """A finished model's text encoder and UNet in fp32, to train further."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").float()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").float()
    return text_encoder, unet


def train(out: Path, config: TrainConfig | None = None) -> dict:
    """Train every part and write the diffusers folder to `out`; returns the training facts."""
    import torch

    from pipelines.demo import model, scenes

    recipe = config or TrainConfig()  # what training.json records; `bf16` resolved for this CPU below
    config = replace(recipe, bf16=native_bf16() if recipe.bf16 is None else recipe.bf16)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    log_file = log_path.open("w")
    start = time.monotonic()
    deadline = start + config.max_minutes * 60

    def log(record: dict) -> None:
        record["seconds"] = round(time.monotonic() - start, 1)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    print("bfloat16 autocast" if config.bf16 else "float32 throughout" + (" (this CPU has no native bfloat16)" if recipe.bf16 is None else ""), flush=True)
    print(f"rendering {config.scenes} scenes", flush=True)
    images, captions, touched, axes = render_scenes(config)
    timings = {"render_s": round(time.monotonic() - start, 1)}

    words = scenes.vocabulary()
    tokenizer = model.build_tokenizer(words)
    earlier = None
    if config.resume_from:  # a finished model: its VAE, and the UNet and text encoder to train further
        earlier = json.loads((Path(config.resume_from) / "training.json").read_text())
        vae = _trained_vae(Path(config.resume_from) / "vae", timings)
    elif config.vae_from:
        vae = _trained_vae(Path(config.vae_from), timings)
    else:
        vae = model.build_vae(config.seed, config.vae_channels, config.vae_groups)
        phase = time.monotonic()
        train_vae(vae, images[:config.scenes], config, log)  # the partners add nothing new to draw
        timings["vae_s"] = round(time.monotonic() - phase, 1)
        # The decoder is sharpened before the UNet trains: it leaves the encoder (so the latents the UNet
        # learns) unchanged, and the UNet phase then gets whatever time is left before the deadline.
        phase = time.monotonic()
        finetune_decoder(vae, images[:config.scenes], config, log)
        timings["decoder_s"] = round(time.monotonic() - phase, 1)
        vae.save_pretrained(out / "vae-phase1")  # inspectable while the UNet trains; `--vae-from` resumes from it

    phase = time.monotonic()
    means, stds = encode_scenes(vae, images)
    # Resuming keeps the scale the UNet learnt with (the fp16-saved VAE encodes a hair differently).
    scaling = earlier["scaling_factor"] if earlier else float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    timings["encode_s"] = round(time.monotonic() - phase, 1)

    if earlier:
        text_encoder, unet = _trained_unet_and_text(Path(config.resume_from))
    else:
        text_encoder = model.build_text_encoder(tokenizer, config.seed)
        unet = model.build_unet(config.seed, config.unet_channels, heads=config.unet_heads)
    token_ids = tokenize_captions(tokenizer, captions)
    phase = time.monotonic()
    result = train_unet(unet, text_encoder, tokenizer, means, stds, token_ids, torch.from_numpy(touched), axes, scaling, config, log, deadline)
    timings["unet_s"] = round(time.monotonic() - phase, 1)
    timings["total_s"] = round(time.monotonic() - start, 1)
    log_file.close()

    facts = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(recipe).items()}, "timings": timings,
             "scaling_factor": scaling, "torch": torch.__version__, "bf16_autocast": config.bf16, **result}
    if earlier:  # the whole history: this phase on top of the run it resumed
        facts["resumed"] = earlier
        facts["unet_steps_total"] = earlier.get("unet_steps_total", earlier["unet_steps_done"]) + result["unet_steps_done"]
    model.save_fp16(model.assemble(vae, text_encoder, tokenizer, unet), out, facts)
    shutil.rmtree(out / "vae-phase1", ignore_errors=True)
    print(json.dumps(facts, indent=2), flush=True)
    return facts
