"""Test helper: write diffusers components back in the ORIGINAL single-file checkpoint layouts.

Real single-file checkpoints are gigabytes and cannot be fetched in tests, so tests build tiny random
diffusers models, write them here in the layout the original training code saved, and load them back
with diffusers' own `from_single_file` converters. The layouts:

- SD 1.5 (`v1-5-pruned-emaonly.safetensors`, CompVis LDM):
  `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.transformer.text_model.*`
  (CLIP ViT-L/14, Hugging Face names).
- SDXL (`sd_xl_base_1.0.safetensors`, Stability "sgm"): the same UNet/VAE prefixes,
  `conditioner.embedders.0.transformer.text_model.*` (CLIP ViT-L/14) and `conditioner.embedders.1.model.*`
  (OpenCLIP ViT-bigG/14 names: fused `in_proj_weight`, `text_projection` stored as [width, proj]).
- FLUX.1 transformer (`flux1-dev.safetensors`, Black Forest Labs): `double_blocks.N.img_attn.qkv`, ...

Every function works on tensors of any device, `meta` included (shape-only export, for key counting).
Nothing here is imported by the application.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

__all__ = [
    "LDM_UNET_PREFIX",
    "LDM_VAE_PREFIX",
    "SD15_CLIP_PREFIX",
    "SDXL_CLIP_L_PREFIX",
    "SDXL_OPENCLIP_PREFIX",
    "unet_to_ldm",
    "vae_to_ldm",
    "clip_to_ldm",
    "openclip_to_ldm",
    "ldm_state_dict",
    "export_ldm_checkpoint",
    "flux_to_bfl",
    "export_flux_transformer_bfl",
]

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

# The trained OpenCLIP temperature, clamped at 100 during training: ln(100).
_OPENCLIP_LOGIT_SCALE = math.log(100.0)


def _config(model) -> dict:
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no .config")
    return dict(config)


def _rename(suffix: str, table: dict[str, str]) -> str:
    """Rename the first dotted component of `suffix` (`conv1.weight` -> `in_layers.2.weight`)."""
    for old, new in table.items():
        if suffix.startswith(old + "."):
            return new + suffix[len(old):]
    raise KeyError(suffix)


# ------------------------------------------------------------------------------------------------- UNet

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    # SDXL "text_time" micro-conditioning and class-conditioned UNets both live in label_emb.0
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers `UNet2DConditionModel` state dict -> LDM `openaimodel.UNetModel` names (no prefix).

    LDM numbers the encoder as one flat `input_blocks` list: [conv_in, (resnet[, attention]) x layers,
    downsampler] per level; the decoder as `output_blocks` with layers+1 entries per level, the level's
    upsampler riding in its last entry after the (optional) attention. Tensor shapes do not change.
    """
    per_level = config["layers_per_block"]
    if not isinstance(per_level, int):
        raise NotImplementedError("layers_per_block must be one int for the LDM layout")
    up_levels_with_attention = {int(k.split(".")[1]) for k in state_dict if re.match(r"up_blocks\.\d+\.attentions\.", k)}

    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if parts[0] == "down_blocks":
            level, kind = int(parts[1]), parts[2]
            first = 1 + level * (per_level + 1)
            if kind == "resnets":
                name = f"input_blocks.{first + int(parts[3])}.0." + _rename(".".join(parts[4:]), _UNET_RESNET)
            elif kind == "attentions":
                name = f"input_blocks.{first + int(parts[3])}.1." + ".".join(parts[4:])
            elif kind == "downsamplers":  # down_blocks.L.downsamplers.0.conv.weight
                name = f"input_blocks.{first + per_level}.0.op." + ".".join(parts[5:])
            else:
                raise KeyError(key)
        elif parts[0] == "up_blocks":
            level, kind = int(parts[1]), parts[2]
            first = level * (per_level + 1)
            if kind == "resnets":
                name = f"output_blocks.{first + int(parts[3])}.0." + _rename(".".join(parts[4:]), _UNET_RESNET)
            elif kind == "attentions":
                name = f"output_blocks.{first + int(parts[3])}.1." + ".".join(parts[4:])
            elif kind == "upsamplers":  # up_blocks.L.upsamplers.0.conv.weight
                slot = 2 if level in up_levels_with_attention else 1
                name = f"output_blocks.{first + per_level}.{slot}." + ".".join(parts[4:])
            else:
                raise KeyError(key)
        elif parts[0] == "mid_block":
            # LDM's middle_block is [resnet, attention, resnet]
            kind, index = parts[1], int(parts[2])
            rest = ".".join(parts[3:])
            if kind == "resnets":
                name = f"middle_block.{2 * index}." + _rename(rest, _UNET_RESNET)
            elif kind == "attentions":
                name = f"middle_block.{2 * index + 1}." + rest
            else:
                raise KeyError(key)
        elif key == "class_embedding.weight":  # num_class_embeds (x4 upscaler style)
            name = "label_emb.weight"
        else:
            name = _rename(key, _UNET_TOP)
        if name in out:
            raise KeyError(f"two UNet tensors map to {name}")
        out[name] = tensor
    return out


# -------------------------------------------------------------------------------------------------- VAE

_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}


def _as_conv1x1(tensor: torch.Tensor) -> torch.Tensor:
    """LDM's VAE attention projections are 1x1 convolutions: [out, in] -> [out, in, 1, 1]."""
    return tensor.reshape(*tensor.shape, 1, 1) if tensor.ndim == 2 else tensor


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderKL` state dict -> LDM `AutoencoderKL` names (no prefix).

    The LDM decoder numbers its `up` levels from the lowest resolution upwards in reverse
    (`decoder.up.{n-1}` runs first), diffusers' `up_blocks` in execution order.
    """
    levels = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        side = parts[0]  # encoder / decoder / quant_conv / post_quant_conv
        if side in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
            level, kind = int(parts[2]), parts[3]
            if parts[1] == "down_blocks":
                stage = f"{side}.down.{level}"
            else:
                stage = f"{side}.up.{levels - 1 - level}"
            if kind == "resnets":
                name = f"{stage}.block.{parts[4]}." + _rename(".".join(parts[5:]), _VAE_RESNET)
            elif kind == "downsamplers":
                name = f"{stage}.downsample." + ".".join(parts[5:])
            elif kind == "upsamplers":
                name = f"{stage}.upsample." + ".".join(parts[5:])
            else:
                raise KeyError(key)
        elif side in ("encoder", "decoder") and parts[1] == "mid_block":
            kind, index = parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                name = f"{side}.mid.block_{index + 1}." + _rename(rest, _VAE_RESNET)
            elif kind == "attentions":
                name = f"{side}.mid.attn_{index + 1}." + _rename(rest, _VAE_ATTENTION)
                if not rest.startswith("group_norm."):
                    tensor = _as_conv1x1(tensor)
            else:
                raise KeyError(key)
        elif side in ("encoder", "decoder"):
            name = f"{side}." + _rename(".".join(parts[1:]), _VAE_TOP)
        else:
            name = _rename(key, _VAE_TOP)
        out[name] = tensor
    return out


# ---------------------------------------------------------------------------------------- text encoders


def _text_model_state(model) -> dict[str, torch.Tensor]:
    """CLIP text state dict with a `text_model.` prefix whatever the transformers version.

    transformers >= 5.6 flattened `CLIPTextModel` (keys `embeddings.*`, `encoder.*`), while
    `CLIPTextModelWithProjection` still nests them under `text_model.`; checkpoints always nest them.
    """
    state = model.state_dict()
    out = {}
    for key, tensor in state.items():
        if key.startswith("text_projection."):
            out[key] = tensor
        elif key.startswith("text_model."):
            out[key] = tensor
        else:
            out["text_model." + key] = tensor
    return out


def _position_ids(model, like: torch.Tensor) -> torch.Tensor:
    count = model.config.max_position_embeddings
    return torch.arange(count, dtype=torch.int64, device=like.device).unsqueeze(0)


def clip_to_ldm(model) -> dict[str, torch.Tensor]:
    """A `CLIPTextModel` as the original checkpoints store it under `...transformer.` (HF names).

    The checkpoints also carry the `text_model.embeddings.position_ids` buffer ([1, 77] int64), which
    transformers no longer saves (non-persistent); it is added so files look like the real ones.
    """
    state = _text_model_state(model)
    state.pop("text_projection.weight", None)
    embedding = state["text_model.embeddings.position_embedding.weight"]
    state["text_model.embeddings.position_ids"] = _position_ids(model, embedding)
    return state


_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def openclip_to_ldm(model, *, logit_scale: bool = True) -> dict[str, torch.Tensor]:
    """A `CLIPTextModelWithProjection` in OpenCLIP's `model.*` names (no prefix).

    q/k/v projections are fused into `attn.in_proj_weight` [3*width, width] / `in_proj_bias`, the
    projection is stored as a bare [width, proj] matrix (`x @ text_projection`, the transpose of the
    Linear weight), and `logit_scale` (a 0-d tensor unused for generation) is kept because
    `sd_xl_base_1.0.safetensors` carries it.
    """
    state = _text_model_state(model)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = tensor.t().contiguous()
        elif key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = tensor
        elif key.startswith("text_model.encoder.layers."):
            index, rest = key[len("text_model.encoder.layers."):].split(".", 1)
            block = f"transformer.resblocks.{index}."
            match = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if match:
                which, kind = match.groups()
                fused.setdefault(block + ("attn.in_proj_weight" if kind == "weight" else "attn.in_proj_bias"), {})[which] = tensor
            else:
                out[block + _rename(rest, _OPENCLIP_LAYER)] = tensor
        else:
            raise KeyError(key)
    for name, pieces in fused.items():
        out[name] = torch.cat([pieces["q"], pieces["k"], pieces["v"]], dim=0)
    if logit_scale:
        reference = out["positional_embedding"]
        out["logit_scale"] = torch.tensor(_OPENCLIP_LOGIT_SCALE, dtype=reference.dtype, device=reference.device)
    return out


# ------------------------------------------------------------------------------------- whole checkpoints


def _sd15_training_buffers(like: torch.Tensor) -> dict[str, torch.Tensor]:
    """The DDPM schedule buffers (and EMA counters) CompVis' LatentDiffusion saved next to the weights.

    Loaders must ignore them; export them (`ldm_extras=True`) to test that they do.
    """
    steps = 1000
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)
    values = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": previous,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log(),
        "posterior_mean_coef1": betas * previous.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - previous) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    out = {name: value.to(dtype=torch.float32, device=like.device) for name, value in values.items()}
    out["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32, device=like.device)
    out["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32, device=like.device)
    return out


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in state.items()}


def ldm_state_dict(pipe, family: str, *, ldm_extras: bool = False) -> dict[str, torch.Tensor]:
    """The single-file state dict for `pipe` (anything with .unet/.vae/.text_encoder[/.text_encoder_2]).

    family: "sd15" (CompVis LDM layout) or "sdxl" (Stability sgm layout). `ldm_extras` adds the SD 1.5
    DDPM schedule buffers and EMA counters the CompVis checkpoints also hold (sd15 only).
    Tensors are the pipeline's own (no copies) except fused / reshaped / transposed ones.
    """
    family = getattr(family, "value", family)
    if family not in ("sd15", "sdxl"):
        raise ValueError(f"family must be 'sd15' or 'sdxl', not {family!r}")
    state: dict[str, torch.Tensor] = {}
    state.update(_prefixed(LDM_UNET_PREFIX, unet_to_ldm(pipe.unet.state_dict(), _config(pipe.unet))))
    state.update(_prefixed(LDM_VAE_PREFIX, vae_to_ldm(pipe.vae.state_dict(), _config(pipe.vae))))
    if family == "sd15":
        state.update(_prefixed(SD15_CLIP_PREFIX, clip_to_ldm(pipe.text_encoder)))
        if ldm_extras:
            state.update(_sd15_training_buffers(next(iter(state.values()))))
    else:
        if ldm_extras:
            raise ValueError("ldm_extras is only defined for sd15")
        state.update(_prefixed(SDXL_CLIP_L_PREFIX, clip_to_ldm(pipe.text_encoder)))
        state.update(_prefixed(SDXL_OPENCLIP_PREFIX, openclip_to_ldm(pipe.text_encoder_2)))
    return state


def _save(state: dict[str, torch.Tensor], path, metadata: dict[str, str] | None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    if any(t.device.type == "meta" for t in state.values()):
        raise ValueError("meta tensors have no data to save; use the *_state_dict / *_to_* functions")
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage (tied weights): copy all but the first user.
    owners: set[int] = set()
    tensors = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if pointer in owners else tensor
        owners.add(pointer)
    save_file(tensors, str(path), metadata=metadata)
    return path


def export_ldm_checkpoint(pipe, path, family: str, *, ldm_extras: bool = False) -> Path:
    """Write `pipe` as one original-layout `.safetensors` file (see `ldm_state_dict`); returns the path."""
    return _save(ldm_state_dict(pipe, family, ldm_extras=ldm_extras), path, {"format": "pt"})


# ------------------------------------------------------------------------------------------------- FLUX


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous emits [scale, shift]; BFL's final layer [shift, scale]."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


_FLUX_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}

_FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}

_FLUX_SINGLE = {
    "norm.linear": "modulation.lin",
    "attn.norm_q": "norm.query_norm",
    "attn.norm_k": "norm.key_norm",
    "proj_out": "linear2",
}

# fused BFL tensor -> the diffusers pieces it concatenates along dim 0, in order
_FLUX_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_FLUX_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def _flux_block(prefix_out: str, block: dict[str, torch.Tensor], renames, fused) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    used = set()
    for target, pieces in fused.items():
        for kind in ("weight", "bias"):
            names = [f"{piece}.{kind}" for piece in pieces]
            out[f"{prefix_out}{target}.{kind}"] = torch.cat([block[name] for name in names], dim=0)
            used.update(names)
    for key, tensor in block.items():
        if key in used:
            continue
        renamed = _rename(key, renames)
        # RMSNorm weights are called `scale` in BFL's QKNorm
        if renamed.endswith("_norm.weight"):
            renamed = renamed[: -len("weight")] + "scale"
        out[prefix_out + renamed] = tensor
    return out


def flux_to_bfl(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `FluxTransformer2DModel` state dict -> Black Forest Labs' `flux.model.Flux` names."""
    blocks: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = re.match(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", key)
        if match:
            blocks.setdefault((match.group(1), int(match.group(2))), {})[match.group(3)] = tensor
        elif key.startswith("norm_out.linear."):
            out["final_layer.adaLN_modulation.1." + key.rsplit(".", 1)[1]] = _swap_halves(tensor)
        else:
            out[_rename(key, _FLUX_TOP)] = tensor
    for (kind, index), block in sorted(blocks.items()):
        if kind == "transformer_blocks":
            out.update(_flux_block(f"double_blocks.{index}.", block, _FLUX_DOUBLE, _FLUX_DOUBLE_FUSED))
        else:
            out.update(_flux_block(f"single_blocks.{index}.", block, _FLUX_SINGLE, _FLUX_SINGLE_FUSED))
    return out


def export_flux_transformer_bfl(transformer, path, *, prefix: str = "") -> Path:
    """Write a diffusers `FluxTransformer2DModel` as a BFL-layout `.safetensors` (`flux1-dev` style).

    `prefix="model.diffusion_model."` gives the layout ComfyUI saves FLUX checkpoints in; diffusers
    strips that prefix when loading.
    """
    state = flux_to_bfl(transformer.state_dict())
    return _save({prefix + key: tensor for key, tensor in state.items()}, path, {"format": "pt"})
