"""VAE precision policy, NaN re-decode, tiled retry on out-of-memory, and re-decoding kept latents."""
from __future__ import annotations

import math

import pytest
import torch

from pipelines import devices
from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.infotext import parse_infotext
from pipelines.manager import ManagerConfig, PipelineManager
from pipelines.request import GenerationRequest
from pipelines.vae import decode, resolve_vae_dtype

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("vae-cache")
    from pipelines.demo_model import ensure_demo_model

    ensure_demo_model(cache)
    return cache


def make_manager(tmp_path, cache, **options) -> PipelineManager:
    # diffusers' default VAE config says force_upcast; these tests run fp16 on purpose.
    options.setdefault("vae_honour_force_upcast", False)
    config = ManagerConfig(tmp_path / "models", tmp_path / "outputs", cache, device="cpu", include_hf_cache=False, **options)
    return PipelineManager(config)


def request(**fields) -> GenerationRequest:
    values = dict(model=DEMO_MODEL_NAME, prompt="vae test", steps=2, width=64, height=64, seed=7, save=False)
    values.update(fields)
    return GenerationRequest(**values)


def make_fp16_overflow(manager: PipelineManager) -> None:
    """Scale the decoder's first conv so fp16 activations overflow to Inf (fp32 stays finite)."""
    with manager.use(DEMO_MODEL_NAME) as model:
        with torch.no_grad():
            model.pipe.vae.decoder.conv_in.weight.mul_(2e5)


# -- policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "capability", "amd", "expected"),
    [
        (CPU, None, False, torch.float32),
        (CUDA, (8, 9), False, torch.bfloat16),
        (CUDA, (8, 0), False, torch.bfloat16),
        (CUDA, (7, 5), False, torch.float32),
        (CUDA, (9, 0), True, torch.float32),
    ],
)
def test_auto_policy_per_device(monkeypatch, device, capability, amd, expected):
    monkeypatch.setattr(devices, "cuda_capability", lambda d: capability)
    monkeypatch.setattr(devices, "is_amd", lambda d: amd)
    choice = resolve_vae_dtype("auto", device)
    assert choice.dtype == expected
    assert choice.reason.startswith("auto")
    # fp16 is never picked automatically, even where it would be fast.
    assert choice.dtype != torch.float16


def test_explicit_choices_and_force_upcast():
    assert resolve_vae_dtype("bf16", CPU).dtype == torch.bfloat16
    assert resolve_vae_dtype("fp16", CPU).dtype == torch.float16
    honoured = resolve_vae_dtype("fp16", CPU, force_upcast=True, honour_force_upcast=True)
    assert honoured.dtype == torch.float32 and "force_upcast" in honoured.reason
    assert resolve_vae_dtype("fp16", CPU, force_upcast=True, honour_force_upcast=False).dtype == torch.float16
    with pytest.raises(ValueError, match="VAE dtype must be one of"):
        resolve_vae_dtype("fp8", CPU)


# -- NaN fallback ---------------------------------------------------------------------------------


def test_fp16_overflow_is_redecoded_in_fp32_and_recorded(tmp_path, demo_cache):
    manager = make_manager(tmp_path, demo_cache, vae_sticky_fallback=False)
    make_fp16_overflow(manager)
    result = manager.generate(request(vae_dtype="fp16", batch_size=2))
    assert result.vae_dtype == "fp32 (fallback from fp16)"
    assert any("NaN/Inf" in w and "re-decoded in fp32" in w for w in result.warnings)
    for image in result.images:
        assert parse_infotext(image.infotext)["VAE dtype"] == "fp32 (fallback from fp16)"
        pixels = torch.tensor(list(image.image.getdata()), dtype=torch.float32)
        assert pixels.std() > 0, "the fallback image is blank"


def test_only_the_failing_sample_is_redecoded(demo_cache, tmp_path):
    manager = make_manager(tmp_path, demo_cache)
    with manager.use(DEMO_MODEL_NAME) as model:
        vae = model.pipe.vae
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        latents[1] *= 3e5  # only sample 2 overflows in fp16
        outcome = decode(vae, latents, torch.float16, CPU)
    assert outcome.fallback_samples == [1]
    assert torch.isfinite(outcome.images).all()
    assert outcome.sample_label(0) == "fp16" and outcome.sample_label(1) == "fp32 (fallback from fp16)"


def test_sticky_fallback_keeps_fp32_for_the_session(tmp_path, demo_cache):
    manager = make_manager(tmp_path, demo_cache, vae_sticky_fallback=True)
    make_fp16_overflow(manager)
    first = manager.generate(request(vae_dtype="fp16"))
    assert first.vae_dtype == "fp32 (fallback from fp16)"
    assert manager.vae_forced_fp32 and "NaN fallback" in manager.vae_status()
    second = manager.generate(request(vae_dtype="fp16"))
    assert second.vae_dtype == "fp32: kept after a NaN fallback earlier this session", "the sticky fallback did not hold, or hid why"
    assert manager.generate(request(vae_dtype="fp32")).vae_dtype == "fp32", "fp32 asked for is no substitution"
    assert not any("NaN/Inf" in w for w in second.warnings)


def test_one_off_fallback_tries_the_requested_dtype_again(tmp_path, demo_cache):
    manager = make_manager(tmp_path, demo_cache, vae_sticky_fallback=False)
    make_fp16_overflow(manager)
    manager.generate(request(vae_dtype="fp16"))
    second = manager.generate(request(vae_dtype="fp16"))
    assert second.vae_dtype == "fp32 (fallback from fp16)"
    assert not manager.vae_forced_fp32


# -- out of memory ----------------------------------------------------------------------------------


def test_out_of_memory_during_decode_retries_tiled(tmp_path, demo_cache, monkeypatch):
    manager = make_manager(tmp_path, demo_cache)
    with manager.use(DEMO_MODEL_NAME) as model:
        vae = model.pipe.vae

        def out_of_memory(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(vae, "decode", out_of_memory)  # the decode boundary; tiled_decode is untouched
    result = manager.generate(request(width=128, height=96))
    assert result.images[0].image.size == (128, 96)
    assert result.vae_dtype == "fp32, tiled"
    assert any("retried with tiled decoding" in w for w in result.warnings)
    assert parse_infotext(result.images[0].infotext)["VAE dtype"] == "fp32, tiled"


def test_other_decode_errors_are_not_hidden(tmp_path, demo_cache, monkeypatch):
    manager = make_manager(tmp_path, demo_cache)
    with manager.use(DEMO_MODEL_NAME) as model:
        monkeypatch.setattr(model.pipe.vae, "decode", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        manager.generate(request())
    assert not any(r.locked for r in manager.cache.records())


def test_force_upcast_honoured_by_default(tmp_path, demo_cache):
    manager = make_manager(tmp_path, demo_cache, vae_honour_force_upcast=True)
    with manager.use(DEMO_MODEL_NAME) as model:
        assert model.pipe.vae.config.force_upcast
    result = manager.generate(request(vae_dtype="fp16"))
    # Issue 17 item 2: the substitution says why, in the readout's label and in the infotext.
    assert result.vae_dtype == "fp32: this VAE overflows in fp16 (force_upcast)"
    assert parse_infotext(result.images[0].infotext)["VAE dtype"] == result.vae_dtype
    from ui.session import result_markdown

    assert "VAE fp32: this VAE overflows in fp16 (force_upcast)" in result_markdown(result)
    assert manager.generate(request(vae_dtype="bf16")).vae_dtype == "bf16", "only fp16 is replaced"


def test_substitution_label_wording():
    from pipelines.vae import outcome_label

    assert outcome_label(torch.float32, False, False, "") == "fp32"
    assert outcome_label(torch.float32, False, True, "why") == "fp32, tiled: why"
    # A NaN re-decode already says what it replaced.
    assert outcome_label(torch.float16, True, False, "why") == "fp32 (fallback from fp16)"


def test_auto_hint_is_one_short_sentence(tmp_path, demo_cache):
    from ui.last_used import vae_rule_info

    manager = make_manager(tmp_path, demo_cache)
    hint = vae_rule_info("auto", manager.vae_auto_brief())
    assert hint == "Default from Settings: auto (not last-used); auto is fp32 on this CPU."
    assert hint.count(".") == 1 and "(" not in hint.split(";")[1]


def test_tiling_setting_decodes_in_tiles_close_to_the_plain_decode(tmp_path, demo_cache):
    plain = make_manager(tmp_path / "plain", demo_cache).generate(request(width=256, height=256, seed=3))
    tiled = make_manager(tmp_path / "tiled", demo_cache, vae_tiling=True).generate(request(width=256, height=256, seed=3))
    assert tiled.vae_dtype == "fp32, tiled" and plain.vae_dtype == "fp32"
    from pipelines.metrics import psnr

    assert tiled.images[0].image.size == (256, 256)
    assert 15 < psnr(plain.images[0].image, tiled.images[0].image) < math.inf


# -- re-decode and honesty ---------------------------------------------------------------------------


def test_redecode_kept_latents_in_another_dtype(tmp_path, demo_cache):
    manager = make_manager(tmp_path, demo_cache)
    with pytest.raises(Exception, match="Nothing to re-decode"):
        manager.redecode(None, "fp32")
    result = manager.generate(request(batch_size=2, vae_dtype="fp32"))
    same = manager.redecode(result.kept_latents, "fp32")
    assert same.psnr_vs_first == [math.inf, math.inf], "the kept latents are not the ones decoded"
    other = manager.redecode(result.kept_latents, "bf16")
    assert other.vae_label == "bf16"
    assert [im.size for im in other.images] == [im.image.size for im in result.images]
    assert all(25 < score < math.inf for score in other.psnr_vs_first)


def test_dtype_shown_is_the_dtype_the_decode_ran_in(tmp_path, demo_cache, monkeypatch):
    manager = make_manager(tmp_path, demo_cache)
    seen = []
    with manager.use(DEMO_MODEL_NAME) as model:
        vae = model.pipe.vae
        original = vae.decode

        def spy(z, *args, **kwargs):
            seen.append((z.dtype, next(vae.decoder.parameters()).dtype))
            return original(z, *args, **kwargs)

        monkeypatch.setattr(vae, "decode", spy)
    for requested, expected in (("bf16", torch.bfloat16), ("fp32", torch.float32), ("fp16", torch.float16)):
        seen.clear()
        result = manager.generate(request(vae_dtype=requested))
        assert seen == [(expected, expected)]
        assert result.vae_dtype == requested
        assert parse_infotext(result.images[0].infotext)["VAE dtype"] == requested
    # Switching dtype casts the one VAE in place: no second copy is kept.
    with manager.use(DEMO_MODEL_NAME) as model:
        assert len({p.dtype for p in model.pipe.vae.parameters()}) == 1


# -- the encode (img2img / inpainting) follows the same policy --------------------------------------


def test_fp16_encode_overflow_is_reencoded_in_fp32(tmp_path, demo_cache):
    from pipelines.vae import encode

    manager = make_manager(tmp_path, demo_cache)
    with manager.use(DEMO_MODEL_NAME) as model:
        vae = model.pipe.vae
        pixels = torch.rand(1, 3, 64, 64) * 2 - 1
        fp32 = encode(vae, pixels, torch.float32, CPU)
        with torch.no_grad():
            vae.encoder.conv_in.weight.mul_(2e5)  # fp16 activations overflow; fp32 stays finite
            vae.encoder.conv_in.bias.mul_(0)
        try:
            outcome = encode(vae, pixels, torch.float16, CPU)
        finally:
            with torch.no_grad():
                vae.encoder.conv_in.weight.div_(2e5)
        assert outcome.fell_back and outcome.label() == "fp32 (fallback from fp16)" and torch.isfinite(outcome.latents).all()
        assert any("re-encoded in fp32" in note for note in outcome.notes)
        assert fp32.latents.shape == outcome.latents.shape and not fp32.fell_back


def test_out_of_memory_during_encode_retries_tiled(tmp_path, demo_cache, monkeypatch):
    from pipelines.vae import encode

    manager = make_manager(tmp_path, demo_cache)
    with manager.use(DEMO_MODEL_NAME) as model:
        vae = model.pipe.vae
        pixels = torch.rand(1, 3, 128, 128) * 2 - 1
        plain = encode(vae, pixels, torch.float32, CPU)
        real_encoder = vae._encode

        def out_of_memory_unless_tiled(x):
            if not vae.use_tiling:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_encoder(x)

        monkeypatch.setattr(vae, "_encode", out_of_memory_unless_tiled)
        tiled = encode(vae, pixels, torch.float32, CPU)
    assert tiled.tiled and tiled.label() == "fp32, tiled" and any("retried with tiled encoding" in n for n in tiled.notes)
    assert tiled.latents.shape == plain.latents.shape
    assert not vae.use_tiling  # put back
