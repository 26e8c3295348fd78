"""The face detailer stage on the tiny SD 1.5 / SDXL / FLUX.1 models and the tiny face models.

The tiny detector (pipelines/bench/tiny_onnx.py) reports the faces planted in it at the same place
of any square picture, so the tests know where the faces of a generated picture are: face 1 (the
larger) top left, face 2 bottom right, far enough apart that their padded regions do not touch.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines.bench import tiny_onnx
from pipelines.bench.tiny_face import HANKS, TINY_IDFORMER, write_face_models
from pipelines.face import service as service_module
from pipelines.face.detect import FaceDetector, FaceDetectorConfig
from pipelines.face.options import FaceOptions
from pipelines.infotext import parse_infotext
from pipelines.refine import face_crop_region
from pipelines.stages import face_detail as face_detail_module
from pipelines.stages.face_detail import FaceDetailConfig
from pipelines.telemetry import EventBus, StageEnded, StageStarted, StepClock, StepDone
from tests.tiny_models import copy_model, expected_cfg_text, recorded_calls, tiny_request

DET = tiny_onnx.DET_SIZE
MODELS: dict = {}  # the module's models folder, for `regions`
FACES = ((40, 40, 248, 248), (400, 400, 580, 580))  # in the detector's 640x640 square: largest first


@pytest.fixture(scope="module")
def manager(tmp_path_factory, model_zoo, tiny_pipes, demo_cache_dir):
    from pipelines.manager import ManagerConfig, PipelineManager

    models = tmp_path_factory.mktemp("detail-models")
    for family in ("sd15", "sdxl", "flux"):
        copy_model(model_zoo[family], models, f"tiny-{family}")
    write_face_models(models, sdxl_unet=tiny_pipes["sdxl"].unet, flux_transformer=tiny_pipes["flux"].transformer,
                      photo_shape=(DET, DET, 3), boxes=FACES)
    manager = PipelineManager(ManagerConfig(models_dir=models, outputs_dir=tmp_path_factory.mktemp("detail-out"),
                                            cache_dir=demo_cache_dir, device="cpu", include_hf_cache=False, latent_cache_entries=0))
    manager.face.idformer_config = TINY_IDFORMER
    MODELS["dir"] = models
    return manager


def detail_request(family: str = "sd15", **fields):
    values = dict(seed=4, face_detail=True, face_detail_strength=0.5, face_detail_steps=4)
    return tiny_request(family, **(values | fields))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def regions(size: int, numbers=(1, 2)) -> list[tuple]:
    """Where the detailer re-draws face `n` of a size x size picture: the planted box as the detector reports it
    (float32 arithmetic in insightface), padded as the stage pads it."""
    picture = np.zeros((size, size, 3), dtype=np.uint8)
    with FaceDetector.from_models_dir(MODELS["dir"], FaceDetectorConfig(cpu_threads=1)) as detector:
        faces = detector.detect(picture)
    assert len(faces) == len(FACES)
    return [face_crop_region(tuple(faces[n - 1].bbox), size, size, FaceDetailConfig().padding_ratio, size) for n in numbers]


def inside(size: int, boxes) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask[y1:y2, x1:x2] = True
    return mask


def changed(a: np.ndarray, b: np.ndarray, box) -> bool:
    x1, y1, x2, y2 = box
    return bool(np.abs(a[y1:y2, x1:x2] - b[y1:y2, x1:x2]).max() > 0)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_detailer_redraws_every_face_and_nothing_else(manager, family):
    request = detail_request(family)
    plain = manager.generate(dataclasses.replace(request, face_detail=False))
    events = []
    detailed = manager.generate(request, listener=events.append)
    size = request.width
    before, after = pixels(plain.images[0].image), pixels(detailed.images[0].image)
    boxes = regions(size)
    outside = ~inside(size, boxes)
    assert np.array_equal(after[outside], before[outside]), "a pixel outside the padded face regions changed"
    assert all(changed(after, before, box) for box in boxes), "a face region was not re-drawn"
    # The before picture is kept (the UI's before/after) and is the picture without the detailer.
    assert np.array_equal(pixels(detailed.images[0].before_detail), before)
    assert plain.images[0].before_detail is None
    # Stage breakdown, readout and infotext.
    assert "face detail" in detailed.stage_seconds and "face detail" not in plain.stage_seconds
    started = [e.stage for e in events if isinstance(e, StageStarted)]
    assert started.index("VAE decode") < started.index("face detail") < started.index("save")
    ended = [e for e in events if isinstance(e, StageEnded) and e.stage == "face detail"]
    assert ended[0].detail.startswith("2 faces, 0.5")
    params = parse_infotext(detailed.images[0].infotext)
    assert params["Face detailer strength"] == "0.5" and params["Face detailer steps"] == "4" and params["Face detailer faces"] == "2"
    assert "face detail" in params["Stage times"]
    assert "Face detailer pick" not in params and "Face detailer prompt" not in params
    assert "Face detailer strength" not in parse_infotext(plain.images[0].infotext)
    # Re-decode compares with what the latents first decoded to: the picture before the detailer.
    assert np.array_equal(pixels(detailed.kept_latents.images[0]), before)


def test_face_two_changes_only_the_second_face(manager):
    request = detail_request()
    plain = pixels(manager.generate(dataclasses.replace(request, face_detail=False)).images[0].image)
    result = manager.generate(dataclasses.replace(request, face_detail_faces="2"))
    second = pixels(result.images[0].image)
    size = request.width
    [first_box], [second_box] = regions(size, (1,)), regions(size, (2,))
    outside = ~inside(size, [second_box])
    assert np.array_equal(second[outside], plain[outside])
    assert changed(second, plain, second_box) and not changed(second, plain, first_box)
    params = parse_infotext(result.images[0].infotext)
    assert params["Face detailer pick"] == "2" and params["Face detailer faces"] == "1"


def test_a_face_number_beyond_the_faces_found_is_a_note(manager):
    result = manager.generate(detail_request(face_detail_faces="3"))
    assert any("there is no face 3" in w for w in result.warnings)
    assert parse_infotext(result.images[0].infotext)["Face detailer faces"] == "0"
    assert result.images[0].before_detail is None


def test_a_picture_without_a_face_is_a_note_not_an_error(manager, monkeypatch, tmp_path):
    tiny_onnx.write_antelopev2(tmp_path / "insightface" / "antelopev2", [])  # a detector that finds nothing
    monkeypatch.setattr(manager.face, "models_dir", tmp_path)
    request = detail_request()
    plain = manager.generate(dataclasses.replace(request, face_detail=False))
    result = manager.generate(request)
    assert any("no face found" in w for w in result.warnings)
    assert np.array_equal(pixels(result.images[0].image), pixels(plain.images[0].image))
    assert "face detail" in result.stage_seconds


def test_without_the_face_models_the_detailer_is_skipped_with_a_note(manager, monkeypatch, tmp_path):
    monkeypatch.setattr(manager.face, "models_dir", tmp_path)  # no insightface folder at all
    result = manager.generate(detail_request())
    notes = [w for w in result.warnings if "Face detailer skipped" in w]
    assert notes and "scrfd_10g_bnkps.onnx" in notes[0]
    assert "Face detailer strength" not in parse_infotext(result.images[0].infotext)


def test_strength_zero_keeps_the_faces(manager):
    request = detail_request(face_detail_strength=0.0)
    plain = manager.generate(dataclasses.replace(request, face_detail=False))
    result = manager.generate(request)
    assert np.array_equal(pixels(result.images[0].image), pixels(plain.images[0].image))
    assert len(result.step_seconds) == len(plain.step_seconds)


def test_the_readout_counts_the_detailer_steps_honestly(manager):
    """Two batches, two faces each, 2 steps per face pass: 2 x (2 + 2 x 2) = 12 steps, numbered 1..12,
    the total grown when the faces are found, never an index above the total."""
    events = []
    result = manager.generate(detail_request(batch_count=2), listener=events.append)
    steps = [e for e in events if isinstance(e, StepDone)]
    assert [e.index for e in steps] == list(range(1, 13))
    assert all(e.index <= e.total for e in steps) and steps[-1].total == 12
    assert steps[0].total == 4  # what the plan could count ahead: the main steps of both batches
    assert len(result.step_seconds) == 12 and len(result.images) == 2


def test_its_own_prompt_goes_through_the_prompt_memo(manager):
    request = detail_request(face_detail_prompt="a smiling face, detailed eyes")
    main = manager.generate(detail_request())
    first = manager.generate(request)
    hits = manager.prompt_memo.stats().hits
    second = manager.generate(request)
    assert manager.prompt_memo.stats().hits >= hits + 2  # the main prompt and the face prompt
    assert np.array_equal(pixels(first.images[0].image), pixels(second.images[0].image))
    assert not np.array_equal(pixels(first.images[0].image), pixels(main.images[0].image))
    assert parse_infotext(first.images[0].infotext)["Face detailer prompt"] == "a smiling face, detailed eyes"


def test_a_batch_detailed_image_by_image(manager):
    request = detail_request(batch_size=2)
    plain = manager.generate(dataclasses.replace(request, face_detail=False))
    result = manager.generate(request)
    size = request.width
    outside = ~inside(size, regions(size))
    for before, after in zip(plain.images, result.images):
        assert np.array_equal(pixels(after.image)[outside], pixels(before.image)[outside])
        assert not np.array_equal(pixels(after.image), pixels(before.image))


def pulid_attached(plan) -> bool:
    """Whether the run's PuLID hook is on the denoiser right now."""
    hook = next(h for h in plan.options.hooks if type(h).__name__.startswith("Pulid"))
    if type(hook).__name__ == "PulidSdxlHook":
        return any(type(p).__name__ == "IdAttnProcessor" for p in plan.model.pipe.unet.attn_processors.values())
    return bool(hook._handles)


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_with_pulid_the_pass_keeps_the_id_embedding_and_the_face_stage_runs_once(manager, monkeypatch, family):
    manager.face.memo.clear()
    embedded = []
    original_embed = service_module.FaceService._embed

    def counting(self, faces, weights):
        embedded.append(len(faces))
        return original_embed(self, faces, weights)

    monkeypatch.setattr(service_module.FaceService, "_embed", counting)
    passes = []
    original_pass = face_detail_module.img2img_denoise

    def spying(plan, state, *args, **kwargs):
        passes.append((pulid_attached(plan), state.context.width, state.context.height, kwargs["width"]))
        return original_pass(plan, state, *args, **kwargs)

    monkeypatch.setattr(face_detail_module, "img2img_denoise", spying)
    face = FaceOptions(photos=(str(HANKS),), id_weight=1.0)
    request = detail_request(family)
    events = []
    plain = manager.generate(dataclasses.replace(request, face_detail=False), face=face)
    assert len(embedded) == 1
    detailed = manager.generate(request, face=face, listener=events.append)
    assert len(embedded) == 1, "the face stage ran again for the detailer"
    assert [e.detail for e in events if isinstance(e, StageEnded) and e.stage == "face embed"] == ["memoized"]
    assert len(passes) == 2 and all(attached for attached, *_ in passes), "the PuLID hook was not on during the face pass"
    assert all(width == height == size for _, width, height, size in passes)  # the hooks' context: the crop's size
    size = request.width
    before, after = pixels(plain.images[0].image), pixels(detailed.images[0].image)
    outside = ~inside(size, regions(size))
    assert np.array_equal(after[outside], before[outside])
    assert not np.array_equal(after, before)
    params = parse_infotext(detailed.images[0].infotext)
    assert params["Face hash"] == parse_infotext(plain.images[0].infotext)["Face hash"]
    if family == "flux":  # the ID cross-attentions ran in the face passes too
        assert detailed.hook_stats["pulid"]["ca_calls"] > plain.hook_stats["pulid"]["ca_calls"]


def test_one_generation_with_pulid_and_the_detailer_embeds_the_face_once(manager, monkeypatch):
    manager.face.memo.clear()
    embedded = []
    original_embed = service_module.FaceService._embed
    monkeypatch.setattr(service_module.FaceService, "_embed",
                        lambda self, faces, weights: embedded.append(1) or original_embed(self, faces, weights))
    events = []
    manager.generate(detail_request("sdxl", batch_count=2), face=FaceOptions(photos=(str(HANKS),)), listener=events.append)
    assert len(embedded) == 1
    assert [e.stage for e in events if isinstance(e, StageStarted)].count("face embed") == 1


def test_step_clock_added_steps_moves_later_indices():
    clock = StepClock(EventBus(), __import__("torch").device("cpu"), total=4, synchronize=False)
    assert clock.step_done(1).index == 1 and clock.step_done(2).total == 4
    with clock.added_steps(3):
        assert clock.step_done(3).total == 7
    event = clock.step_done(3)  # the next batch's first step, counted ahead as step 3
    assert (event.index, event.total) == (6, 7)


def test_detail_size_is_native_but_never_above_the_request():
    from types import SimpleNamespace

    from pipelines.families import Family
    from pipelines.stages.face_detail import detail_size

    def plan(family, width, height):
        return SimpleNamespace(model=SimpleNamespace(family=family), request=SimpleNamespace(width=width, height=height))

    assert detail_size(plan(Family.SD15, 1024, 1024)) == 512
    assert detail_size(plan(Family.SDXL, 1216, 832)) == 1024
    assert detail_size(plan(Family.FLUX, 256, 256)) == 256
    assert detail_size(plan(Family.SDXL, 768, 1344), FaceDetailConfig(native_size=640)) == 640


def test_experiment_axes_for_the_detailer(manager):
    from pipelines.experiments.axes import find_setting, parse_values
    from pipelines.experiments.plan import apply_value

    toggle = find_setting("Face detailer")
    assert parse_values(toggle, "on, off") == [True, False]
    assert [toggle.describe(v) for v in (True, False)] == ["Face detailer: on", "Face detailer: off"]
    strength = find_setting("face_detail_strength")
    assert parse_values(strength, "0.2-0.6 [3]") == [0.2, 0.4, 0.6]
    request, _ = apply_value(tiny_request("sd15"), None, toggle, True)
    request, _ = apply_value(request, None, strength, 0.4)
    assert request.face_detail is True and request.face_detail_strength == 0.4
    with pytest.raises(Exception, match="on or off"):
        parse_values(toggle, "maybe")


def test_skip_during_a_face_pass_ends_that_batch_and_stop_ends_the_run(manager):
    from pipelines.errors import GenerationCancelled
    from pipelines.generate import CancelToken

    cancel = CancelToken()
    pressed = []

    def skip_in_first_detail(event):
        if isinstance(event, StageStarted) and event.stage == "face detail" and not pressed:
            pressed.append(event)
            cancel.skip()

    result = manager.generate(detail_request(batch_count=2), listener=skip_in_first_detail, cancel=cancel)
    assert len(result.images) == 1 and result.images[0].seed == detail_request().seed + 1  # the second batch
    assert result.images[0].before_detail is not None

    stop = CancelToken()

    def stop_in_detail(event):
        if isinstance(event, StageStarted) and event.stage == "face detail":
            stop.cancel()

    with pytest.raises(GenerationCancelled):
        manager.generate(detail_request(), listener=stop_in_detail, cancel=stop)


def test_an_experiment_compares_the_detailer_off_and_on_with_arcface(manager):
    """Detailer on/off x strength as experiment axes with a reference face: each cell gets its ArcFace
    similarity to the reference, and the cells with the detailer on show its stage."""
    from pipelines.experiments.plan import AxisSpec, Experiment, build_plan
    from pipelines.experiments.report import table_rows
    from pipelines.experiments.runner import run_experiment

    base = {"model": "tiny-sdxl", "prompt": "a portrait photo", "width": 256, "height": 256, "steps": 2, "seed": 4,
            "sampler": tiny_request("sdxl").sampler, "face_detail_steps": 4}
    experiment = Experiment(base, [AxisSpec("Face detailer", "off, on"), AxisSpec("face_detail_strength", "0.5, 1")],
                            warmup=False, face={"photos": [str(HANKS)], "id_weight": 1.0})
    result = run_experiment(manager, build_plan(experiment, manager))
    cells = [result.cells[i] for i in range(4)]
    assert [c.cell.label for c in cells][:2] == ["Face detailer: off, Face detailer strength: 0.5",
                                                 "Face detailer: on, Face detailer strength: 0.5"]
    assert ["face detail" in c.stage_seconds() for c in cells] == [False, True, False, True]
    assert all(result.fidelity[i].arcface is not None for i in range(4))
    assert "ArcFace cos" in table_rows(result)[0]


def test_a_strength_axis_with_the_detailer_off_everywhere_is_refused(manager):
    from pipelines.errors import InvalidRequest
    from pipelines.experiments.plan import AxisSpec, Experiment, build_plan

    base = {"model": "tiny-sd15", "prompt": "a portrait photo", "width": 64, "height": 64, "steps": 2}
    with pytest.raises(InvalidRequest, match="changes nothing with the face detailer off"):
        build_plan(Experiment(base, [AxisSpec("face_detail_strength", "0.3, 0.6")], warmup=False), manager)
    assert build_plan(Experiment(base | {"face_detail": True}, [AxisSpec("face_detail_strength", "0.3, 0.6")], warmup=False), manager)


def test_prompt_editing_in_the_detailer_counts_its_own_steps(manager):
    """The main prompt's `[a:b:0.25]` over the detailer's 4 steps (strength 1: all 4 run): steps 0-1 read `a`,
    2-3 `b`, while the 2-step main pass (0.25 of 2 is no step) reads `b` throughout."""
    request = detail_request(prompt="[a red cat:a blue dog:0.25]", negative_prompt="", face_detail_strength=1.0)
    with recorded_calls(manager, request.model) as (pipe, calls):
        manager.generate(request)
    cat, dog = (expected_cfg_text(pipe, "sd15", text, "")[0] for text in ("a red cat", "a blue dog"))
    assert len(calls) == 2 + 2 * 4, "the main pass, then two faces of 4 steps"
    for index, expected in enumerate([dog, dog] + [cat, cat, dog, dog] * 2):
        torch.testing.assert_close(calls[index]["text"], expected, msg=f"call {index}")
