"""A1111's extras routes, `/sdapi/v1/extra-single-image` and `/extra-batch-images`, on a live app with a real
tiny ESRGAN file: A1111's fields (modules/api/models.py ExtrasBaseRequest), its response and html_info."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pipelines.extras import EXTRAS_FOLDER
from pipelines.upscale import upscale_image
from tests.a1111.test_routes import A1111_ERROR_KEYS, png_of
from tests.upscale import tiny_state, write_esrgan
from tests.upscale.test_upscalers import noise_image

# ExtrasBaseRequest, A1111 1.10, with its defaults
A1111_EXTRAS_DEFAULTS = {"resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
                         "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 512, "upscaling_resize_h": 512,
                         "upscaling_crop": True, "upscaler_1": "None", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
                         "upscale_first": False}


@pytest.fixture(scope="module")
def esrgan_app(api_app):
    models = api_app["root"] / "models"
    write_esrgan(models / "ESRGAN" / "tiny_x4.safetensors", tiny_state(4, seed=1))
    write_esrgan(models / "ESRGAN" / "tiny_x2.safetensors", tiny_state(2, seed=2))
    return api_app | {"models": models}


def b64_png(image: Image.Image, parameters: str | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_the_models_take_a1111s_fields_with_a1111s_defaults():
    from ui.a1111.models import ExtrasBatchImagesRequest, ExtrasSingleImageRequest

    single = ExtrasSingleImageRequest()
    assert {name: getattr(single, name) for name in A1111_EXTRAS_DEFAULTS} == A1111_EXTRAS_DEFAULTS and single.image == ""
    assert set(ExtrasBatchImagesRequest.model_fields) == set(A1111_EXTRAS_DEFAULTS) | {"imageList"}


def test_single_image_scale_by_answers_the_picture_with_its_parameters_and_the_postprocessing(esrgan_app):
    source = noise_image(40, 24, seed=3)
    reply = esrgan_app["client"].post("/sdapi/v1/extra-single-image", json={
        "image": b64_png(source, "a red circle\nSteps: 20, Seed: 7"), "upscaler_1": "tiny_x4", "upscaling_resize": 2})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"html_info", "image"}
    assert body["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: tiny_x4</p>"  # A1111's plaintext_to_html
    picture = png_of(body["image"])
    assert picture.size == (80, 48)
    assert np.array_equal(pixels(picture), pixels(upscale_image(source, 2, "tiny_x4", esrgan_app["models"])))
    assert picture.text == {"parameters": "a red circle\nSteps: 20, Seed: 7",
                            "postprocessing": "Postprocess upscale by: 2, Postprocess upscaler: tiny_x4"}
    assert not (esrgan_app["root"] / "outputs" / EXTRAS_FOLDER).exists()  # A1111's API does not save extras either


def test_single_image_scale_to_with_crop_and_a_second_upscaler(esrgan_app):
    source = noise_image(40, 20, seed=4)
    reply = esrgan_app["client"].post("/sdapi/v1/extra-single-image", json={
        "image": "data:image/png;base64," + b64_png(source), "resize_mode": 1, "upscaling_resize_w": 60, "upscaling_resize_h": 60,
        "upscaler_1": "Lanczos", "upscaler_2": "tiny_x2", "extras_upscaler_2_visibility": 0.25})
    assert reply.status_code == 200, reply.text
    models = esrgan_app["models"]
    covering = Image.blend(upscale_image(source, 3, "Lanczos", models), upscale_image(source, 3, "tiny_x2", models), 0.25)
    picture = png_of(reply.json()["image"])
    assert picture.size == (60, 60) and np.array_equal(pixels(picture), pixels(covering.crop((30, 0, 90, 60))))
    assert reply.json()["html_info"] == ("<p>Postprocess upscale to: 60x60, Postprocess crop to fit: True, Postprocess upscaler: "
                                         "Lanczos, Postprocess upscaler 2: tiny_x2, Postprocess upscaler 2 visibility: 0.25</p>")


def test_a1111s_default_body_leaves_the_picture_and_face_restorers_are_noted(esrgan_app):
    source = noise_image(16, 16, seed=5)
    reply = esrgan_app["client"].post("/sdapi/v1/extra-single-image", json={"image": b64_png(source), "gfpgan_visibility": 0.5,
                                                                           "my_field": 1})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert np.array_equal(pixels(png_of(body["image"])), pixels(source))
    assert body["html_info"] == ("<p>Unknown field &#x27;my_field&#x27; was ignored.<br>\ngfpgan_visibility was ignored: Likeness has no "
                                 "GFPGAN face restorer (its face detailer redraws faces during a generation).<br>\n"
                                 "Upscaler 1 is None: the picture is unchanged.</p>")


def test_batch_images_upscales_each_and_show_extras_results_false_sends_none(esrgan_app):
    client = esrgan_app["client"]
    first, second = noise_image(16, 8, seed=6), noise_image(8, 16, seed=7)
    image_list = [{"data": b64_png(first), "name": "a.png"}, {"data": b64_png(second), "name": "b.png"}]
    reply = client.post("/sdapi/v1/extra-batch-images", json={"imageList": image_list, "upscaler_1": "Nearest", "upscaling_resize": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"html_info", "images"} and [png_of(b).size for b in body["images"]] == [(48, 24), (24, 48)]
    assert np.array_equal(pixels(png_of(body["images"][1])), pixels(second.resize((24, 48), Image.Resampling.NEAREST)))
    hidden = client.post("/sdapi/v1/extra-batch-images", json={"imageList": image_list, "upscaler_1": "Nearest", "show_extras_results": False})
    assert hidden.status_code == 200 and hidden.json()["images"] == []


@pytest.mark.parametrize("route, body, status, detail", [
    ("extra-single-image", {"image": "not base64!"}, 422, "image is not valid base64."),
    ("extra-single-image", {}, 422, "image is empty: send the picture to upscale as base64."),
    ("extra-single-image", {"upscaler_1": "nope"}, 422, "No Upscaler 1 named 'nope'. Available: Latent, Lanczos, Nearest, tiny_x2, tiny_x4"),
    ("extra-single-image", {"upscaler_1": "Latent"}, 422, "Upscaler 1: Latent upscales the latents inside a generation"),
    ("extra-single-image", {"resize_mode": 2}, 422, "resize_mode must be 0 (upscale by upscaling_resize) or 1"),
    ("extra-single-image", {"upscaler_1": "Lanczos", "upscaling_resize": 40}, 422, "Scale by must be a number from 0.01 to 16, got 40.0."),
    ("extra-single-image", {"upscaling_resize": "big"}, 422, "upscaling_resize: Input should be a valid number"),
    ("extra-batch-images", {"imageList": []}, 422, "imageList is empty"),
    ("extra-batch-images", {"imageList": [{"data": "", "name": "x"}]}, 422, "imageList[0] is empty."),
])
def test_bad_bodies_get_a1111s_error_shape_with_the_reason(esrgan_app, route, body, status, detail):
    if "image" not in body and route == "extra-single-image" and body:
        body = {"image": b64_png(noise_image(8, 8))} | body
    reply = esrgan_app["client"].post(f"/sdapi/v1/{route}", json=body)
    assert reply.status_code == status
    assert set(reply.json()) == A1111_ERROR_KEYS and detail in reply.json()["detail"]
    assert esrgan_app["client"].get("/sdapi/v1/progress").status_code == 200  # still serving
