"""ADetailer's `alwayson_scripts` format (what A1111 clients send for face fixing) runs Likeness's face detailer: its
face unit's prompt, strength, steps and k-largest become the detailer's fields; hand or person models, and the unit
switches the detailer has no counterpart for, are named in the warnings; a run through the API draws the same picture
as the detailer's own top-level fields."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipelines.errors import InvalidRequest
from pipelines.manager import ManagerConfig, PipelineManager
from tests.test_cli_refine import models  # noqa: F401  (tiny-sd15 and the tiny face detector)
from ui.a1111 import mapping
from ui.a1111.models import Txt2ImgRequest

BODY = {"prompt": "a portrait", "steps": 4, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler", "cfg_scale": 3}
FACE_UNIT = {"ad_model": "face_yolov8n.pt", "ad_prompt": "a sharp face", "ad_denoising_strength": 0.5, "ad_mask_k_largest": 1,
             "ad_use_steps": True, "ad_steps": 2, "ad_confidence": 0.3, "ad_mask_blur": 4, "ad_use_cfg_scale": False}


@pytest.fixture(scope="module")
def face_manager(models, tmp_path_factory, demo_cache_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("adetailer")
    return PipelineManager(ManagerConfig(models, root / "outputs", demo_cache_dir, device="cpu", include_hf_cache=False))


def prepared(manager, scripts: dict, **body):
    return mapping.prepare(Txt2ImgRequest(**(BODY | body), alwayson_scripts=scripts), manager, mapping.ApiDefaults("tiny-sd15"))


def detailer(request) -> tuple:
    return (request.face_detail, request.face_detail_prompt, request.face_detail_strength, request.face_detail_steps,
            request.face_detail_faces)


def test_a_face_unit_becomes_the_detailers_fields(face_manager):
    got = prepared(face_manager, {"ADetailer": {"args": [True, False, FACE_UNIT]}})
    assert detailer(got.request) == (True, "a sharp face", 0.5, 2, "1") and got.warnings == []
    older = prepared(face_manager, {"ADetailer": {"args": [{"ad_model": "mediapipe_face_full"}]}})  # older clients: units only
    assert detailer(older.request) == (True, "", 0.4, 0, "")  # ADetailer's defaults: strength 0.4, every face, the run's steps


def test_what_the_detailer_cannot_do_is_named(face_manager):
    got = prepared(face_manager, {"adetailer": {"args": [True, True, {"ad_model": "hand_yolov8n.pt"},
                                                         FACE_UNIT | {"ad_use_cfg_scale": True, "ad_negative_prompt": "blurry"},
                                                         {"ad_model": "face_yolov8s.pt"}]}})
    assert got.request.face_detail
    assert got.warnings == [
        "ADetailer skip_img2img is not supported: the img2img runs, then the detailer.",
        "ADetailer model 'hand_yolov8n.pt' is not available: Likeness's detailer redraws faces only.",
        "ADetailer: 2 face units given; the first runs (face_yolov8n.pt).",
        "ADetailer ad_use_cfg_scale, ad_negative_prompt not used: the detailer runs with the generation's own settings."]


@pytest.mark.parametrize("scripts", [
    {"ADetailer": {"args": [False, False, FACE_UNIT]}},  # turned off
    {"ADetailer": {"args": [True, False, FACE_UNIT | {"ad_tab_enable": False}]}},
    {"ADetailer": {"args": [True, False, {"ad_model": "None"}]}},
])
def test_an_off_unit_runs_no_detailer(face_manager, scripts):
    assert not prepared(face_manager, scripts).request.face_detail


@pytest.mark.parametrize("args, message", [
    ([True, False, "face_yolov8n.pt"], "alwayson_scripts.ADetailer takes \\[enable, skip_img2img, unit objects...\\]"),
    ([True, False, FACE_UNIT | {"ad_mask_k_largest": -1}], "ad_mask_k_largest must be a whole number from 0"),
])
def test_bad_args_are_refused(face_manager, args, message):
    with pytest.raises(InvalidRequest, match=message):
        prepared(face_manager, {"ADetailer": {"args": args}})


def test_a_bad_value_is_the_requests_message(face_manager):
    request = prepared(face_manager, {"ADetailer": {"args": [True, False, FACE_UNIT | {"ad_denoising_strength": 2}]}}).request
    with pytest.raises(InvalidRequest, match="Face detailer strength must be between 0 and 1, got 2"):
        face_manager.generate(replace(request, save=False))


def test_the_api_run_is_the_detailers_own(face_manager):
    through_adetailer = prepared(face_manager, {"ADetailer": {"args": [True, False, FACE_UNIT]}}).request
    own = prepared(face_manager, {}, face_detail=True, face_detail_prompt="a sharp face", face_detail_strength=0.5, face_detail_steps=2,
                   face_detail_faces="1").request
    plain = prepared(face_manager, {}).request
    runs = [face_manager.generate(replace(r, save=False)) for r in (through_adetailer, own, plain)]
    assert "face detail" in runs[0].stage_seconds and not any("skipped" in w for w in runs[0].warnings), runs[0].warnings
    pictures = [np.asarray(r.images[0].image, dtype=np.int16) for r in runs]
    assert np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[0], pictures[2])
