"""IDFormer and the FLUX ID cross-attention: the official layout (full size, on `meta`) and the maths (tiny)."""
from __future__ import annotations

import pytest
import torch

from pipelines.face.idformer import (IDFormer, IDFormerConfig, IdentityEmbedding, PerceiverAttentionCA,
                                     encode_identity, stable_attention)


def _mlp_table(prefix: str, width_in: int, width_out: int) -> dict[str, tuple]:
    """Linear, LN, LeakyReLU, Linear, LN, LeakyReLU, Linear (hidden 1024) as in the official code."""
    return {
        f"{prefix}.0.weight": (1024, width_in), f"{prefix}.0.bias": (1024,),
        f"{prefix}.1.weight": (1024,), f"{prefix}.1.bias": (1024,),
        f"{prefix}.3.weight": (1024, 1024), f"{prefix}.3.bias": (1024,),
        f"{prefix}.4.weight": (1024,), f"{prefix}.4.bias": (1024,),
        f"{prefix}.6.weight": (width_out, 1024), f"{prefix}.6.bias": (width_out,),
    }


def official_idformer_table() -> dict[str, tuple]:
    """Every tensor of the official IDFormer (`id_adapter.*` / `pulid_encoder.*`) and its shape."""
    table = {"latents": (1, 32, 1024), "proj_out": (1024, 2048)}
    for i in range(10):
        table.update({
            f"layers.{i}.0.norm1.weight": (1024,), f"layers.{i}.0.norm1.bias": (1024,),
            f"layers.{i}.0.norm2.weight": (1024,), f"layers.{i}.0.norm2.bias": (1024,),
            f"layers.{i}.0.to_q.weight": (1024, 1024),
            f"layers.{i}.0.to_kv.weight": (2048, 1024),
            f"layers.{i}.0.to_out.weight": (1024, 1024),
            f"layers.{i}.1.0.weight": (1024,), f"layers.{i}.1.0.bias": (1024,),
            f"layers.{i}.1.1.weight": (4096, 1024),
            f"layers.{i}.1.3.weight": (1024, 4096),
        })
    for i in range(5):
        table.update(_mlp_table(f"mapping_{i}", 1024, 1024))
    table.update(_mlp_table("id_embedding_mapping", 1280, 5 * 1024))
    return table


OFFICIAL_CA_TABLE = {  # one `pulid_ca.{k}` block of PuLID-FLUX
    "norm1.weight": (2048,), "norm1.bias": (2048,),
    "norm2.weight": (3072,), "norm2.bias": (3072,),
    "to_q.weight": (2048, 3072),
    "to_kv.weight": (4096, 2048),
    "to_out.weight": (3072, 2048),
}


def shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


def test_full_size_idformer_has_exactly_the_official_keys_and_shapes():
    with torch.device("meta"):
        encoder = IDFormer.official()
    table = official_idformer_table()
    assert shapes(encoder) == table
    assert len(table) == 10 * 11 + 5 * 10 + 10 + 2 == 172
    assert sum(t.numel() for t in encoder.state_dict().values()) == 151_398_400
    assert encoder.config == IDFormerConfig(dim=1024, depth=10, dim_head=64, heads=16, num_id_token=5,
                                            num_queries=32, output_dim=2048, ff_mult=4)


def test_full_size_flux_cross_attention_has_the_official_keys_and_shapes():
    with torch.device("meta"):
        block = PerceiverAttentionCA()
    assert shapes(block) == OFFICIAL_CA_TABLE
    assert (block.heads, block.dim_head) == (16, 128)


def test_idformer_depth_must_split_over_the_five_vit_scales():
    with pytest.raises(ValueError, match="multiple of 5"):
        IDFormerConfig(depth=7)


@pytest.fixture(scope="module")
def tiny_encoder() -> IDFormer:
    torch.manual_seed(0)
    return IDFormer.tiny().eval()


def vit_states(config: IDFormerConfig, tokens: int, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens, config.vit_dim, generator=generator) for _ in range(5)]


def test_output_is_batch_by_queries_by_output_dim_for_one_or_several_photos(tiny_encoder):
    config = tiny_encoder.config
    with torch.no_grad():
        one = tiny_encoder(torch.randn(2, config.id_cond_dim), vit_states(config, 9, batch=2))
        three = tiny_encoder(torch.randn(2, 3, config.id_cond_dim), vit_states(config, 27, batch=2))
    assert one.shape == three.shape == (2, config.num_queries, config.output_dim)
    assert torch.isfinite(three).all()


def test_one_photo_stacked_3d_equals_the_2d_condition(tiny_encoder):
    config = tiny_encoder.config
    cond, hidden = torch.randn(1, config.id_cond_dim), vit_states(config, 9)
    with torch.no_grad():
        assert torch.equal(tiny_encoder(cond, hidden), tiny_encoder(cond.unsqueeze(1), hidden))


def test_photos_become_id_tokens_of_the_context_not_extra_outputs(tiny_encoder):
    """N photos -> 5N ID tokens in the latents and the context; the output keeps 32 (here 4) tokens,
    and it depends on every photo."""
    config = tiny_encoder.config
    a, b = torch.randn(1, config.id_cond_dim), torch.randn(1, config.id_cond_dim)
    ha, hb = vit_states(config, 9, seed=1), vit_states(config, 9, seed=2)
    with torch.no_grad():
        both = encode_identity(tiny_encoder, [a, b], [ha, hb]).cond
        only_a = encode_identity(tiny_encoder, [a], [ha]).cond
        manual = tiny_encoder(torch.stack([a, b], dim=1), [torch.cat([x, y], dim=1) for x, y in zip(ha, hb)])
    assert torch.equal(both, manual)
    assert both.shape == only_a.shape == (1, config.num_queries, config.output_dim)
    assert not torch.allclose(both, only_a)


def test_uncond_is_the_encoder_on_zeros_shaped_like_one_photo(tiny_encoder):
    config = tiny_encoder.config
    conds = [torch.randn(config.id_cond_dim), torch.randn(config.id_cond_dim)]
    hidden = [vit_states(config, 9, seed=3), vit_states(config, 9, seed=4)]
    with torch.no_grad():
        identity = encode_identity(tiny_encoder, conds, hidden)
        expected = tiny_encoder(torch.zeros(1, config.id_cond_dim), [torch.zeros(1, 9, config.vit_dim)] * 5)
        other = encode_identity(tiny_encoder, conds[:1], hidden[:1])
    assert isinstance(identity, IdentityEmbedding)
    assert torch.equal(identity.uncond, expected)
    assert torch.equal(identity.uncond, other.uncond), "the uncond ID does not depend on the photos"
    assert identity.uncond.abs().sum() > 0, "the uncond ID is the encoder's output on zeros, not zeros"


def test_encode_identity_rejects_mismatched_inputs(tiny_encoder):
    with pytest.raises(ValueError, match="one ID condition"):
        encode_identity(tiny_encoder, [torch.zeros(12)], [])


def test_stable_attention_is_softmax_attention():
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=generator, dtype=torch.float64) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-2, -1) / 16 ** 0.5, dim=-1) @ v
    assert torch.allclose(stable_attention(q, k, v, 16), expected, atol=1e-12)


def test_flux_cross_attention_broadcasts_one_id_over_the_image_batch():
    torch.manual_seed(6)
    block = PerceiverAttentionCA(dim=32, dim_head=8, heads=2, kv_dim=24).eval()
    identity, image = torch.randn(1, 4, 24), torch.randn(3, 10, 32)
    with torch.no_grad():
        broadcast = block(identity, image)
        expanded = block(identity.expand(3, -1, -1), image)
    assert broadcast.shape == image.shape
    assert torch.allclose(broadcast, expanded, atol=1e-6)
    # The update for an image depends on that image only.
    with torch.no_grad():
        first = block(identity, image[:1])
    assert torch.allclose(first, broadcast[:1], atol=1e-6)
