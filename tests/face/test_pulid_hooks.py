"""PuLID weights and injection hooks: official key layout, strict loading, SDXL and FLUX.1 injection.

Layouts are checked at full size on `meta` (the real SDXL UNet config, FLUX.1-dev's transformer
sizes); behaviour runs on tiny seeded models through the real diffusers pipelines (latent output),
with a step callback that advances `HookContext.step_index` as `pipelines.generate` does.
"""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import ModelLoadError, ModelNotFound
from pipelines.face import pulid_weights
from pipelines.face.idformer import IDFormer, IDFormerConfig
from pipelines.face.pulid_weights import (FluxCrossAttentionConfig, FluxIdCrossAttentions, IdProjection,
                                          SdxlIdLayers, detect_pulid_family, find_pulid_file, flux_ca_count,
                                          load_pulid_weights, official_state_dict)
from pipelines.hooks import HookContext, attached
from pipelines.hooks.pulid_flux import PulidFluxConfig, PulidFluxHook
from pipelines.hooks.pulid_sdxl import IdAttnProcessor, PulidSdxlConfig, PulidSdxlHook
from pipelines.model_configs import config_dir
from tests.face.test_idformer import OFFICIAL_CA_TABLE, official_idformer_table

TINY_ID_DIM = 24  # IDFormer.tiny() output width: the "2048" of the tiny models
STEPS = 3

# -- official layouts at full size -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_meta_unet():
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(config_dir("sdxl") / "unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


@pytest.fixture(scope="module")
def flux_meta_transformer():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):  # FLUX.1-dev sizes
        return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                      attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                      pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def official_sdxl_id_layer_table(unet) -> dict[str, tuple]:
    """`id_adapter_attn_layers.*` as the official code makes it: index i over unet.attn_processors,
    weights only where the processor is not attn1, (hidden, 2048) with hidden = the block's channels."""
    channels = unet.config.block_out_channels
    table = {}
    for i, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        table[f"{i}.id_to_k.weight"] = (hidden, 2048)
        table[f"{i}.id_to_v.weight"] = (hidden, 2048)
    return table


def test_sdxl_unet_has_140_processors_and_the_70_cross_attentions_are_the_odd_indices(sdxl_meta_unet):
    names = list(sdxl_meta_unet.attn_processors)
    assert len(names) == 140
    layers = SdxlIdLayers.for_unet(sdxl_meta_unet)
    cross = layers.cross_attention_indices()
    assert cross == list(range(1, 140, 2))
    assert all(names[i].endswith("attn2.processor") for i in cross)
    widths = Counter(layers[i].id_to_k.out_features for i in cross)
    assert widths == {1280: 60, 640: 10}


def test_sdxl_id_layers_have_exactly_the_official_keys_and_shapes(sdxl_meta_unet):
    layers = SdxlIdLayers.for_unet(sdxl_meta_unet)
    table = official_sdxl_id_layer_table(sdxl_meta_unet)
    got = {key: tuple(t.shape) for key, t in layers.state_dict().items()}
    assert got == table
    assert len(table) == 140
    assert all(isinstance(layers[i], IdProjection) and layers[i].id_to_k.bias is None for i in layers.cross_attention_indices())


def test_flux_has_20_ca_blocks_with_the_official_layout(flux_meta_transformer):
    assert flux_ca_count(19, 38) == 20
    blocks = FluxIdCrossAttentions.for_transformer(flux_meta_transformer)
    expected = {f"{k}.{key}": shape for k in range(20) for key, shape in OFFICIAL_CA_TABLE.items()}
    assert {key: tuple(t.shape) for key, t in blocks.state_dict().items()} == expected
    assert len(expected) == 140


def meta_checkpoint(table: dict[str, tuple], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": torch.empty(shape, device="meta", dtype=torch.float16) for key, shape in table.items()}


def test_full_size_official_sdxl_checkpoint_loads_strictly(monkeypatch, tmp_path, sdxl_meta_unet):
    state = meta_checkpoint(official_idformer_table(), "id_adapter")
    state.update(meta_checkpoint(official_sdxl_id_layer_table(sdxl_meta_unet), "id_adapter_attn_layers"))
    assert len(state) == 172 + 140
    monkeypatch.setattr(pulid_weights, "read_state_dict", lambda path: state)
    weights = load_pulid_weights(tmp_path / "pulid_v1.1.safetensors", "sdxl", unet=sdxl_meta_unet, dtype=None)
    assert weights.family == "sdxl" and weights.counts == {"id_adapter": 172, "id_adapter_attn_layers": 140}
    assert isinstance(weights.encoder, IDFormer) and isinstance(weights.injection, SdxlIdLayers)
    assert set(official_state_dict("sdxl", weights.encoder, weights.injection)) == set(state)


def test_full_size_official_flux_checkpoint_loads_strictly(monkeypatch, tmp_path, flux_meta_transformer):
    state = meta_checkpoint(official_idformer_table(), "pulid_encoder")
    for k in range(20):
        state.update(meta_checkpoint(OFFICIAL_CA_TABLE, f"pulid_ca.{k}"))
    assert len(state) == 172 + 140
    monkeypatch.setattr(pulid_weights, "read_state_dict", lambda path: state)
    for transformer in (flux_meta_transformer, None):
        weights = load_pulid_weights(tmp_path / "pulid_flux_v0.9.1.safetensors", "flux", transformer=transformer, dtype=None)
        assert weights.family == "flux" and len(weights.injection) == 20
        assert set(official_state_dict("flux", weights.encoder, weights.injection)) == set(state)


# -- loading files (tiny) ----------------------------------------------------------------------------


def tiny_sdxl_unet(seed: int = 11):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4),
        cross_attention_dim=32, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8, norm_num_groups=8,
    )
    return seeded(unet, seed)


FLUX_CA = FluxCrossAttentionConfig(dim=32, dim_head=8, heads=2, kv_dim=TINY_ID_DIM)


def tiny_flux_transformer(seed: int = 21):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    # 3 double + 6 single blocks: CA after doubles 0, 2 and singles 0, 4 (4 blocks); the last block
    # (single 5) has none, like FLUX.1's single 37.
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=3, num_single_layers=6,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return seeded(transformer, seed)


def seeded(module, seed: int, scale: float = 0.2):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return module.eval()


def tiny_sdxl_file(folder, unet, seed: int = 3):
    encoder = seeded(IDFormer.tiny(TINY_ID_DIM), seed)
    layers = seeded(SdxlIdLayers.for_unet(unet, id_dim=TINY_ID_DIM), seed + 1)
    path = folder / "pulid_v1.1.safetensors"
    save_file(official_state_dict("sdxl", encoder, layers), str(path))
    return path, encoder, layers


def tiny_flux_file(folder, transformer, seed: int = 5):
    encoder = seeded(IDFormer.tiny(TINY_ID_DIM), seed)
    blocks = seeded(FluxIdCrossAttentions.for_transformer(transformer, FLUX_CA), seed + 1)
    path = folder / "pulid_flux_v0.9.1.safetensors"
    save_file(official_state_dict("flux", encoder, blocks), str(path))
    return path, encoder, blocks


def same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_sdxl_file_round_trips_strictly(tmp_path):
    unet = tiny_sdxl_unet()
    path, encoder, layers = tiny_sdxl_file(tmp_path, unet)
    weights = load_pulid_weights(path, "sdxl", unet=unet, encoder_config=IDFormerConfig.tiny(TINY_ID_DIM))
    assert weights.tag == "pulid_v1.1.safetensors"
    assert same_tensors(weights.encoder, encoder) and same_tensors(weights.injection, layers)
    assert weights.injection.processor_names == list(unet.attn_processors)


def test_tiny_flux_file_round_trips_strictly(tmp_path):
    transformer = tiny_flux_transformer()
    path, encoder, blocks = tiny_flux_file(tmp_path, transformer)
    weights = load_pulid_weights(path, "flux", transformer=transformer, encoder_config=IDFormerConfig.tiny(TINY_ID_DIM),
                                 ca_config=FLUX_CA)
    assert len(weights.injection) == 4
    assert same_tensors(weights.encoder, encoder) and same_tensors(weights.injection, blocks)


def test_file_of_the_other_family_names_both(tmp_path):
    unet, transformer = tiny_sdxl_unet(), tiny_flux_transformer()
    sdxl_path, _, _ = tiny_sdxl_file(tmp_path, unet)
    flux_path, _, _ = tiny_flux_file(tmp_path, transformer)
    with pytest.raises(ModelLoadError) as error:
        load_pulid_weights(sdxl_path, "flux", transformer=transformer)
    message = str(error.value)
    assert "pulid_v1.1.safetensors" in message and "Stable Diffusion XL" in message and "FLUX.1" in message
    assert "pulid_flux_v0.9.1.safetensors" in message  # the file to use instead
    with pytest.raises(ModelLoadError, match=r"pulid_flux_v0\.9\.1\.safetensors is a PuLID file for FLUX\.1.*Stable Diffusion XL"):
        load_pulid_weights(flux_path, "sdxl", unet=unet)


def test_layout_errors_say_what_differs(tmp_path):
    unet = tiny_sdxl_unet()
    path, encoder, layers = tiny_sdxl_file(tmp_path, unet)
    tiny = IDFormerConfig.tiny(TINY_ID_DIM)
    state = official_state_dict("sdxl", encoder, layers)

    broken = dict(state)
    del broken["id_adapter.proj_out"]
    broken["id_adapter_attn_layers.0.id_to_k.weight"] = torch.zeros(16, TINY_ID_DIM)  # attn1 carries no weights
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelLoadError, match=r"broken\.safetensors.*id_adapter\.\*: 1 missing \(proj_out\)"):
        load_pulid_weights(tmp_path / "broken.safetensors", "sdxl", unet=unet, encoder_config=tiny)
    del broken["id_adapter_attn_layers.0.id_to_k.weight"]
    broken["id_adapter.proj_out"] = torch.zeros(3, 3)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelLoadError, match=r"wrong shape \(proj_out \(3, 3\) instead of \(32, 24\)\)"):
        load_pulid_weights(tmp_path / "broken.safetensors", "sdxl", unet=unet, encoder_config=tiny)
    extra = dict(state, **{"lora.weight": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ModelLoadError, match=r"outside the official PuLID layout: lora\.\*"):
        load_pulid_weights(tmp_path / "extra.safetensors", "sdxl", unet=unet, encoder_config=tiny)
    # A full-size file against the tiny encoder: every mismatch is reported, not a traceback.
    with pytest.raises(ModelLoadError, match="unexpected|wrong shape"):
        load_pulid_weights(path, "sdxl", unet=unet)


def test_not_pulid_v1_and_wrong_model_family_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not a PuLID weights file"):
        detect_pulid_family(["model.diffusion_model.x"], "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"PuLID v1.*pulid_v1\.1\.safetensors"):
        detect_pulid_family(["id_adapter.body.0.weight", "id_adapter_attn_layers.1.id_to_k.weight"], "pulid_v1.bin")
    with pytest.raises(ModelLoadError, match="SDXL and FLUX.1 models only, not Stable Diffusion 1.5"):
        load_pulid_weights(tmp_path / "x.safetensors", "sd15")
    (tmp_path / "junk.safetensors").write_bytes(b"<html>not found</html>")
    with pytest.raises(ModelLoadError, match="Cannot read the PuLID file junk.safetensors"):
        load_pulid_weights(tmp_path / "junk.safetensors", "sdxl")


def test_missing_file_names_the_file_and_the_folder(tmp_path):
    with pytest.raises(ModelNotFound) as error:
        find_pulid_file(tmp_path, "sdxl")
    assert "pulid_v1.1.safetensors" in str(error.value) and "models/pulid/" in str(error.value)
    with pytest.raises(ModelNotFound, match=r"pulid_flux_v0\.9\.1\.safetensors or pulid_flux_v0\.9\.0\.safetensors.*models/pulid/"):
        find_pulid_file(tmp_path, "flux")
    (tmp_path / "pulid").mkdir()
    (tmp_path / "pulid" / "pulid_flux_v0.9.0.safetensors").write_bytes(b"")
    assert find_pulid_file(tmp_path, "flux").name == "pulid_flux_v0.9.0.safetensors"
    with pytest.raises(ModelNotFound, match=r"pulid_v1\.1\.safetensors.*models/pulid/"):
        load_pulid_weights(tmp_path / "pulid" / "pulid_v1.1.safetensors", "sdxl")


# -- SDXL injection ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = tiny_sdxl_unet()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                                     unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    layers = seeded(SdxlIdLayers.for_unet(unet, id_dim=TINY_ID_DIM), 8)
    encoder = seeded(IDFormer.tiny(TINY_ID_DIM), 9, scale=0.1)
    with torch.no_grad():
        cond = encoder(torch.randn(1, 12, generator=generator), [torch.randn(1, 9, 16, generator=generator)] * 5)
        uncond = encoder(torch.zeros(1, 12), [torch.zeros(1, 9, 16)] * 5)
    embeds = dict(prompt_embeds=torch.randn(1, 7, 32, generator=generator),
                  pooled_prompt_embeds=torch.randn(1, 16, generator=generator),
                  negative_prompt_embeds=torch.randn(1, 7, 32, generator=generator),
                  negative_pooled_prompt_embeds=torch.randn(1, 16, generator=generator))
    return SimpleNamespace(pipe=pipe, layers=layers, cond=cond, uncond=uncond, embeds=embeds)


def run(pipe, hooks: list, embeds: dict, steps: int = STEPS, **options):
    """A generation as pipelines.generate runs it: latents out, the callback advances step_index.
    Returns (final latents, latents after each step, context)."""
    context = HookContext(steps, 64, 64, 1)
    per_step = []

    def on_step_end(_pipe, step_index, _timestep, tensors):
        context.step_index = step_index + 1
        per_step.append(tensors["latents"].clone())
        return tensors

    options.setdefault("guidance_scale", 5.0)
    with attached(pipe, hooks, context), torch.no_grad():
        latents = pipe(**embeds, num_inference_steps=steps, height=64, width=64, output_type="latent",
                       generator=torch.Generator().manual_seed(1234), callback_on_step_end=on_step_end,
                       callback_on_step_end_tensor_inputs=["latents"], **options).images
    return latents, per_step, context


def sdxl_hook(sdxl, **config):
    return PulidSdxlHook(sdxl.layers, sdxl.cond, sdxl.uncond, PulidSdxlConfig(**config), weights_tag="tiny")


def test_sdxl_weight_zero_is_bitwise_pulid_off_and_weight_changes_the_image(sdxl):
    off, _, _ = run(sdxl.pipe, [], sdxl.embeds)
    zero, _, _ = run(sdxl.pipe, [sdxl_hook(sdxl, id_scale=0.0)], sdxl.embeds)
    on, _, context = run(sdxl.pipe, [sdxl_hook(sdxl, id_scale=0.8)], sdxl.embeds)
    assert torch.equal(zero, off)
    assert torch.isfinite(on).all() and not torch.allclose(on, off)
    assert context.stats["pulid"] == {"processors": 8, "start_step": 0, "steps_with_id": STEPS}


@pytest.mark.parametrize("ortho", ["off", "v1", "v2"])
@pytest.mark.parametrize("num_zero", [0, 20])
def test_sdxl_every_ortho_and_num_zero_setting_injects(sdxl, ortho, num_zero):
    off, _, _ = run(sdxl.pipe, [], sdxl.embeds, steps=1)
    on, _, _ = run(sdxl.pipe, [sdxl_hook(sdxl, ortho=ortho, num_zero=num_zero)], sdxl.embeds, steps=1)
    assert torch.isfinite(on).all() and not torch.allclose(on, off)


def test_sdxl_settings_give_different_images(sdxl):
    results = [run(sdxl.pipe, [sdxl_hook(sdxl, **config)], sdxl.embeds, steps=1)[0]
               for config in ({"ortho": "off"}, {"ortho": "v1"}, {"ortho": "v2"}, {"num_zero": 0}, {"id_scale": 2.0})]
    for i in range(len(results)):
        for j in range(i):
            assert not torch.equal(results[i], results[j])


def test_sdxl_no_id_before_the_start_step(sdxl):
    _, off_steps, _ = run(sdxl.pipe, [], sdxl.embeds)
    _, gated_steps, context = run(sdxl.pipe, [sdxl_hook(sdxl, start_step=2)], sdxl.embeds)
    assert torch.equal(gated_steps[0], off_steps[0]) and torch.equal(gated_steps[1], off_steps[1])
    assert not torch.allclose(gated_steps[2], off_steps[2])
    assert context.stats["pulid"]["steps_with_id"] == 1


def test_sdxl_detach_restores_the_original_processors_and_image(sdxl):
    unet = sdxl.pipe.unet
    before = dict(unet.attn_processors)
    keys_before = list(unet.state_dict())
    off, _, _ = run(sdxl.pipe, [], sdxl.embeds)
    hook = sdxl_hook(sdxl)
    context = HookContext(STEPS, 64, 64, 1)
    hook.attach(sdxl.pipe, context)
    during = unet.attn_processors
    swapped = [name for name in during if isinstance(during[name], IdAttnProcessor)]
    assert swapped == [name for name in before if name.endswith("attn2.processor")]
    assert all(during[name] is before[name] for name in before if name.endswith("attn1.processor"))
    assert list(unet.state_dict()) == keys_before, "the ID weights must not enter the UNet's state dict"
    with pytest.raises(RuntimeError, match="already attached"):
        hook.attach(sdxl.pipe, context)
    hook.detach(sdxl.pipe)
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] and type(after[name]) is type(before[name]) for name in before)
    again, _, _ = run(sdxl.pipe, [], sdxl.embeds)
    assert torch.equal(again, off)
    hook.detach(sdxl.pipe)  # a second detach is harmless


def test_sdxl_batched_cfg_gives_each_half_its_own_id_like_separate_official_calls(sdxl):
    """The pipeline's [uncond, cond] batch == the official two UNet calls (uncond ID, then cond ID)."""
    unet = sdxl.pipe.unet
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 8, 8, generator=generator).expand(2, -1, -1, -1)
    text = torch.cat([sdxl.embeds["negative_prompt_embeds"], sdxl.embeds["prompt_embeds"]])
    added = {"text_embeds": torch.cat([sdxl.embeds["negative_pooled_prompt_embeds"], sdxl.embeds["pooled_prompt_embeds"]]),
             "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}

    def unet_call(branch: str, rows: slice, cfg: bool):
        pipe = SimpleNamespace(unet=unet, do_classifier_free_guidance=cfg)
        context = HookContext(1, 64, 64, 1, branch=branch)
        with attached(pipe, [sdxl_hook(sdxl, num_zero=4, ortho="off", id_scale=3.0)], context), torch.no_grad():
            return unet(sample[rows], 500, encoder_hidden_states=text[rows],
                        added_cond_kwargs={k: v[rows] for k, v in added.items()}).sample

    batched = unet_call("batched", slice(0, 2), cfg=True)
    uncond = unet_call("uncond", slice(0, 1), cfg=False)
    cond = unet_call("cond", slice(1, 2), cfg=False)
    rounding = (batched - torch.cat([uncond, cond])).abs().max()
    assert rounding < 1e-5
    swapped = unet_call("cond", slice(0, 1), cfg=False)  # the uncond row with the face's ID
    assert (swapped - uncond).abs().max() > 100 * max(rounding, 1e-7)


def test_sdxl_hook_refuses_id_layers_of_another_unet(sdxl):
    other = SimpleNamespace(unet=tiny_sdxl_unet().to(torch.float64))
    other.unet.down_blocks[1].attentions = other.unet.down_blocks[1].attentions[:0]  # fewer processors
    hook = sdxl_hook(sdxl)
    with pytest.raises(ValueError, match="another order"):
        hook.attach(other, HookContext(1, 64, 64, 1))


def test_sdxl_cache_key_names_what_changes_the_image(sdxl):
    base = sdxl_hook(sdxl).cache_key()
    assert sdxl_hook(sdxl).cache_key() == base
    assert sdxl_hook(sdxl, id_scale=0.5).cache_key() != base
    other = PulidSdxlHook(sdxl.layers, sdxl.cond + 1, sdxl.uncond, PulidSdxlConfig(), weights_tag="tiny")
    assert other.cache_key() != base


# -- FLUX injection ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer = tiny_flux_transformer()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(17)
    blocks = seeded(FluxIdCrossAttentions.for_transformer(transformer, FLUX_CA), 18)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=generator),
                  pooled_prompt_embeds=torch.randn(1, 32, generator=generator))
    negative = dict(negative_prompt_embeds=torch.randn(1, 8, 32, generator=generator),
                    negative_pooled_prompt_embeds=torch.randn(1, 32, generator=generator))
    return SimpleNamespace(pipe=pipe, blocks=blocks, embeds=embeds, negative=negative,
                           cond=torch.randn(1, 4, TINY_ID_DIM, generator=generator),
                           uncond=torch.randn(1, 4, TINY_ID_DIM, generator=generator))


def flux_hook(flux, uncond: bool = False, **config):
    return PulidFluxHook(flux.blocks, flux.cond, flux.uncond if uncond else None, PulidFluxConfig(**config), weights_tag="tiny")


def test_flux_weight_zero_is_bitwise_pulid_off_and_weight_changes_the_image(flux):
    off, _, _ = run(flux.pipe, [], flux.embeds, guidance_scale=3.5)
    zero, _, _ = run(flux.pipe, [flux_hook(flux, id_weight=0.0)], flux.embeds, guidance_scale=3.5)
    on, _, context = run(flux.pipe, [flux_hook(flux, id_weight=1.0)], flux.embeds, guidance_scale=3.5)
    assert torch.equal(zero, off)
    assert torch.isfinite(on).all() and not torch.allclose(on, off)
    assert context.stats["pulid"] == {"ca_blocks": 4, "start_step": 0, "steps_with_id": STEPS, "ca_calls": 4 * STEPS}


def test_flux_no_id_before_the_start_step(flux):
    _, off_steps, _ = run(flux.pipe, [], flux.embeds, guidance_scale=3.5)
    _, gated, context = run(flux.pipe, [flux_hook(flux, start_step=2)], flux.embeds, guidance_scale=3.5)
    assert torch.equal(gated[0], off_steps[0]) and torch.equal(gated[1], off_steps[1])
    assert not torch.allclose(gated[2], off_steps[2])
    assert context.stats["pulid"]["ca_calls"] == 4


def test_flux_hooks_sit_on_every_2nd_double_and_every_4th_single_block_and_detach_removes_them(flux):
    transformer = flux.pipe.transformer
    modules = [transformer, *transformer.transformer_blocks, *transformer.single_transformer_blocks]
    off, _, _ = run(flux.pipe, [], flux.embeds, guidance_scale=3.5)
    forward_before = [m.forward for m in modules]
    hook = flux_hook(flux)
    hook.attach(flux.pipe, HookContext(STEPS, 64, 64, 1))
    hooked = [i for i, b in enumerate(transformer.transformer_blocks) if b._forward_hooks]
    hooked_single = [i for i, b in enumerate(transformer.single_transformer_blocks) if b._forward_hooks]
    assert (hooked, hooked_single) == ([0, 2], [0, 4])
    assert len(transformer._forward_pre_hooks) == 1
    assert [m.forward for m in modules] == forward_before, "no forward is patched"
    with pytest.raises(RuntimeError, match="already attached"):
        hook.attach(flux.pipe, HookContext(STEPS, 64, 64, 1))
    hook.detach(flux.pipe)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
    again, _, _ = run(flux.pipe, [], flux.embeds, guidance_scale=3.5)
    assert torch.equal(again, off)


def test_flux_update_is_the_official_formula_on_image_tokens_only(flux):
    transformer = flux.pipe.transformer
    generator = torch.Generator().manual_seed(4)
    image, text = torch.randn(1, 16, 32, generator=generator), torch.randn(1, 8, 32, generator=generator)
    temb = torch.randn(1, 32, generator=generator)
    rotary = transformer.pos_embed(torch.cat([torch.zeros(8, 3), torch.zeros(16, 3)]))
    hook = flux_hook(flux, id_weight=0.7)
    for block, ca_index in ((transformer.transformer_blocks[2], 1), (transformer.single_transformer_blocks[4], 3)):
        kwargs = dict(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary)
        with torch.no_grad():
            plain_text, plain_image = block(**kwargs)
            with attached(flux.pipe, [hook], HookContext(1, 64, 64, 1)):
                transformer(hidden_states=torch.randn(1, 16, 64), encoder_hidden_states=text, pooled_projections=temb,
                            timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3),
                            guidance=torch.tensor([3.5]))  # sets the call's branch
                hooked_text, hooked_image = block(**kwargs)
            expected = plain_image + 0.7 * flux.blocks[ca_index](flux.cond, plain_image)
        assert torch.equal(hooked_text, plain_text)
        assert torch.allclose(hooked_image, expected, atol=1e-6) and not torch.allclose(hooked_image, plain_image)


def test_flux_true_cfg_negative_call_gets_the_uncond_id_or_none(flux):
    options = dict(guidance_scale=3.5, true_cfg_scale=2.0, **flux.negative)
    _, _, without = run(flux.pipe, [flux_hook(flux)], flux.embeds, **options)
    assert without.stats["pulid"]["ca_calls"] == 4 * STEPS  # the negative calls get no ID
    with_uncond, _, context = run(flux.pipe, [flux_hook(flux, uncond=True)], flux.embeds, **options)
    assert context.stats["pulid"]["ca_calls"] == 2 * 4 * STEPS
    cond_everywhere = PulidFluxHook(flux.blocks, flux.cond, flux.cond, PulidFluxConfig())
    same_id, _, _ = run(flux.pipe, [cond_everywhere], flux.embeds, **options)
    assert not torch.allclose(with_uncond, same_id), "the negative call must use the uncond ID"


def test_flux_ca_blocks_run_on_the_transformer_dtype_and_leave_the_master_weights_alone(flux):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer = tiny_flux_transformer().to(torch.float64)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    hook = flux_hook(flux)
    master = {k: v.clone() for k, v in flux.blocks.state_dict().items()}
    context = HookContext(1, 64, 64, 1)
    hook.attach(pipe, context)
    placed = hook._placed
    assert placed is not flux.blocks and {p.dtype for p in placed.parameters()} == {torch.float64}
    with torch.no_grad():
        out = transformer(hidden_states=torch.randn(1, 16, 64, dtype=torch.float64),
                          encoder_hidden_states=flux.embeds["prompt_embeds"].double(),
                          pooled_projections=flux.embeds["pooled_prompt_embeds"].double(), timestep=torch.tensor([0.5]),
                          img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5])).sample
    assert out.dtype == torch.float64 and context.stats["pulid"]["ca_blocks"] == 4
    hook.detach(pipe)
    assert hook._placed is None
    assert all(v.dtype == torch.float32 and torch.equal(v, master[k]) for k, v in flux.blocks.state_dict().items())


def test_flux_with_diffusers_first_block_cache_adds_no_id_to_cached_blocks(flux):
    from diffusers.hooks import FirstBlockCacheConfig

    transformer = flux.pipe.transformer
    transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))  # compute step 0, serve the rest from cache
    try:
        cached_off, _, _ = run(flux.pipe, [], flux.embeds, guidance_scale=3.5)
        cached_zero, _, _ = run(flux.pipe, [flux_hook(flux, id_weight=0.0)], flux.embeds, guidance_scale=3.5)
        cached_on, _, context = run(flux.pipe, [flux_hook(flux)], flux.embeds, guidance_scale=3.5)
        assert torch.equal(cached_zero, cached_off)
        assert not torch.allclose(cached_on, cached_off)
        assert context.stats["pulid"]["ca_calls"] == 4, "only the computed step runs the ID blocks"
        assert transformer.transformer_blocks[0]._diffusers_hook.get_hook("fbc_leader_block_hook") is not None
    finally:
        transformer.disable_cache()
    assert not transformer.transformer_blocks[0]._forward_hooks


def test_flux_hook_refuses_ca_blocks_of_another_transformer(flux):
    hook = PulidFluxHook(FluxIdCrossAttentions(20, FLUX_CA), flux.cond)
    with pytest.raises(ValueError, match="needs 4 PuLID CA blocks"):
        hook.attach(flux.pipe, HookContext(1, 64, 64, 1))
    assert not flux.pipe.transformer._forward_pre_hooks
