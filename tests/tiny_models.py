"""Test helpers over the tiny pipelines of `pipelines.bench.tiny_models` (built there, so the CPU
benchmarks can use them too): copying saved models into a models folder, config-only sidecars,
FLUX's single-file split at tiny width, small requests per family, and what the denoiser reads per call.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from pipelines.bench.tiny_models import (  # noqa: F401  (re-exported for the tests)
    BUILDERS, CLIP_VOCAB, FAMILIES, FLUX_TRANSFORMER, SAMPLERS, SIZES, T5_WORDS, XL_PROJ, XL_TE1, XL_TE2, XL_TIME,
    _clip_config, build_t5_tokenizer, build_tiny_flux, build_tiny_flux_transformer, build_tiny_sd15, build_tiny_sdxl,
    save_tiny_pipeline, seeded, tiny_vae,
)


def save_config_only(pipe, folder: Path) -> Path:
    """A diffusers folder without weights or tokenizers: the `<stem>.config/` sidecar of a single file."""
    folder = save_tiny_pipeline(pipe, folder)
    for path in list(folder.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".bin"):
            path.unlink()
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(folder / name, ignore_errors=True)
    return folder


def copy_model(source: Path, models_dir: Path, name: str) -> Path:
    """Copy a saved tiny model into a models folder (os.walk does not follow folder symlinks)."""
    target = Path(models_dir) / name
    shutil.copytree(source, target)
    return target


class TorchWithTinyFluxWidth:
    """`torch` as diffusers' single-file converter sees it, except `torch.split` of FLUX's `linear1`.

    diffusers' `convert_flux_transformer_checkpoint_to_diffusers` splits `single_blocks.N.linear1`
    with FLUX.1's fixed sizes (3072, 3072, 3072, 12288). A tiny transformer has the same
    [q, k, v, 4x mlp] structure at a smaller width; this proxy rescales exactly that split. It is
    a test-only stand-in for the full width (installed with monkeypatch on
    `diffusers.loaders.single_file_utils.torch`), not a change to the engine.
    """

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def split(tensor, sizes, dim=0):
        if isinstance(sizes, (list, tuple)) and tuple(sizes) == (3072, 3072, 3072, 12288) and tensor.shape[dim] != sum(sizes):
            width, remainder = divmod(tensor.shape[dim], 7)
            assert remainder == 0, "linear1 is not [q, k, v, 4x mlp]"
            sizes = (width, width, width, 4 * width)
        return torch.split(tensor, sizes, dim)


def install_tiny_flux_split(monkeypatch) -> None:
    from diffusers.loaders import single_file_utils

    monkeypatch.setattr(single_file_utils, "torch", TorchWithTinyFluxWidth())


# -- requests --------------------------------------------------------------------------------------


def tiny_request(family: str = "sd15", model: str | None = None, **fields) -> "GenerationRequest":
    """A small, fast request for `family`'s tiny model (steps 2, the family's smallest size)."""
    from pipelines.request import GenerationRequest

    size = SIZES[family]
    values = dict(
        model=model or f"tiny-{family}",
        prompt="a portrait photo",
        steps=2,
        width=size,
        height=size,
        seed=1,
        cfg_scale=3.0,
        sampler=SAMPLERS[family],
    )
    values.update(fields)
    return GenerationRequest(**values)


def demo_request(**fields) -> "GenerationRequest":
    from pipelines.catalog import DEMO_MODEL_NAME
    from pipelines.request import GenerationRequest

    values = dict(model=DEMO_MODEL_NAME, prompt="demo", steps=2, width=64, height=64, seed=1, cfg_scale=3.0, sampler="Euler")
    values.update(fields)
    return GenerationRequest(**values)


# -- what the denoiser reads ---------------------------------------------------------------------------


@contextmanager
def recorded_calls(manager, model_name: str):
    """Every denoiser call's text conditioning, as the denoiser received it (after every other pre-hook)."""
    calls: list[dict] = []
    with manager.use(model_name) as model:
        pipe = model.pipe
    denoiser = getattr(pipe, "unet", None) or pipe.transformer

    def record(_module, _args, kwargs):
        added = kwargs.get("added_cond_kwargs") or {}
        calls.append({"text": kwargs["encoder_hidden_states"].clone(), "pooled": added.get("text_embeds", kwargs.get("pooled_projections"))})

    handle = denoiser.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield pipe, calls
    finally:
        handle.remove()


def expected_cfg_text(pipe, family: str, prompt: str, negative: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a denoiser call of one image reads for `prompt` / `negative`, encoded on its own: (text, pooled text or
    None), negative rows first under classifier-free guidance (SD 1.5 / SDXL), the positive alone on FLUX.1."""
    from pipelines.families import Family
    from pipelines.generate import LoadedModel, encode_prompts

    model = LoadedModel("x", Family(family), pipe, {}, torch.float32, torch.device("cpu"))
    use_cfg = family != "flux"
    embeds = encode_prompts(model, prompt, negative, 1, use_cfg)
    if not use_cfg:
        return embeds["prompt_embeds"], embeds["pooled_prompt_embeds"]
    text = torch.cat([embeds["negative_prompt_embeds"], embeds["prompt_embeds"]])
    pooled = embeds.get("pooled_prompt_embeds")
    return text, None if pooled is None else torch.cat([embeds["negative_pooled_prompt_embeds"], pooled])
