"""Every file the Face feature needs, written small and in the official layouts (tests and the PuLID bench).

- `insightface/antelopev2/`: the tiny SCRFD + ArcFace ONNX pack (pipelines/bench/tiny_onnx.py) with a
  face planted where it is in insightface's own `Tom_Hanks_54745.png`;
- `eva_clip/EVA02_CLIP_L_336_psz14_s6B.pt`: a 24-block EVA tower of width 64, saved as the official
  file is (whole-CLIP state dict, `visual.*`, rotary buffers, a text tower);
- `facexlib/parsing_bisenet.pth`: the real-size BiSeNet with seeded weights;
- `pulid/pulid_v1.1.safetensors`, `pulid/pulid_flux_v0.9.1.safetensors`: IDFormers at toy widths
  whose inputs fit the files above (512-d ArcFace + 8-d EVA embedding, 64-wide hidden states), with
  ID layers sized for the given tiny SDXL UNet / FLUX transformer.
"""
from __future__ import annotations

from pathlib import Path

import insightface
import torch
from safetensors.torch import save_file

from pipelines.face.bisenet import BiSeNet
from pipelines.face.encoders import EVA_FILE, PARSING_FILE
from pipelines.face.eva_clip import EvaVisionConfig, EvaVisionTower
from pipelines.face.idformer import IDFormer, IDFormerConfig
from pipelines.face.pulid_weights import FluxCrossAttentionConfig, FluxIdCrossAttentions, SdxlIdLayers, official_state_dict
from pipelines.bench import tiny_onnx

IMAGES = Path(insightface.__file__).parent / "data" / "images"
HANKS = IMAGES / "Tom_Hanks_54745.png"  # 112x112, one face
HANKS_BOX = (11, 20, 101, 110)

TINY_EVA = EvaVisionConfig(image_size=56, patch_size=14, width=64, layers=24, head_width=64, mlp_hidden=96, embed_dim=8)
ID_DIM = 24  # the IDFormer's output width: the "2048" of the tiny files
TINY_IDFORMER = IDFormerConfig(dim=32, depth=5, dim_head=8, heads=2, num_id_token=5, num_queries=4, output_dim=ID_DIM,
                               ff_mult=2, id_cond_dim=512 + TINY_EVA.embed_dim, vit_dim=TINY_EVA.width, mapping_dim=16)


def seeded(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Seeded random weights; BatchNorm variances kept positive."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return module.eval()


def official_rope_tables(grid: int, head_width: int, pretrain_grid: int = 16):
    """EVA-02's VisionRotaryEmbeddingFast tables, written out step by step (independently of
    pipelines/face/eva_clip.py): lang frequencies over half a head, positions rescaled to the
    pre-training grid, each frequency repeated for a channel pair, rows then columns, row-major."""
    dim = head_width // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(grid) / grid * pretrain_grid
    f = torch.einsum("i,f->if", t, freqs)
    f = torch.stack([f, f], dim=-1).reshape(grid, -1)
    full = torch.cat([f[:, None, :].expand(grid, grid, dim), f[None, :, :].expand(grid, grid, dim)], dim=-1)
    return full.cos().reshape(-1, head_width), full.sin().reshape(-1, head_width)


def official_eva_checkpoint(tower: EvaVisionTower) -> dict[str, torch.Tensor]:
    """What `torch.save(clip_model.state_dict())` holds: visual.*, the rotary buffers once at the top
    and again under every block's attention (one shared module), a text tower and logit_scale."""
    config = tower.config
    cos, sin = official_rope_tables(config.grid, config.head_width)
    state = {f"visual.{k}": v.clone() for k, v in tower.state_dict().items()}
    for prefix in ["visual.rope"] + [f"visual.blocks.{i}.attn.rope" for i in range(config.layers)]:
        state[f"{prefix}.freqs_cos"] = cos.clone()
        state[f"{prefix}.freqs_sin"] = sin.clone()
    state["text.token_embedding.weight"] = torch.zeros(10, 4)
    state["logit_scale"] = torch.tensor(4.6)
    return state


def write_eva(folder: Path, seed: int = 2) -> tuple[Path, EvaVisionTower]:
    folder.mkdir(parents=True, exist_ok=True)
    tower = seeded(EvaVisionTower(TINY_EVA), seed)
    path = folder / EVA_FILE
    torch.save(official_eva_checkpoint(tower), path)
    return path, tower


def write_bisenet(folder: Path, seed: int = 3, drop_counters: bool = False) -> tuple[Path, BiSeNet]:
    folder.mkdir(parents=True, exist_ok=True)
    network = seeded(BiSeNet(), seed)
    state = network.state_dict()
    if drop_counters:  # as a file saved by an old torch
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = folder / PARSING_FILE
    torch.save(state, path)
    return path, network


def write_pulid_sdxl(folder: Path, unet, seed: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    encoder = seeded(IDFormer(TINY_IDFORMER), seed, scale=0.2)
    layers = seeded(SdxlIdLayers.for_unet(unet, id_dim=ID_DIM), seed + 1, scale=0.2)
    path = folder / "pulid_v1.1.safetensors"
    save_file(official_state_dict("sdxl", encoder, layers), str(path))
    return path


def write_pulid_flux(folder: Path, transformer, seed: int = 7) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    encoder = seeded(IDFormer(TINY_IDFORMER), seed, scale=0.2)
    # The loader sizes the CA blocks as FLUX.1's (16 heads of 128) at the transformer's width.
    blocks = seeded(FluxIdCrossAttentions.for_transformer(transformer, FluxCrossAttentionConfig(kv_dim=ID_DIM)), seed + 1, scale=0.2)
    path = folder / "pulid_flux_v0.9.1.safetensors"
    save_file(official_state_dict("flux", encoder, blocks), str(path))
    return path


def write_face_models(models_dir: Path, *, sdxl_unet=None, flux_transformer=None, photo_shape=(112, 112, 3),
                      boxes=(HANKS_BOX,)) -> Path:
    """All Face files under `models_dir`; PuLID files only for the models given."""
    tiny_onnx.write_antelopev2(models_dir / "insightface" / "antelopev2", tiny_onnx.planted_from_photo(photo_shape, list(boxes)))
    write_eva(models_dir / "eva_clip")
    write_bisenet(models_dir / "facexlib")
    if sdxl_unet is not None:
        write_pulid_sdxl(models_dir / "pulid", sdxl_unet)
    if flux_transformer is not None:
        write_pulid_flux(models_dir / "pulid", flux_transformer)
    return models_dir
