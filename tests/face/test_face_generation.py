"""Face-reference generation end to end: photo -> insightface -> BiSeNet -> EVA-CLIP -> IDFormer ->
PuLID hook -> the tiny SDXL and FLUX.1 pipelines, through the manager the app uses.

Every network is real code with seeded weights, loaded from files in the official layouts
(pipelines/bench/tiny_face.py); insightface runs the tiny ONNX pack through its own model router.
"""
from __future__ import annotations

import dataclasses
import gc
import weakref
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.errors import InvalidRequest, ModelNotFound
from pipelines.face import encoders as encoders_module
from pipelines.face import service as service_module
from pipelines.face.options import FaceOptions
from pipelines.infotext import parse_infotext
from pipelines.bench.tiny_face import HANKS, TINY_IDFORMER, write_face_models
from tests.tiny_models import copy_model, tiny_request


@pytest.fixture(scope="module")
def face_manager(tmp_path_factory, model_zoo, tiny_pipes, demo_cache_dir):
    from pipelines.manager import ManagerConfig, PipelineManager

    models = tmp_path_factory.mktemp("face-models")
    for family in ("sd15", "sdxl", "flux"):
        copy_model(model_zoo[family], models, f"tiny-{family}")
    write_face_models(models, sdxl_unet=tiny_pipes["sdxl"].unet, flux_transformer=tiny_pipes["flux"].transformer)
    manager = PipelineManager(ManagerConfig(models_dir=models, outputs_dir=tmp_path_factory.mktemp("face-out"),
                                            cache_dir=demo_cache_dir, device="cpu", include_hf_cache=False,
                                            latent_cache_entries=0))
    manager.face.idformer_config = TINY_IDFORMER
    return manager


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def face(**options) -> FaceOptions:
    return FaceOptions(photos=(str(HANKS),), **options)


def test_sdxl_with_face_runs_the_face_stage_and_records_it(face_manager):
    face_manager.face.memo.clear()
    events = []
    result = face_manager.generate(tiny_request("sdxl", seed=3), listener=events.append, face=face(id_weight=0.8))
    assert "face embed" in result.stage_seconds
    stages = [e.stage for e in events if type(e).__name__ == "StageStarted"]
    assert stages.index("face embed") < stages.index("denoise")
    params = parse_infotext(result.images[0].infotext)
    assert params["PuLID weight"] == "0.8" and params["PuLID start step"] == "0"
    assert len(params["Face hash"]) == 10
    assert result.hook_stats["pulid"]["steps_with_id"] >= 1


def test_sdxl_weight_zero_is_exactly_pulid_off_and_a_weight_changes_the_image(face_manager):
    request = tiny_request("sdxl", seed=5)
    off = pixels(face_manager.generate(request))
    zero = pixels(face_manager.generate(request, face=face(id_weight=0.0)))
    on = pixels(face_manager.generate(request, face=face(id_weight=2.0)))
    assert np.array_equal(zero, off)
    assert np.abs(on - off).mean() > 0.05  # tiny random UNet, 2 steps: small but real


def test_memo_hit_skips_every_face_model(face_manager, monkeypatch):
    face_manager.face.memo.clear()
    request = tiny_request("sdxl", seed=7)
    first = face_manager.generate(request, face=face(id_weight=1.0))
    events = []

    def refuse(*_args, **_kwargs):
        raise AssertionError("a face model was loaded on a memo hit")

    monkeypatch.setattr(encoders_module.FaceEncoders, "load", classmethod(refuse))
    monkeypatch.setattr(service_module.FaceDetector, "from_models_dir", classmethod(refuse))
    second = face_manager.generate(request, face=face(id_weight=1.0), listener=events.append)
    ended = [e for e in events if type(e).__name__ == "StageEnded" and e.stage == "face embed"]
    assert ended and ended[0].detail == "memoized"
    assert np.array_equal(pixels(first), pixels(second))
    assert face_manager.face.memo.stats().hits >= 1


def track_instances(monkeypatch, cls, constructor: str) -> list:
    """Every object the classmethod `constructor` of `cls` returns from now on, in a list."""
    made = []
    original = getattr(cls, constructor).__func__

    def tracking(owner, *args, **kwargs):
        made.append(original(owner, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(cls, constructor, classmethod(tracking))
    return made


def test_no_face_model_survives_the_embedding(face_manager, monkeypatch):
    """After the face stage nothing of insightface, BiSeNet or EVA-CLIP is alive, and the IDFormer
    is back on the CPU: the denoiser and VAE decode get the device to themselves."""
    face_manager.face.memo.clear()
    made = track_instances(monkeypatch, encoders_module.FaceEncoders, "load")
    detectors = track_instances(monkeypatch, service_module.FaceDetector, "from_models_dir")
    face_manager.generate(tiny_request("sdxl", seed=9), face=face(id_weight=1.0))
    assert made and detectors
    for encoders in made:
        assert encoders.eva is None and encoders.parsing is None
    assert all(not d.loaded for d in detectors)
    weights = face_manager.face._weights["sdxl"]
    assert {p.device.type for p in weights.encoder.parameters()} == {"cpu"}
    # The networks themselves are freed, not just unreferenced by the wrapper.
    encoders = encoders_module.FaceEncoders.load(face_manager.face.models_dir, "cpu")
    networks = [weakref.ref(encoders.eva), weakref.ref(encoders.parsing)]
    encoders.release()
    gc.collect()
    assert all(ref() is None for ref in networks)


def test_flux_with_face_and_the_start_step_gate(face_manager):
    request = tiny_request("flux", seed=11, steps=3)
    off = pixels(face_manager.generate(request))
    zero = pixels(face_manager.generate(request, face=face(id_weight=0.0)))
    assert np.array_equal(zero, off)
    late = face_manager.generate(request, face=face(id_weight=2.0, start_step=2))
    assert late.hook_stats["pulid"]["steps_with_id"] == 1  # only step index 2 of 0, 1, 2
    early = face_manager.generate(request, face=face(id_weight=2.0, start_step=0))
    assert early.hook_stats["pulid"]["steps_with_id"] == 3
    assert not np.array_equal(pixels(early), pixels(late))
    assert not np.array_equal(pixels(early), off)


def test_face_on_an_sd15_model_is_a_clear_error(face_manager):
    with pytest.raises(InvalidRequest, match="SDXL and FLUX.1"):
        face_manager.generate(tiny_request("sd15"), face=face())


def test_inspect_shows_the_parsing_view(face_manager):
    faces = face_manager.face.inspect([str(HANKS)])
    assert len(faces) == 1
    view = faces[0].parsing_input
    assert view is not None and view.shape == (512, 512, 3)
    assert (view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all()


def test_missing_face_files_are_named(tmp_path, make_manager, model_zoo):
    models = tmp_path / "models"
    copy_model(model_zoo["sdxl"], models, "tiny-sdxl")
    manager = make_manager(models)
    with pytest.raises(ModelNotFound) as error:
        manager.generate(tiny_request("sdxl"), face=face())
    message = str(error.value)
    for name, folder in (("pulid_v1.1.safetensors", "pulid"), ("EVA02_CLIP_L_336_psz14_s6B.pt", "eva_clip"),
                         ("parsing_bisenet.pth", "facexlib"), ("scrfd_10g_bnkps.onnx", "antelopev2"), ("glintr100.onnx", "antelopev2")):
        assert name in message and folder in message


def test_flux_true_cfg_and_its_start_step(face_manager):
    request = tiny_request("flux", seed=13, steps=3, negative_prompt="blurry")
    plain = face_manager.generate(request, face=face(id_weight=1.0))
    assert "True CFG" not in parse_infotext(plain.images[0].infotext)
    # Starting true CFG after the last step: every negative pass is replaced by the positive one,
    # so the result is exactly that of no true CFG.
    never = face_manager.generate(request, face=face(id_weight=1.0, true_cfg=3.0, true_cfg_start=3))
    assert never.hook_stats["true cfg"]["gated_calls"] == 3
    assert np.array_equal(pixels(never), pixels(plain))
    from_one = face_manager.generate(request, face=face(id_weight=1.0, true_cfg=3.0, true_cfg_start=1))
    assert from_one.hook_stats["true cfg"]["gated_calls"] == 1
    assert not np.array_equal(pixels(from_one), pixels(plain))
    assert parse_infotext(from_one.images[0].infotext)["True CFG"] == "3 from step 1"
    # The negative passes get the unconditional ID: twice the ID cross-attention calls.
    assert from_one.hook_stats["pulid"]["ca_calls"] == 2 * plain.hook_stats["pulid"]["ca_calls"] > 0


def test_face_works_with_deepcache_and_the_flux_block_cache(face_manager):
    sdxl = tiny_request("sdxl", seed=15, steps=4)
    plain = face_manager.generate(sdxl, face=face(id_weight=1.0))
    cached = face_manager.generate(dataclasses.replace(sdxl, deepcache_interval=2), face=face(id_weight=1.0))
    assert cached.hook_stats["deepcache"]["cached_steps"] >= 1
    assert plain.hook_stats["pulid"]["steps_with_id"] == 4
    # This tiny UNet's cross-attentions all sit in the deep part: on cached steps they do not run,
    # and the ID reaches those steps through the features cached on the full steps.
    assert cached.hook_stats["pulid"]["steps_with_id"] == cached.hook_stats["deepcache"]["full_steps"] == 2
    assert not np.array_equal(pixels(cached), pixels(face_manager.generate(dataclasses.replace(sdxl, deepcache_interval=2))))
    flux = tiny_request("flux", seed=15, steps=4)
    block_cached = face_manager.generate(dataclasses.replace(flux, flux_cache="first-block", flux_cache_threshold=0.5),
                                         face=face(id_weight=1.0))
    assert "Block cache" in parse_infotext(block_cached.images[0].infotext)
    assert block_cached.hook_stats["pulid"]["ca_calls"] > 0


def test_several_reference_photos_are_stacked(face_manager):
    request = tiny_request("sdxl", seed=17)
    one = face_manager.generate(request, face=face(id_weight=2.0))
    # Two photos (the same one twice: the tiny detector plants its face at one place): 2 x 5 ID tokens.
    two = face_manager.generate(request, face=FaceOptions(photos=(str(HANKS), str(HANKS)), id_weight=2.0))
    hash_one = parse_infotext(one.images[0].infotext)["Face hash"]
    hash_two = parse_infotext(two.images[0].infotext)["Face hash"]
    assert hash_one != hash_two
    assert not np.array_equal(pixels(one), pixels(two))
    with pytest.raises(InvalidRequest, match="at most 4"):
        face_manager.generate(request, face=FaceOptions(photos=(str(HANKS),) * 5))


def test_an_experiment_over_the_pulid_weight(face_manager):
    """Issue 7's face axes end to end: ID weight 0 vs 2 on the tiny SDXL, fidelity against weight 0."""
    from pipelines.experiments.plan import AxisSpec, Experiment, build_plan
    from pipelines.experiments.runner import run_experiment

    base = {"model": "tiny-sdxl", "prompt": "a portrait", "width": 256, "height": 256, "steps": 2, "seed": 3}
    experiment = Experiment(base, [AxisSpec("pulid_weight", "0, 2")], face={"photos": [str(HANKS)]})
    result = run_experiment(face_manager, build_plan(experiment, face_manager))
    assert result.finished_cells == 2 and not result.cancelled
    zero, two = result.cells[0], result.cells[1]
    assert np.array_equal(np.asarray(zero.image), pixels(face_manager.generate(zero.cell.request)))  # weight 0 = PuLID off
    assert not np.array_equal(np.asarray(zero.image), np.asarray(two.image))
    # ArcFace cosine to the reference runs on every cell (the tiny detector always finds its face).
    assert all(result.fidelity[i].arcface is not None for i in (0, 1))


def test_true_cfg_scale_is_part_of_the_exact_repeat_key():
    """Two true-CFG scales must never share an exact-repeat latent-cache entry."""
    from pipelines.stages.denoise import exact_repeat_key
    from pipelines.hooks.true_cfg_gate import TrueCfgGateHook

    model = SimpleNamespace(identity=("tiny-flux",))
    request = tiny_request("flux")
    assert exact_repeat_key(model, request, [1], [TrueCfgGateHook(1, 3.0)]) != exact_repeat_key(model, request, [1], [TrueCfgGateHook(1, 5.0)])


@pytest.mark.parametrize("options, message", [
    (dict(id_weight=-1.0), "ID weight must be between 0 and 5"),
    (dict(id_weight=6.0), "ID weight must be between 0 and 5"),
    (dict(start_step=-2), "start step must be 0 or more"),
    (dict(num_zero=81), "Num zero must be between 0 and 80"),
    (dict(ortho="v3"), "Ortho must be off, v1 or v2"),
    (dict(true_cfg=0.5), "True CFG must be between 1"),
    (dict(true_cfg_start=-1), "true CFG start step must be 0 or more"),
])
def test_face_controls_out_of_range_are_clear_messages(options, message):
    with pytest.raises(InvalidRequest, match=message):
        face(**options)


def test_face_files_that_do_not_fit_together_are_named(tmp_path, make_manager, model_zoo, tiny_pipes):
    """A bigger EVA-CLIP beside the PuLID file (as a test-sized EVA beside the full PuLID): a message
    naming both files, before the ID encoder would fail on "mat1 and mat2 shapes"."""
    import torch

    from pipelines.bench.tiny_face import TINY_EVA, official_eva_checkpoint, seeded
    from pipelines.errors import ModelLoadError
    from pipelines.face.encoders import EVA_FILE
    from pipelines.face.eva_clip import EvaVisionTower

    models = tmp_path / "models"
    copy_model(model_zoo["sdxl"], models, "tiny-sdxl")
    write_face_models(models, sdxl_unet=tiny_pipes["sdxl"].unet)
    wider = seeded(EvaVisionTower(dataclasses.replace(TINY_EVA, width=128)), 2)
    torch.save(official_eva_checkpoint(wider), models / "eva_clip" / EVA_FILE)
    manager = make_manager(models)
    manager.face.idformer_config = TINY_IDFORMER
    with pytest.raises(ModelLoadError) as caught:
        manager.generate(tiny_request("sdxl"), face=face())
    message = str(caught.value)
    assert "do not fit together" in message and EVA_FILE in message and "pulid_v1.1.safetensors" in message
    assert "width 128" in message and f"expects width {TINY_IDFORMER.vit_dim}" in message
    assert not any(record.locked for record in manager.cache.records()), "the model stayed locked"


def spy_face_dtypes(monkeypatch) -> list:
    """(network, parameter dtype, input dtype) of every EVA-CLIP and IDFormer call, read at call time."""
    from pipelines.face.eva_clip import EvaVisionTower
    from pipelines.face.idformer import IDFormer

    calls = []
    for cls, name in ((EvaVisionTower, "eva"), (IDFormer, "idformer")):
        original = cls.forward

        def spying(self, x, *args, _original=original, _name=name, **kwargs):
            calls.append((_name, next(self.parameters()).dtype, x.dtype))
            return _original(self, x, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", spying)
    return calls


def events_detail(events) -> str:
    return next(e.detail for e in events if type(e).__name__ == "StageEnded" and e.stage == "face embed")


def test_face_stage_runs_in_each_familys_official_precision(face_manager, monkeypatch):
    """SDXL: EVA-CLIP and IDFormer in float32; FLUX.1: both in bfloat16 where the FLUX transformer runs
    in bf16 (the GPU policy, forced here on the CPU); the kept IDFormer is never rounded or moved."""
    import torch

    from pipelines.families import Family

    calls = spy_face_dtypes(monkeypatch)
    face_manager.face.memo.clear()
    face_manager.generate(tiny_request("sdxl", seed=21), face=face(id_weight=1.0))
    assert {c[0] for c in calls} == {"eva", "idformer"}
    assert all(param == given == torch.float32 for _, param, given in calls)

    # The real CPU policy for FLUX.1: float32 (what its transformer runs in here).
    calls.clear()
    face_manager.generate(tiny_request("flux", seed=21), face=face(id_weight=1.0))
    assert calls and all(param == given == torch.float32 for _, param, given in calls)

    # The GPU policy (bf16 FLUX transformer): EVA-CLIP, the ID condition and the IDFormer in bf16.
    real_policy = encoders_module.face_stage_dtype
    monkeypatch.setattr(service_module, "face_stage_dtype",
                        lambda device, family: torch.bfloat16 if str(getattr(family, "value", family)) == "flux" else real_policy(device, family))
    calls.clear()
    events = []
    result = face_manager.generate(tiny_request("flux", seed=21), face=face(id_weight=1.0), listener=events.append)
    assert events_detail(events).startswith("computed")  # the fp32 embedding made just before is not served for bf16
    assert {c[0] for c in calls} == {"eva", "idformer"}
    assert all(param == given == torch.bfloat16 for _, param, given in calls)
    assert result.hook_stats["pulid"]["ca_calls"] > 0
    weights = face_manager.face._weights["flux"]
    assert {(p.device.type, p.dtype) for p in weights.encoder.parameters()} == {("cpu", torch.float32)}
    identity = face_manager.face.identity(face(id_weight=1.0), Family.FLUX, weights)
    assert identity.from_memo and identity.embedding.cond.dtype == torch.float32  # handed back in fp32 (exact for bf16)


def test_id_weight_defaults_and_ranges_follow_each_familys_official_app():
    """PuLID-FLUX's app: id weight 0-3, default 1; SDXL v1.1's: id scale 0-5, default 0.8."""
    from pipelines.face.options import ID_WEIGHTS, default_id_weight
    from pipelines.families import Family

    options = face()
    assert options.id_weight is None  # "the model family's default" until the family is known
    assert options.for_family(Family.FLUX).id_weight == 1.0 and options.for_family("sdxl").id_weight == 0.8
    assert (ID_WEIGHTS[Family.FLUX].maximum, ID_WEIGHTS[Family.SDXL].maximum) == (3.0, 5.0)
    assert default_id_weight("flux") == 1.0 and default_id_weight(Family.SDXL) == 0.8 and default_id_weight(None) == 0.8
    assert face(id_weight=3.0).for_family(Family.FLUX).id_weight == 3.0
    assert face(id_weight=4.5).for_family(Family.SDXL).id_weight == 4.5  # SDXL keeps its 0-5
    with pytest.raises(InvalidRequest, match=r"The ID weight for FLUX\.1 models must be between 0 and 3; got 3\.5\."):
        face(id_weight=3.5).for_family(Family.FLUX)
    assert face(id_weight=0.0).for_family(Family.FLUX).id_weight == 0.0
    assert face().for_family(Family.SD15).id_weight is None  # refused later with its own message


def test_generation_uses_the_familys_default_weight_and_refuses_out_of_range_before_loading(face_manager):
    sdxl = face_manager.generate(tiny_request("sdxl", seed=23), face=face())
    assert parse_infotext(sdxl.images[0].infotext)["PuLID weight"] == "0.8"
    flux = face_manager.generate(tiny_request("flux", seed=23), face=face())
    assert parse_infotext(flux.images[0].infotext)["PuLID weight"] == "1"
    events = []
    with pytest.raises(InvalidRequest, match=r"ID weight for FLUX\.1 models must be between 0 and 3; got 4"):
        face_manager.generate(tiny_request("flux", seed=23), face=face(id_weight=4.0), listener=events.append)
    assert not [e for e in events if type(e).__name__ == "StageStarted"]  # refused before any model loads
    # The same weight is fine for SDXL (official 0-5).
    assert parse_infotext(face_manager.generate(tiny_request("sdxl", seed=23), face=face(id_weight=4.0)).images[0].infotext)["PuLID weight"] == "4"
