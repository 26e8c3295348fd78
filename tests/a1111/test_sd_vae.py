"""A1111's SD VAE through the API: /sd-vae lists models/VAE, override_settings.sd_vae and the sd_vae option pick one,
the info names it; an unknown one is a 422 listing the files."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from pipelines.catalog import DEMO_MODEL_NAME
from tests.a1111.test_routes import A1111_ERROR_KEYS, png_of
from tests.ldm_layout import vae_to_ldm

QUICK = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 5, "model": DEMO_MODEL_NAME}


@pytest.fixture(scope="module")
def vae_app(api_app):
    manager = api_app["manager"]
    with manager.use(DEMO_MODEL_NAME) as model:  # the demo's own VAE, written as an A1111 file
        vae = model.pipe.vae
        state = vae_to_ldm({k: v.detach().float().cpu().clone().contiguous() for k, v in vae.state_dict().items()}, dict(vae.config))
    folder = api_app["root"] / "models" / "VAE"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "demo-vae.safetensors"))
    return api_app


def test_sd_vae_lists_the_files(vae_app):
    items = vae_app["client"].get("/sdapi/v1/sd-vae").json()
    assert items == [{"model_name": "demo-vae.safetensors", "filename": str(vae_app["root"] / "models" / "VAE" / "demo-vae.safetensors")}]


def test_override_settings_sd_vae_decodes_with_it_and_the_info_names_it(vae_app):
    client = vae_app["client"]
    reply = client.post("/sdapi/v1/txt2img", json=QUICK | {"override_settings": {"sd_vae": "demo-vae"}})
    assert reply.status_code == 200, reply.text
    info = json.loads(reply.json()["info"])
    assert info["sd_vae_name"] == "demo-vae.safetensors" and len(info["sd_vae_hash"]) == 10
    assert "VAE: demo-vae.safetensors" in png_of(reply.json()["images"][0]).text["parameters"]
    plain = json.loads(client.post("/sdapi/v1/txt2img", json=QUICK).json()["info"])  # restored afterwards (A1111's default)
    assert plain["sd_vae_name"] is None


def test_the_sd_vae_option_is_the_default_until_changed_back(vae_app):
    client = vae_app["client"]
    assert client.post("/sdapi/v1/options", json={"sd_vae": "demo-vae.safetensors"}).status_code == 200
    try:
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "demo-vae.safetensors"
        info = json.loads(client.post("/sdapi/v1/txt2img", json=QUICK).json()["info"])
        assert info["sd_vae_name"] == "demo-vae.safetensors"
    finally:
        assert client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"


@pytest.mark.parametrize("body", [{"override_settings": {"sd_vae": "nope.pt"}}, {"override_settings": {"sd_vae": 3}}])
def test_an_unknown_vae_is_a_422(vae_app, body):
    reply = vae_app["client"].post("/sdapi/v1/txt2img", json=QUICK | body)
    assert reply.status_code == 422 and set(reply.json()) == A1111_ERROR_KEYS
    assert "override_settings.sd_vae" in reply.json()["detail"]
    refused = vae_app["client"].post("/sdapi/v1/options", json={"sd_vae": "nope.pt"})
    assert refused.status_code == 422 and "No VAE named 'nope.pt'" in refused.json()["detail"]
