"""LoRAs through the manager the app uses: applied for one generation, removed after, in every cache key,
together with PuLID, DeepCache, the FLUX block caches and the approximate cache."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines import manager as manager_module
from pipelines.errors import InvalidRequest, ModelLoadError
from pipelines.face.options import FaceOptions
from pipelines.infotext import parse_infotext
from pipelines.lora.files import lora_hash
from pipelines.lora.tags import parse_infotext_hashes
from pipelines.bench.tiny_face import HANKS, TINY_IDFORMER, write_face_models
from tests.lora.make_loras import write_lora
from tests.tiny_models import copy_model, tiny_request

FAMILIES = ("sd15", "sdxl", "flux")


@pytest.fixture(scope="module")
def lora_models(tmp_path_factory, model_zoo, tiny_pipes):
    models = tmp_path_factory.mktemp("lora-models")
    for family in FAMILIES:
        copy_model(model_zoo[family], models, f"tiny-{family}")
        for layout in ("kohya", "diffusers"):
            write_lora(models / "Lora", f"{family}-{layout}", tiny_pipes[family], family, layout, seed=1)
        write_lora(models / "Lora", f"{family}-second", tiny_pipes[family], family, "kohya", seed=2)
    write_face_models(models, sdxl_unet=tiny_pipes["sdxl"].unet, flux_transformer=tiny_pipes["flux"].transformer)
    return models


@pytest.fixture(scope="module")
def lora_manager(tmp_path_factory, lora_models, demo_cache_dir):
    from pipelines.manager import ManagerConfig, PipelineManager

    manager = PipelineManager(ManagerConfig(models_dir=lora_models, outputs_dir=tmp_path_factory.mktemp("lora-out"),
                                            cache_dir=demo_cache_dir, device="cpu", include_hf_cache=False, latent_cache_entries=0))
    manager.face.idformer_config = TINY_IDFORMER
    return manager


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def denoiser(pipe, family):
    return pipe.transformer if family == "flux" else pipe.unet


def snapshot(pipe, family) -> dict:
    """Every weight the LoRA layers could touch, and the module tree they would change."""
    parts = {"denoiser": denoiser(pipe, family), "te": pipe.text_encoder}
    if family == "sdxl":
        parts["te2"] = pipe.text_encoder_2
    state = {f"{p}.{k}": v.detach().clone() for p, m in parts.items() for k, v in m.state_dict().items()}
    modules = {p: [type(m).__name__ for _, m in module.named_modules()] for p, module in parts.items()}
    return {"state": state, "modules": modules}


def same_snapshot(a, b) -> bool:
    return a["modules"] == b["modules"] and a["state"].keys() == b["state"].keys() and all(
        torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def no_lora_base(monkeypatch):
    """Generate with the LoRA tags in the prompt text but none applied: the base image for the same text."""
    monkeypatch.setattr(manager_module, "lora_refs", lambda _prompt: [])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_weight_zero_is_the_base_image_and_removal_restores_exact_weights(lora_manager, family, layout, monkeypatch):
    request = tiny_request(family, seed=11, prompt=f"a portrait photo <lora:{family}-{layout}:0>")
    with lora_manager.use(f"tiny-{family}") as model:
        before = snapshot(model.pipe, family)
    zero = lora_manager.generate(request)
    on = lora_manager.generate(dataclasses.replace(request, prompt=f"a portrait photo <lora:{family}-{layout}:1.5>"))
    with lora_manager.use(f"tiny-{family}") as model:
        assert same_snapshot(before, snapshot(model.pipe, family)), "the LoRA left a trace on the model"
    with monkeypatch.context() as patch:
        no_lora_base(patch)
        base = lora_manager.generate(request)
    assert np.array_equal(pixels(zero), pixels(base))
    assert np.abs(pixels(on) - pixels(base)).mean() > 0.05
    assert "LoRA load" in on.stage_seconds


def test_two_loras_with_weights_and_their_hashes_in_the_infotext(lora_manager, lora_models):
    one = lora_manager.generate(tiny_request("sdxl", seed=4, prompt="x <lora:sdxl-kohya:0.8>"))
    two = lora_manager.generate(tiny_request("sdxl", seed=4, prompt="x <lora:sdxl-kohya:0.8>, <lora:sdxl-second:-0.6>"))
    assert not np.array_equal(pixels(one), pixels(two))
    params = parse_infotext(two.images[0].infotext)
    assert params["Prompt"] == "x <lora:sdxl-kohya:0.8>, <lora:sdxl-second:-0.6>"  # PNG Info -> Send to Generate restores the tags
    assert parse_infotext_hashes(params["Lora hashes"]) == {
        "sdxl-kohya": lora_hash(lora_models / "Lora" / "sdxl-kohya.safetensors"),
        "sdxl-second": lora_hash(lora_models / "Lora" / "sdxl-second.safetensors"),
    }
    assert 'Lora hashes: "sdxl-kohya: ' in two.images[0].infotext  # quoted, as A1111 writes it


def test_a_repeat_reads_no_file(lora_manager, monkeypatch):
    lora_manager.generate(tiny_request("sd15", seed=2, prompt="y <lora:sd15-kohya:0.5>"))
    hits = lora_manager.lora_memo.hits
    monkeypatch.setattr("pipelines.lora.files.read_state_dict", lambda _path: pytest.fail("the LoRA file was read again"))
    events = []
    lora_manager.generate(tiny_request("sd15", seed=3, prompt="y <lora:sd15-kohya:0.9>"), listener=events.append)
    assert lora_manager.lora_memo.hits == hits + 1
    details = [getattr(e, "detail", "") for e in events if getattr(e, "stage", None) == "LoRA load"]
    assert any("1 from RAM" in (d or "") for d in details), details


def test_loras_listed_with_family_size_and_why_not(lora_manager):
    entries = {e.name: e for e in lora_manager.loras()}
    assert entries["sdxl-kohya"].family.value == "sdxl" and entries["sdxl-kohya"].size_bytes > 0
    assert entries["sdxl-kohya"].unusable_with(entries["sdxl-kohya"].family) is None
    assert "is a Stable Diffusion XL LoRA; the model is FLUX.1" in entries["sdxl-kohya"].unusable_with(entries["flux-kohya"].family)
    assert not any(e.name.endswith(("kohya", "diffusers", "second")) for e in lora_manager.models())


def test_bad_input_names_the_file_and_leaves_nothing_applied(lora_manager, lora_models, tiny_pipes):
    with pytest.raises(InvalidRequest, match=r"No LoRA named 'sd15-kohia'.*Close names: sd15-kohya"):
        lora_manager.generate(tiny_request("sd15", prompt="<lora:sd15-kohia:1>"))
    with pytest.raises(InvalidRequest, match=r"sdxl-kohya.safetensors is a Stable Diffusion XL LoRA; the model is Stable Diffusion 1.5"):
        lora_manager.generate(tiny_request("sd15", prompt="<lora:sdxl-kohya:1>"))
    with pytest.raises(InvalidRequest, match="must be a number, got 'strong'"):
        lora_manager.generate(tiny_request("sd15", prompt="<lora:sd15-kohya:strong>"))
    with pytest.raises(InvalidRequest, match="between -10 and 10, got 12"):
        lora_manager.generate(tiny_request("sd15", prompt="<lora:sd15-kohya:12>"))
    folder = lora_models / "Lora"
    cut = folder / "cut.safetensors"
    data = (folder / "sd15-kohya.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    # An SD 1.5 LoRA for another SD 1.5 (wider layers): right family, wrong shapes.
    from tests.lora.make_loras import lora_state_dict
    from safetensors.torch import save_file
    wide = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if "lora_up" in k else v
            for k, v in lora_state_dict(tiny_pipes["sd15"], "sd15", "kohya").items()}
    save_file(wide, str(folder / "wide.safetensors"))
    lora_manager.refresh()
    try:
        with lora_manager.use("tiny-sd15") as model:
            before = snapshot(model.pipe, "sd15")
        with pytest.raises(ModelLoadError, match="cut.safetensors is truncated"):
            lora_manager.generate(tiny_request("sd15", prompt="<lora:cut:1>"))
        with pytest.raises(ModelLoadError, match="LoRA wide.safetensors does not fit this model"):
            lora_manager.generate(tiny_request("sd15", prompt="<lora:sd15-kohya:1> <lora:wide:1>"))
        with lora_manager.use("tiny-sd15") as model:
            assert same_snapshot(before, snapshot(model.pipe, "sd15")), "a failed LoRA load stayed half-applied"
    finally:
        cut.unlink()
        (folder / "wide.safetensors").unlink()
        lora_manager.refresh()


def test_caches_key_on_the_lora_set(make_manager, lora_models, tmp_path):
    manager = make_manager(lora_models, latent_cache_entries=8)
    request = tiny_request("sd15", seed=21, prompt="z <lora:sd15-kohya:0.7>")
    first = manager.generate(request)
    repeat = manager.generate(request)
    assert repeat.cache_notes.get("latent cache", "").startswith("hit")
    assert repeat.cache_notes.get("prompt memo") == "hit"
    # The same name and weight, another file: no cache may serve the old LoRA's result.
    path = lora_models / "Lora" / "sd15-kohya.safetensors"
    original = path.read_bytes()
    try:
        from tests.lora.make_loras import write_lora as rewrite
        with manager.use("tiny-sd15") as model:
            rewrite(lora_models / "Lora", "sd15-kohya", model.pipe, "sd15", "kohya", seed=99)
        changed = manager.generate(request)
        assert changed.cache_notes.get("latent cache") == "miss" and changed.cache_notes.get("prompt memo") == "miss"
        assert not np.array_equal(pixels(first), pixels(changed))
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_with_deepcache(lora_manager, family):
    request = tiny_request(family, seed=6, steps=4, prompt=f"d <lora:{family}-kohya:1>", deepcache_interval=2)
    result = lora_manager.generate(request)
    assert result.hook_stats["deepcache"]["cached_steps"] >= 1
    assert 0 < np.abs(pixels(result) - pixels(lora_manager.generate(dataclasses.replace(request, deepcache_interval=1)))).mean() < 60


def test_with_flux_block_cache(lora_manager):
    request = tiny_request("flux", seed=6, steps=4, prompt="f <lora:flux-diffusers:1>", flux_cache="first-block", flux_cache_threshold=0.5)
    result = lora_manager.generate(request)
    assert "flux-block-cache" in result.hook_stats
    assert "Lora hashes" in parse_infotext(result.images[0].infotext)


@pytest.mark.parametrize(("weights", "other"), [("1", "0.5"), ("1:0.5", "1:0.4")])
def test_approximate_cache_keys_on_the_lora_set(make_manager, lora_models, tmp_path, weights, other):
    """The prompts' words are the same (the vector search would match them): only the LoRA set's key, which carries
    the weights (the denoiser's own one too, `1:0.5`), keeps another weight's latents out."""
    manager = make_manager(lora_models, cache_dir=tmp_path / "cache", latent_cache_entries=0)
    base = tiny_request("sd15", seed=8, steps=10, approximate_cache=True, prompt=f"a red circle <lora:sd15-kohya:{weights}>")
    manager.generate(base)
    similar = manager.generate(dataclasses.replace(base, prompt=f"a red circle <lora:sd15-kohya:{weights}>!"))
    other_weight = manager.generate(dataclasses.replace(base, prompt=f"a red circle <lora:sd15-kohya:{other}>"))
    assert similar.cache_notes["approx cache"].startswith("hit")
    assert other_weight.cache_notes["approx cache"].startswith("miss")


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_lora_and_pulid_together(lora_manager, family):
    """PuLID swaps attention processors (SDXL) or hooks blocks (FLUX); PEFT wraps the Linear layers inside
    the same attention modules. Both apply, each changes the image, and both leave the model exactly as found."""
    face = FaceOptions(photos=(str(HANKS),), id_weight=1.5)
    request = tiny_request(family, seed=9, prompt=f"p <lora:{family}-kohya:1.2>")
    with lora_manager.use(f"tiny-{family}") as model:
        before = snapshot(model.pipe, family)
        processors = dict(denoiser(model.pipe, family).attn_processors)
    both = lora_manager.generate(request, face=face)
    lora_only = lora_manager.generate(request)
    face_only = lora_manager.generate(dataclasses.replace(request, prompt="p"), face=face)
    assert both.hook_stats["pulid"]["steps_with_id"] >= 1
    assert not np.array_equal(pixels(both), pixels(lora_only))
    assert not np.array_equal(pixels(both), pixels(face_only))
    params = parse_infotext(both.images[0].infotext)
    assert "Lora hashes" in params and "PuLID weight" in params
    with lora_manager.use(f"tiny-{family}") as model:
        assert same_snapshot(before, snapshot(model.pipe, family))
        after = dict(denoiser(model.pipe, family).attn_processors)
        assert after.keys() == processors.keys() and all(after[k] is processors[k] for k in after)


def test_cli_lora_flag_and_tags_in_the_prompt(make_manager, lora_models, capsys):
    import json

    from app import build_parser, fill_family_defaults
    from ui.cli import cmd_generate, cmd_models

    args = build_parser().parse_args(["generate", "--prompt", "a <lora:sd15-kohya:0.5>", "--lora", "sd15-second:-0.7", "--lora", "sd15-diffusers",
                                      "--model", "tiny-sd15", "--steps", "2", "--width", "64", "--height", "64", "--seed", "3", "--json", "--no-save",
                                      "--sampler", "Euler", "--vae-dtype", "auto"])
    manager = make_manager(lora_models)
    assert cmd_generate(manager, fill_family_defaults(manager, args)) == 0  # as `app.py generate` calls it
    result = json.loads(capsys.readouterr().out)
    params = parse_infotext(result["infotexts"][0])
    assert params["Prompt"] == "a <lora:sd15-kohya:0.5> <lora:sd15-second:-0.7> <lora:sd15-diffusers:1>"
    assert set(parse_infotext_hashes(params["Lora hashes"])) == {"sd15-kohya", "sd15-second", "sd15-diffusers"}
    bad = build_parser().parse_args(["generate", "--prompt", "a", "--lora", "sd15-kohya:loud", "--model", "tiny-sd15"])
    with pytest.raises(InvalidRequest, match="must be a number, got 'loud'"):
        cmd_generate(manager, fill_family_defaults(manager, bad))
    assert cmd_models(manager, build_parser().parse_args(["models"])) == 0
    listing = capsys.readouterr().out
    assert "sdxl-kohya  [Stable Diffusion XL, kohya" in listing


def test_a1111_api_lists_loras_and_applies_prompt_tags(make_manager, lora_models):
    import json
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ui.a1111.routes import build_router

    manager = make_manager(lora_models)
    app = FastAPI()
    app.include_router(build_router(manager, SimpleNamespace(vae_dtype="auto"), SimpleNamespace(api_auth=())))
    client = TestClient(app)
    listed = {item["name"]: item for item in client.get("/sdapi/v1/loras").json()}
    assert set(listed) >= {"sd15-kohya", "sdxl-diffusers", "flux-second"} and listed["sd15-kohya"]["path"].endswith("sd15-kohya.safetensors")
    answer = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a lighthouse <lora:sd15-kohya:0.8>", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": "tiny-sd15"}})
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert "Lora hashes: \"sd15-kohya: " in info["infotexts"][0]
    assert not any("LoRA" in w for w in info.get("warnings", []))


def test_models_tab_rows_say_which_lora_fits_the_selected_model(lora_manager):
    from ui.models_tab import LORA_COLUMNS, lora_rows

    rows = {row[0]: dict(zip(LORA_COLUMNS, row)) for row in lora_rows(lora_manager, "tiny-sdxl")}
    verdict = LORA_COLUMNS[5]
    assert rows["sdxl-kohya"][verdict] == "usable" and rows["sdxl-kohya"]["family"] == "Stable Diffusion XL"
    assert rows["flux-diffusers"][verdict] == "flux-diffusers.safetensors is a FLUX.1 LoRA; the model is Stable Diffusion XL."
    assert rows["sd15-kohya"]["text encoder"] == "yes" and rows["sd15-kohya"]["size (MiB)"] >= 0
    assert all(row[5] == "" for row in lora_rows(lora_manager, None))


def test_with_vae_precision(lora_manager):
    request = tiny_request("sdxl", seed=12, prompt="v <lora:sdxl-diffusers:1>")
    full = lora_manager.generate(dataclasses.replace(request, vae_dtype="fp32"))
    half = lora_manager.generate(dataclasses.replace(request, vae_dtype="bf16"))
    assert full.vae_dtype.startswith("fp32") and half.vae_dtype.startswith("bf16")
    assert np.abs(pixels(full) - pixels(half)).mean() < 8  # the same latents, decoded in two precisions
    assert parse_infotext(half.images[0].infotext)["Lora hashes"] == parse_infotext(full.images[0].infotext)["Lora hashes"]


def test_send_to_generate_restores_the_tags_and_checks_the_hashes(lora_manager):
    from ui.png_info_tab import generate_form_values

    result = lora_manager.generate(tiny_request("sd15", seed=13, prompt="s <lora:sd15-kohya:0.4>, <lora:sd15-second:1>"))
    text = result.images[0].infotext
    values, notes = generate_form_values(text, lora_manager, {"model": "tiny-sd15"})
    assert values["prompt"] == "s <lora:sd15-kohya:0.4>, <lora:sd15-second:1>" and notes == []
    edited = text.replace("sd15-second: ", "sd15-gone: ").replace(f"sd15-kohya: {lora_hash(lora_manager.lora_entry('sd15-kohya').path)}",
                                                                  "sd15-kohya: 000000000000")
    _, notes = generate_form_values(edited, lora_manager, {"model": "tiny-sd15"})
    assert any("'sd15-gone' is not in" in n for n in notes) and any("the image's was 000000000000" in n for n in notes)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_set_gives_the_unfused_image_and_restores_exact_weights(lora_manager, family, monkeypatch):
    """Fusing is the same computation up to float rounding; the copies written back make the restore exact,
    where PEFT's unfuse (subtracting the delta again) would leave drift."""
    from pipelines.lora.fuse import FusePolicy

    request = tiny_request(family, seed=12, prompt=f"a portrait photo <lora:{family}-kohya:0.9> <lora:{family}-second:-0.5>")
    with lora_manager.use(f"tiny-{family}") as model:
        before = snapshot(model.pipe, family)
    monkeypatch.setattr(lora_manager, "lora_fuse", FusePolicy("off"))
    unfused = lora_manager.generate(request)
    monkeypatch.setattr(lora_manager, "lora_fuse", FusePolicy("always"))
    events = []
    fused = lora_manager.generate(request, listener=events.append)
    details = [getattr(e, "detail", "") or "" for e in events if getattr(e, "stage", None) == "LoRA load"]
    assert any("fused (fusing always on" in d for d in details), details
    assert np.abs(pixels(fused) - pixels(unfused)).max() <= 2  # rounding only
    with lora_manager.use(f"tiny-{family}") as model:
        assert same_snapshot(before, snapshot(model.pipe, family)), "fusing left a trace on the base weights"
        assert model.pipe.num_fused_loras == 0


def test_a_fused_run_that_fails_leaves_nothing_applied(lora_manager, monkeypatch):
    from pipelines.errors import GenerationCancelled
    from pipelines.generate import CancelToken
    from pipelines.lora.fuse import FusePolicy

    monkeypatch.setattr(lora_manager, "lora_fuse", FusePolicy("always"))
    with lora_manager.use("tiny-sdxl") as model:
        before = snapshot(model.pipe, "sdxl")
    token = CancelToken()
    token.cancel()
    with pytest.raises(GenerationCancelled):
        lora_manager.generate(tiny_request("sdxl", seed=3, prompt="c <lora:sdxl-kohya:1>"), cancel=token)
    with lora_manager.use("tiny-sdxl") as model:
        assert same_snapshot(before, snapshot(model.pipe, "sdxl"))


def test_auto_fuses_a_repeated_set_then_keeps_the_faster_way(lora_manager, monkeypatch):
    from pipelines.lora.fuse import FusePolicy

    policy = FusePolicy("auto")
    monkeypatch.setattr(lora_manager, "lora_fuse", policy)

    def decision(prompt):
        events = []
        lora_manager.generate(tiny_request("sd15", seed=5, steps=4, prompt=prompt), listener=events.append)
        return next(e.detail for e in events if getattr(e, "stage", None) == "LoRA load" and getattr(e, "detail", None))

    assert "unfused (first use of this set" in decision("r <lora:sd15-kohya:0.7>")
    assert "fused (a repeat: measuring" in decision("r <lora:sd15-kohya:0.7>")
    third = decision("r <lora:sd15-kohya:0.7>")
    assert third.startswith(("1 LoRA(s)",)) and ("fused (saves" in third or "unfused (fusing would save" in third)
    assert "unfused (first use of this set" in decision("r <lora:sd15-kohya:0.8>"), "another weight is another set"


def test_fuse_policy_weighs_saved_step_time_against_the_fuse_cost():
    from pipelines.lora.fuse import FusePolicy

    policy, key = FusePolicy("auto"), ("m", (("a", "h", 1.0),), 512, 512)
    policy.record(key, fused=False, step_seconds=[0.10, 0.11, 0.10])
    policy.record(key, fused=True, step_seconds=[0.08, 0.08], overhead_s=0.5)
    assert policy.decide(key, steps=30).fuse  # saves 0.6 s for 0.5 s
    assert not policy.decide(key, steps=20).fuse  # saves 0.4 s for 0.5 s
    policy.record(key, fused=True, step_seconds=[], overhead_s=9.0)  # an exact-repeat hit: nothing learnt
    assert policy.decide(key, steps=30).fuse
    with pytest.raises(ValueError, match="auto, off, always"):
        FusePolicy("sometimes")


def test_lora_fusing_is_a_setting_applied_without_restart(lora_manager, monkeypatch):
    from settings.schema import AppSettings
    from ui.settings_tab import apply_live

    assert AppSettings(lora_fuse="sometimes").validate() == {"lora_fuse": "must be auto, off or always"}
    monkeypatch.setattr(lora_manager.config, "lora_fuse", "auto")
    monkeypatch.setattr(lora_manager, "lora_fuse", lora_manager.lora_fuse)
    settings = AppSettings(models_dir=str(lora_manager.config.models_dir), outputs_dir=str(lora_manager.config.outputs_dir),
                           include_hf_cache=False, lora_fuse="off")
    apply_live(lora_manager, settings)
    assert lora_manager.lora_fuse.mode == "off"
    events = []
    lora_manager.generate(tiny_request("sd15", seed=5, steps=2, prompt="s <lora:sd15-kohya:0.3>"), listener=events.append)
    assert any("fusing off in Settings" in (getattr(e, "detail", "") or "") for e in events)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_separate_text_encoder_and_unet_weights_reach_their_parts(lora_manager, family, monkeypatch):
    """`<lora:x:te:unet>`: the text encoders get the first weight, the denoiser the second. What the denoiser reads as
    text shows the text encoders' weight; the picture with both at 0 is the base picture."""
    from tests.tiny_models import recorded_calls

    name = f"{family}-kohya"
    request = tiny_request(family, seed=13, prompt=f"a portrait photo <lora:{name}:1>")
    texts, images = {}, {}
    for tag in ("0", "1", "1:0", "0:1", "0:0"):
        with recorded_calls(lora_manager, request.model) as (_pipe, calls):
            images[tag] = pixels(lora_manager.generate(dataclasses.replace(request, prompt=f"a portrait photo <lora:{name}:{tag}>")))
        texts[tag] = calls[0]["text"]
    assert torch.equal(texts["1:0"], texts["1"]) and torch.equal(texts["0:1"], texts["0"]), "the text encoders took the first weight"
    assert not torch.equal(texts["1"], texts["0"]), "the tiny LoRA changes the text encoders"
    assert np.array_equal(images["0:0"], images["0"])
    for one, other in (("1:0", "1"), ("0:1", "0"), ("1:0", "0"), ("0:1", "1")):
        assert not np.array_equal(images[one], images[other]), f"{one} and {other} drew the same picture"
    # Fused, the per-part weights are merged as they are: the same picture up to rounding.
    from pipelines.lora.fuse import FusePolicy

    monkeypatch.setattr(lora_manager, "lora_fuse", FusePolicy("always"))
    fused = pixels(lora_manager.generate(dataclasses.replace(request, prompt=f"a portrait photo <lora:{name}:1:0.3>")))
    monkeypatch.setattr(lora_manager, "lora_fuse", FusePolicy("off"))
    unfused = pixels(lora_manager.generate(dataclasses.replace(request, prompt=f"a portrait photo <lora:{name}:1:0.3>")))
    assert np.abs(fused - unfused).max() <= 2


def test_flux_takes_the_denoisers_weight_for_its_transformer(lora_manager):
    request = tiny_request("flux", seed=13, prompt="a portrait photo <lora:flux-kohya:0:0>")
    zero = pixels(lora_manager.generate(request))
    transformer_only = pixels(lora_manager.generate(dataclasses.replace(request, prompt="a portrait photo <lora:flux-kohya:0:1>")))
    base_text = pixels(lora_manager.generate(dataclasses.replace(request, prompt="a portrait photo <lora:flux-kohya:0>")))
    assert np.array_equal(zero, base_text)
    assert not np.array_equal(transformer_only, zero)



def test_a_hires_prompt_with_its_own_lora_runs_it_in_the_hires_pass_only(lora_manager, lora_models):
    """A1111 activates the hires prompt's extra networks for the second pass: the first pass runs the main prompt's
    LoRAs, the hires pass (its text encode too) the hires prompt's; both come off after the run, and the PNG names both."""
    base = tiny_request("sd15", seed=6, steps=3, prompt="a portrait <lora:sd15-kohya:1>", hires_scale=1.5, hires_steps=3,
                        hires_denoising=0.6, hires_prompt="a portrait <lora:sd15-second:1>", save=False)
    with lora_manager.use("tiny-sd15") as model:
        before = snapshot(model.pipe, "sd15")
    swapped = lora_manager.generate(base)
    same = lora_manager.generate(dataclasses.replace(base, hires_prompt="a portrait <lora:sd15-kohya:1>"))
    none_in_hires = lora_manager.generate(dataclasses.replace(base, hires_prompt="a portrait"))
    with lora_manager.use("tiny-sd15") as model:
        assert same_snapshot(before, snapshot(model.pipe, "sd15")), "a LoRA stayed on the model"
    pictures = [pixels(r) for r in (swapped, same, none_in_hires)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(pictures) for b in pictures[i + 1:]), "the hires pass ignored its LoRAs"
    assert set(parse_infotext_hashes(parse_infotext(swapped.images[0].infotext)["Lora hashes"])) == {"sd15-kohya", "sd15-second"}
    # the first pass is the main prompt's either way: with hires denoising 0 the three would be one picture
    flat = [pixels(lora_manager.generate(dataclasses.replace(base, hires_denoising=0.0, hires_prompt=hp)))
            for hp in ("a portrait <lora:sd15-second:1>", "a portrait")]
    assert np.array_equal(flat[0], flat[1])


def test_a_hires_prompt_naming_a_missing_lora_is_refused(lora_manager):
    with pytest.raises(InvalidRequest, match="no-such-lora"):
        lora_manager.generate(tiny_request("sd15", seed=6, prompt="a portrait", hires_scale=1.5, hires_prompt="x <lora:no-such-lora:1>",
                                           save=False))
    with lora_manager.use("tiny-sd15") as model:
        assert not getattr(model.pipe.unet, "peft_config", None), "a refused run left an adapter"


@pytest.fixture(scope="module")
def detail_manager(tmp_path_factory, model_zoo, tiny_pipes, demo_cache_dir):
    """tiny-sd15, two of its LoRAs and the tiny face detector planting faces at fixed places (its own folder: the
    detector settings differ from the PuLID tests')."""
    from pipelines.bench import tiny_onnx
    from pipelines.manager import ManagerConfig, PipelineManager
    from tests.test_cli_refine import FACES

    models = tmp_path_factory.mktemp("lora-detail-models")
    copy_model(model_zoo["sd15"], models, "tiny-sd15")
    write_lora(models / "Lora", "sd15-kohya", tiny_pipes["sd15"], "sd15", "kohya", seed=1)
    write_lora(models / "Lora", "sd15-second", tiny_pipes["sd15"], "sd15", "kohya", seed=2)
    write_face_models(models, photo_shape=(tiny_onnx.DET_SIZE, tiny_onnx.DET_SIZE, 3), boxes=FACES)
    return PipelineManager(ManagerConfig(models_dir=models, outputs_dir=tmp_path_factory.mktemp("lora-detail-out"), cache_dir=demo_cache_dir,
                                         device="cpu", include_hf_cache=False, latent_cache_entries=0))


def test_a_face_detail_prompt_with_its_own_lora_runs_it_in_the_face_passes(detail_manager):
    """ADetailer activates its prompt's extra networks for the face pass: the detail prompt's LoRA set is swapped in
    for the passes (their text encode too) and out after; the first pass keeps the main prompt's."""
    lora_manager = detail_manager
    base = tiny_request("sd15", seed=8, steps=3, width=128, height=128, prompt="a portrait <lora:sd15-kohya:1>", face_detail=True,
                        face_detail_strength=0.6, face_detail_steps=3, face_detail_prompt="a face <lora:sd15-second:1>", save=False)
    with lora_manager.use("tiny-sd15") as model:
        before = snapshot(model.pipe, "sd15")
    own = lora_manager.generate(base)
    without = lora_manager.generate(dataclasses.replace(base, face_detail_prompt="a face"))
    assert "face detail" in own.stage_seconds and not any("skipped" in w for w in own.warnings), own.warnings
    with lora_manager.use("tiny-sd15") as model:
        assert same_snapshot(before, snapshot(model.pipe, "sd15")), "a LoRA stayed on the model"
    assert not np.array_equal(pixels(own), pixels(without))
    assert set(parse_infotext_hashes(parse_infotext(own.images[0].infotext)["Lora hashes"])) == {"sd15-kohya", "sd15-second"}
    off = [pixels(lora_manager.generate(dataclasses.replace(base, face_detail_strength=0.0, face_detail_prompt=p)))
           for p in ("a face <lora:sd15-second:1>", "a face")]
    assert np.array_equal(off[0], off[1])  # no face pass: the first pass alone, the same with either detail prompt
