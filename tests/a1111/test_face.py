"""alwayson_scripts.pulid: a face reference through A1111's extension point, on a tiny SDXL model with
the tiny face models; the photos go through the size check and are deleted after the job."""
from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.bench.tiny_face import HANKS, TINY_IDFORMER, write_face_models
from pipelines.infotext import parse_infotext
from tests.tiny_models import copy_model
from tests.ui.conftest import start_app

FORM = {"prompt": "a portrait", "steps": 2, "cfg_scale": 3.0, "seed": 5, "width": 256, "height": 256, "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}


@pytest.fixture(scope="module")
def face_api(tmp_path_factory, model_zoo, tiny_pipes):
    root = tmp_path_factory.mktemp("face-api")
    copy_model(model_zoo["sdxl"], root / "models", "tiny-sdxl")
    write_face_models(root / "models", sdxl_unet=tiny_pipes["sdxl"].unet)
    info, demo = start_app(root, api=True)
    info["manager"].face.idformer_config = TINY_IDFORMER  # the tiny PuLID file's sizes
    info["client"] = httpx.Client(base_url=info["url"], timeout=600)
    yield info
    info["client"].close()
    demo.close()


def photo() -> str:
    return base64.b64encode(HANKS.read_bytes()).decode()


def params_of(response) -> dict:
    assert response.status_code == 200, response.text[:800]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return parse_infotext(image.info["parameters"])


def test_alwayson_pulid_generates_with_the_face_in_both_forms(face_api):
    client = face_api["client"]
    listed = dict(FORM, alwayson_scripts={"pulid": {"args": [[photo()], 0.8, 0, 20, "v2"]}})
    params = params_of(client.post("/sdapi/v1/txt2img", json=listed))
    assert params["PuLID weight"] == "0.8" and params["PuLID start step"] == "0" and params["Face hash"]
    assert params["Model"] == "tiny-sdxl" and params["Size-1"] == "256"
    named = dict(FORM, alwayson_scripts={"PuLID": {"args": [True, {"images": ["data:image/png;base64," + photo()], "id_weight": 1.2,
                                                                  "start_step": 1}]}})
    response = client.post("/sdapi/v1/txt2img", json=named)
    params = params_of(response)
    assert params["PuLID weight"] == "1.2" and params["PuLID start step"] == "1"
    echoed = response.json()["parameters"]["alwayson_scripts"]["PuLID"]["args"][1]["images"][0]
    assert echoed.startswith("<image,")  # the photo is not echoed back in full
    assert json.loads(response.json()["info"])["extra_generation_params"]["Face hash"] == params["Face hash"]
    photos = face_api["root"] / "cache" / "api-photos"
    assert photos.is_dir() and not any(photos.iterdir())  # written for the job, deleted after it


def test_override_settings_apply_to_one_request_unless_told_to_stay(face_api):
    client = face_api["client"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": DEMO_MODEL_NAME}).status_code == 200
    quick = dict(FORM, override_settings={"sd_model_checkpoint": "tiny-sdxl.safetensors"})  # A1111 clients may send the file name
    assert params_of(client.post("/sdapi/v1/txt2img", json=quick))["Model"] == "tiny-sdxl"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == DEMO_MODEL_NAME  # restored afterwards (A1111's default)
    assert params_of(client.post("/sdapi/v1/txt2img", json=dict(quick, override_settings={})))["Model"] == DEMO_MODEL_NAME
    kept = dict(quick, override_settings_restore_afterwards=False)
    assert params_of(client.post("/sdapi/v1/txt2img", json=kept))["Model"] == "tiny-sdxl"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-sdxl"


def test_an_engine_refusal_after_the_photos_were_written_is_a_422_and_leaves_nothing(face_api):
    # DeepCache's branch is checked against the model's UNet inside the job, after the face stage.
    body = dict(FORM, alwayson_scripts={"pulid": {"args": [[photo()]]}, "deepcache": {"args": [2, 8]}})
    response = face_api["client"].post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422, response.text[:500]
    assert set(response.json()) == {"error", "detail", "body", "errors"} and "too deep" in response.json()["detail"]
    photos = face_api["root"] / "cache" / "api-photos"
    assert photos.is_dir() and not any(photos.iterdir())
    assert face_api["client"].get("/sdapi/v1/progress").json()["state"]["job"] == ""
