"""The original-layout exporter in tests/ldm_layout.py round-trips through diffusers' own loaders.

Tiny seeded-random SD 1.5 / SDXL pipelines and a tiny FLUX transformer are written in the original
single-file layouts and read back with `from_single_file(..., local_files_only=True)`; every tensor
must come back bit-identical. The bundled full-size configs in pipelines/model_configs are built on
the meta device to check their parameter counts against the official models, and the full-size
exports are checked key-for-key and shape-for-shape against diffusers' converters (no weights needed).
Everything runs offline.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerDiscreteScheduler,
    FluxTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from pipelines.model_configs import config_dir  # noqa: E402
from tests.tiny_models import FLUX_TRANSFORMER, XL_PROJ, XL_TE2, build_tiny_sd15, build_tiny_sdxl, save_config_only, seeded  # noqa: E402
from tests.ldm_layout import (  # noqa: E402
    export_flux_transformer_bfl,
    export_ldm_checkpoint,
    flux_to_bfl,
    ldm_state_dict,
)

# --------------------------------------------------------------------------------------------- helpers


def _assert_same_tensors(original: torch.nn.Module, loaded: torch.nn.Module, what: str) -> int:
    """Same parameter and buffer names, and every tensor torch.equal (dtype included)."""
    ours = dict(original.named_parameters()) | dict(original.named_buffers())
    theirs = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert sorted(ours) == sorted(theirs), f"{what}: tensor names differ"
    for name, tensor in ours.items():
        other = theirs[name]
        assert other.device.type != "meta", f"{what}.{name} was never loaded (still on meta)"
        assert other.dtype == tensor.dtype, f"{what}.{name}: {other.dtype} != {tensor.dtype}"
        assert torch.equal(other, tensor), f"{what}.{name} differs after the round trip"
    return len(ours)


# ------------------------------------------------------------------------------------ tiny pipelines


@pytest.fixture(scope="module")
def tiny_sd15():
    return build_tiny_sd15()


@pytest.fixture(scope="module")
def tiny_sdxl():
    return build_tiny_sdxl()


# --------------------------------------------------------------------------------- SD 1.5 round trip


@pytest.mark.parametrize("ldm_extras", [False, True], ids=["weights", "with-ddpm-buffers"])
def test_sd15_round_trip(tiny_sd15, tmp_path, ldm_extras):
    config = save_config_only(tiny_sd15, tmp_path / "config")
    path = export_ldm_checkpoint(tiny_sd15, tmp_path / "tiny-v1-5.safetensors", "sd15", ldm_extras=ldm_extras)

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."))
               for k in keys if not ldm_extras)
    expected = (
        len(tiny_sd15.unet.state_dict()) + len(tiny_sd15.vae.state_dict()) + len(tiny_sd15.text_encoder.state_dict()) + 1
    )
    assert len(keys) == expected + (14 if ldm_extras else 0)

    loaded = StableDiffusionPipeline.from_single_file(
        str(path),
        config=str(config),
        local_files_only=True,
        tokenizer=tiny_sd15.tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_tensors(getattr(tiny_sd15, name), getattr(loaded, name), name)
    assert type(loaded.scheduler) is type(tiny_sd15.scheduler)  # from the config folder
    assert loaded.safety_checker is None


def test_sd15_vae_attention_is_stored_as_1x1_convolutions(tiny_sd15):
    state = ldm_state_dict(tiny_sd15, "sd15")
    width = tiny_sd15.vae.config.block_out_channels[-1]
    for side in ("encoder", "decoder"):
        for part in ("q", "k", "v", "proj_out"):
            assert state[f"first_stage_model.{side}.mid.attn_1.{part}.weight"].shape == (width, width, 1, 1)
        assert state[f"first_stage_model.{side}.mid.attn_1.norm.weight"].shape == (width,)


# ----------------------------------------------------------------------------------- SDXL round trip


def test_sdxl_round_trip(tiny_sdxl, tmp_path):
    config = save_config_only(tiny_sdxl, tmp_path / "config")
    path = export_ldm_checkpoint(tiny_sdxl, tmp_path / "tiny-xl.safetensors", "sdxl")

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        projection = handle.get_tensor("conditioner.embedders.1.model.text_projection")
        in_proj = handle.get_tensor("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight")
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_ids" in keys
    assert "conditioner.embedders.1.model.logit_scale" in keys
    assert projection.shape == (XL_TE2, XL_PROJ)
    assert in_proj.shape == (3 * XL_TE2, XL_TE2)

    loaded = StableDiffusionXLPipeline.from_single_file(
        str(path),
        config=str(config),
        local_files_only=True,
        tokenizer=tiny_sdxl.tokenizer,
        tokenizer_2=tiny_sdxl.tokenizer_2,
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _assert_same_tensors(getattr(tiny_sdxl, name), getattr(loaded, name), name)
    assert type(loaded.scheduler) is type(tiny_sdxl.scheduler)


# ----------------------------------------------------------------------------------- FLUX round trip

TINY_FLUX = dict(FLUX_TRANSFORMER, in_channels=16, out_channels=None)  # the shared tiny sizes, unpacked input


class _TorchWithFluxWidth:
    """`torch` as diffusers' single-file module sees it, except for one call.

    `convert_flux_transformer_checkpoint_to_diffusers` splits `single_blocks.N.linear1` with FLUX.1's
    fixed sizes (3072, 3072, 3072, 12288). A tiny transformer has the same [q, k, v, mlp] = [w, w, w, 4w]
    structure at width w; this proxy rescales exactly that split and forwards everything else, so the
    rest of the converter runs unchanged. The full-width key mapping is checked unpatched on meta below.
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


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["bfl", "comfyui-prefixed"])
def test_flux_transformer_round_trip(tmp_path, monkeypatch, prefix):
    transformer = seeded(FluxTransformer2DModel(**TINY_FLUX), 21, scale=1.0)
    base = tmp_path / "flux-base"  # stands for the user's FLUX.1 diffusers folder
    transformer.save_config(base / "transformer")
    path = export_flux_transformer_bfl(transformer, tmp_path / "tiny-flux1-dev.safetensors", prefix=prefix)

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        state = {key.removeprefix(prefix): handle.get_slice(key) for key in handle.keys()}
        assert all(key.startswith(prefix) for key in handle.keys())
        linear1_shape = tuple(handle.get_slice(prefix + "single_blocks.0.linear1.weight").get_shape())
    for key in (
        "img_in.weight", "txt_in.weight", "time_in.in_layer.weight", "vector_in.out_layer.bias",
        "guidance_in.in_layer.bias", "double_blocks.0.img_attn.qkv.weight", "double_blocks.0.txt_attn.norm.key_norm.scale",
        "double_blocks.0.img_mlp.2.weight", "single_blocks.0.linear2.weight", "single_blocks.0.modulation.lin.weight",
        "final_layer.adaLN_modulation.1.weight", "final_layer.linear.weight",
    ):
        assert key in state, key
    assert linear1_shape == (7 * 32, 32)  # [q, k, v, 4x mlp] at width 32
    # fused: per double block 12 q/k/v tensors -> 4 qkv; per single block 8 q/k/v/mlp tensors -> 2 linear1
    assert len(state) == len(transformer.state_dict()) - 8 - 6

    monkeypatch.setattr(single_file_utils, "torch", _TorchWithFluxWidth())
    loaded = FluxTransformer2DModel.from_single_file(
        str(path), config=str(base), subfolder="transformer", local_files_only=True
    )
    _assert_same_tensors(transformer, loaded, "transformer")


@pytest.mark.skipif(not os.environ.get("LIKENESS_SLOW_TESTS"), reason="~15 s and ~3 GB RAM; set LIKENESS_SLOW_TESTS=1")
def test_flux_transformer_round_trip_at_full_width(tmp_path):
    """One double and one single block at FLUX.1's real width 3072, unpatched loader, bf16 values."""
    config = dict(TINY_FLUX, attention_head_dim=128, num_attention_heads=24, axes_dims_rope=(16, 56, 56))
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**config)
    transformer = transformer.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(23)
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.uniform_(-1.0, 1.0, generator=generator)
    base = tmp_path / "flux-base"
    transformer.save_config(base / "transformer")
    path = export_flux_transformer_bfl(transformer, tmp_path / "flux1-dev-2-blocks.safetensors")
    loaded = FluxTransformer2DModel.from_single_file(
        str(path), config=str(base), subfolder="transformer", local_files_only=True, torch_dtype=torch.bfloat16
    )
    _assert_same_tensors(transformer, loaded, "transformer")


def test_flux_final_layer_swaps_shift_and_scale():
    transformer = seeded(FluxTransformer2DModel(**TINY_FLUX), 22, scale=1.0)
    ours = transformer.state_dict()["norm_out.linear.weight"]
    theirs = flux_to_bfl(transformer.state_dict())["final_layer.adaLN_modulation.1.weight"]
    half = ours.shape[0] // 2
    assert torch.equal(theirs[:half], ours[half:]) and torch.equal(theirs[half:], ours[:half])


# ------------------------------------------------------------------- full-size configs, on meta only

OFFICIAL_PARAMETERS = {
    ("sd15", "unet"): 859_520_964,
    ("sd15", "vae"): 83_653_863,
    ("sd15", "text_encoder"): 123_060_480,
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "vae"): 83_653_863,
    ("sdxl", "text_encoder"): 123_060_480,
    ("sdxl", "text_encoder_2"): 694_659_840,
}

# Keys of the original single files, counted from the architecture (parameters plus the CLIP
# position_ids buffer; sdxl adds OpenCLIP's logit_scale, fuses q/k/v into in_proj and keeps
# text_projection). sd15: 686 UNet + 248 VAE + 196 CLIP + position_ids. sdxl: 1680 UNet + 248 VAE +
# 197 CLIP-L + 390 OpenCLIP-bigG. CompVis files may also hold DDPM schedule buffers (ldm_extras).
FULL_SIZE_KEYS = {"sd15": 1131, "sdxl": 2515}


def _meta_components(family: str) -> dict:
    folder = config_dir(family)
    with torch.device("meta"):
        components = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
        }
        if family == "sdxl":
            components["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            )
    return components


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def full_size(request):
    return request.param, _meta_components(request.param)


def test_config_dir():
    assert config_dir("sd15").name == "sd15" and config_dir("sdxl").name == "sdxl"
    with pytest.raises(ValueError):
        config_dir("flux")
    with pytest.raises(ValueError):
        config_dir("sd21")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_bundled_configs_are_config_only(family):
    folder = config_dir(family)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    expected = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "unet/config.json", "vae/config.json"]
    if family == "sdxl":
        expected.append("text_encoder_2/config.json")
    assert files == sorted(expected)
    index = json.loads((folder / "model_index.json").read_text())
    if family == "sd15":
        assert index["_class_name"] == "StableDiffusionPipeline"
        assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
        assert index["requires_safety_checker"] is False
    else:
        assert index["_class_name"] == "StableDiffusionXLPipeline"
        assert index["force_zeros_for_empty_prompt"] is True
    components = {k for k, v in index.items() if isinstance(v, list) and v[0] is not None}
    assert components == {p.parent.name for p in folder.glob("*/*.json")} | {"tokenizer"} | (
        {"tokenizer_2"} if family == "sdxl" else set()
    )


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_bundled_config_dir_drives_from_single_file(family, tiny_sd15, tiny_sdxl, tmp_path):
    """With the models handed in, from_single_file still reads model_index.json and the scheduler
    from the bundled folder: the pipeline class, scheduler and flags must be the official ones."""
    tiny = tiny_sd15 if family == "sd15" else tiny_sdxl
    path = export_ldm_checkpoint(tiny, tmp_path / f"{family}.safetensors", family)
    cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    models = {name: getattr(tiny, name) for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2") if hasattr(tiny, name)}
    extras = {"safety_checker": None, "feature_extractor": None} if family == "sd15" else {}
    pipe = cls.from_single_file(str(path), config=str(config_dir(family)), local_files_only=True, **models, **extras)
    if family == "sd15":
        assert type(pipe.scheduler) is PNDMScheduler
        assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.skip_prk_steps is True
        assert pipe.config.requires_safety_checker is False and pipe.safety_checker is None
    else:
        assert type(pipe.scheduler) is EulerDiscreteScheduler
        assert pipe.scheduler.config.timestep_spacing == "leading"
        assert pipe.config.force_zeros_for_empty_prompt is True
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert (pipe.scheduler.config.beta_start, pipe.scheduler.config.beta_end) == (0.00085, 0.012)


def test_full_size_parameter_counts(full_size):
    family, components = full_size
    for name, model in components.items():
        assert all(p.device.type == "meta" for p in model.parameters())
        count = sum(p.numel() for p in model.parameters())
        assert count == OFFICIAL_PARAMETERS[(family, name)], f"{family} {name}: {count:,}"


def test_full_size_export_matches_the_original_layout(full_size):
    family, components = full_size
    state = ldm_state_dict(SimpleNamespace(**components), family)
    assert len(state) == FULL_SIZE_KEYS[family]
    assert all(t.device.type == "meta" for t in state.values())
    # diffusers recognises the export as the right model from its keys and shapes alone
    expected_type = {"sd15": "v1", "sdxl": "xl_base"}[family]
    assert single_file_utils.infer_diffusers_model_type(state) == expected_type
    assert state["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 4, 3, 3)
    assert state["model.diffusion_model.out.2.weight"].shape == (4, 320, 3, 3)
    assert state["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    if family == "sd15":
        assert state["model.diffusion_model.output_blocks.11.0.skip_connection.weight"].shape == (320, 640, 1, 1)
        assert state["model.diffusion_model.input_blocks.1.1.proj_in.weight"].shape == (320, 320, 1, 1)
        assert "model.diffusion_model.input_blocks.9.0.op.weight" in state
        assert "model.diffusion_model.output_blocks.2.1.conv.weight" in state  # upsampler after no attention
        assert "model.diffusion_model.output_blocks.5.2.conv.weight" in state  # upsampler after attention
    else:
        assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (1280, 2816)
        assert state["model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"].shape == (640, 2048)
        assert state["model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight"].shape == (1280, 5120)
        assert state["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
        assert state["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"].shape == (3840, 1280)
        assert state["conditioner.embedders.1.model.logit_scale"].shape == ()
        assert "model.diffusion_model.output_blocks.2.2.conv.weight" in state
        assert "model.diffusion_model.output_blocks.5.2.conv.weight" in state


def _shapes(state: dict) -> dict:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def test_full_size_export_converts_back_key_for_key(full_size):
    """diffusers' own converters, run on the meta export, give back every tensor name and shape."""
    family, components = full_size
    state = ldm_state_dict(SimpleNamespace(**components), family)
    unet = components["unet"]
    converted = single_file_utils.convert_ldm_unet_checkpoint(dict(state), dict(unet.config))
    assert _shapes(converted) == _shapes(unet.state_dict())
    vae = components["vae"]
    converted = single_file_utils.convert_ldm_vae_checkpoint(dict(state), dict(vae.config))
    assert _shapes(converted) == _shapes(vae.state_dict())
    text = components["text_encoder"]
    converted = single_file_utils.convert_ldm_clip_checkpoint(dict(state))
    flat = {k.removeprefix("text_model."): v for k, v in converted.items() if k != "text_model.embeddings.position_ids"}
    assert _shapes(flat) == _shapes(text.state_dict())
    if family == "sdxl":
        text_2 = components["text_encoder_2"]
        converted = single_file_utils.convert_open_clip_checkpoint(
            text_2, dict(state), prefix="conditioner.embedders.1.model."
        )
        assert _shapes(converted) == _shapes(text_2.state_dict())


FLUX1_DEV = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def test_full_size_flux_export_converts_back_key_for_key():
    """At FLUX.1's real width the converter needs no proxy: check names and shapes on meta."""
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX1_DEV)
    assert sum(p.numel() for p in transformer.parameters()) == 11_901_408_320  # FLUX.1-dev's 11.9 B
    state = flux_to_bfl(transformer.state_dict())
    # 19 double blocks x 24 + 38 single blocks x 8 + 20 embedder / final-layer tensors, derived from
    # the architecture (BFL's flux1-dev.safetensors is expected to hold the same 780 keys)
    assert len(state) == 19 * 24 + 38 * 8 + 20 == 780
    assert state["single_blocks.37.linear1.weight"].shape == (21504, 3072)
    assert state["double_blocks.18.img_attn.qkv.weight"].shape == (9216, 3072)
    assert single_file_utils.infer_diffusers_model_type(state) == "flux-dev"
    converted = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers(copy.copy(state))
    assert _shapes(converted) == _shapes(transformer.state_dict())
