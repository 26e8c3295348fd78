"""/sdapi/v1/img2img, txt2img's hires fix and /upscalers, over real HTTP (FastAPI's test client on the
A1111 router) on the tiny SD 1.5 model: A1111's body and response, each result the same as the
engine's for the request it maps to, and bad input as 422 in A1111's error shape before anything runs."""
from __future__ import annotations

import base64
import io
import json
from dataclasses import replace

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.infotext import parse_infotext
from settings.schema import AppSettings
from tests.a1111.test_bad_input import png_claiming
from tests.refine.test_img2img_inpaint import box_mask, picture
from ui.a1111 import mapping
from ui.a1111.models import Img2ImgRequest, Txt2ImgRequest
from ui.a1111.routes import build_router
from ui.server import ServerOptions

ERROR_KEYS = {"error", "detail", "body", "errors"}
SIZE = 64
BASE = {"prompt": "a lighthouse", "negative_prompt": "blurry", "steps": 4, "width": SIZE, "height": SIZE, "seed": 11, "cfg_scale": 3,
        "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "tiny-sd15"}}
# StableDiffusionImg2ImgProcessingAPI (A1111 1.10): StableDiffusionProcessingImg2Img's init fields minus API_NOT_ALLOWED, plus
# the API's own. `parameters` echoes them all.
A1111_IMG2IMG_FIELDS = {
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
    "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "restore_faces", "tiling",
    "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax", "s_tmin",
    "s_noise", "override_settings", "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at",
    "disable_extra_networks", "firstpass_image", "comments", "init_images", "resize_mode", "image_cfg_scale", "mask",
    "mask_blur_x", "mask_blur_y", "mask_blur", "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
    "inpainting_mask_invert", "initial_noise_multiplier", "latent_mask", "force_task_id", "sampler_index", "include_init_images",
    "script_name", "script_args", "send_images", "save_images", "alwayson_scripts", "infotext",
}


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def png_of(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


INIT = picture(SIZE, seed=4)
MASK = box_mask(SIZE, (16, 16, 40, 40))


@pytest.fixture(scope="module")
def api(shared_manager):
    app = FastAPI()
    app.include_router(build_router(shared_manager, AppSettings(), ServerOptions(api=True)))
    with TestClient(app) as client:
        yield client


def engine_image(manager, body: dict, route: str = "img2img") -> np.ndarray:
    """What the engine makes for the request the body maps to (the API must give the same pixels)."""
    model = Img2ImgRequest if route == "img2img" else Txt2ImgRequest
    prepared = mapping.prepare(model(**body), manager, mapping.ApiDefaults(manager.default_model()))
    return array(manager.generate(replace(prepared.request, save=False)).images[0].image)


def post(api, route: str, body: dict):
    return api.post(f"/sdapi/v1/{route}", json=body)


def test_img2img_answers_as_a1111_with_the_engines_picture(api, shared_manager):
    body = dict(BASE, init_images=[b64_png(INIT)], denoising_strength=0.5)
    response = post(api, "img2img", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"images", "parameters", "info"}
    assert set(answer["parameters"]) == A1111_IMG2IMG_FIELDS
    assert answer["parameters"]["init_images"] is None and answer["parameters"]["mask"] is None  # A1111 does not echo them
    info = json.loads(answer["info"])
    assert info["denoising_strength"] == 0.5 and info["all_seeds"] == [11] and info["warnings"] == []
    assert len(info["likeness"]["step_seconds"]) == 2  # int(4 steps x 0.5): the end of the schedule, as A1111
    (image,) = answer["images"]
    png = png_of(image)
    assert png.size == (SIZE, SIZE)
    params = parse_infotext(png.info["parameters"])
    assert params["Denoising strength"] == "0.5" and params["Steps"] == "4" and "Mask blur" not in params
    assert np.array_equal(array(png), engine_image(shared_manager, body))
    # Strength 0 is the picture after a VAE round trip: no step runs; a different picture gives a different result.
    zero = json.loads(post(api, "img2img", dict(body, denoising_strength=0)).json()["info"])
    assert zero["likeness"]["step_seconds"] == []
    other = post(api, "img2img", dict(body, init_images=[b64_png(picture(SIZE, seed=9))])).json()["images"][0]
    assert not np.array_equal(array(png_of(other)), array(png))


def test_inpaint_keeps_what_is_outside_the_mask(api, shared_manager):
    body = dict(BASE, init_images=["data:image/png;base64," + b64_png(INIT)], mask=b64_png(MASK), denoising_strength=0.9,
                mask_blur=0, inpainting_fill=1, inpaint_full_res=False)
    response = post(api, "img2img", body)
    assert response.status_code == 200, response.text
    png = png_of(response.json()["images"][0])
    out, original = array(png), array(INIT)
    outside, inside = np.asarray(MASK) == 0, np.asarray(MASK) == 255
    assert np.array_equal(out[outside], original[outside])
    assert not np.array_equal(out[inside], original[inside])
    assert np.array_equal(out, engine_image(shared_manager, body))
    params = parse_infotext(png.info["parameters"])
    assert params["Mask blur"] == "0" and params["Masked content"] == "original" and "Inpaint area" not in params
    # A1111's API defaults: only masked (inpaint_full_res true, padding 0), masked content 0 = fill.
    default = post(api, "img2img", dict(BASE, init_images=[b64_png(INIT)], mask=b64_png(MASK), mask_blur=0))
    params = parse_infotext(png_of(default.json()["images"][0]).info["parameters"])
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "0" and params["Masked content"] == "fill"
    # Inverted: what the mask does not cover is repainted, the box is kept.
    inverted = array(png_of(post(api, "img2img", dict(body, inpainting_mask_invert=1)).json()["images"][0]))
    assert np.array_equal(inverted[inside], original[inside]) and not np.array_equal(inverted[outside], original[outside])


@pytest.mark.parametrize("fill, name", list(enumerate(("fill", "original", "latent noise", "latent nothing"))))
def test_inpainting_fill_numbers_are_a1111s(shared_manager, fill, name):
    body = Img2ImgRequest(**dict(BASE, init_images=[b64_png(INIT)], mask=b64_png(MASK), inpainting_fill=fill))
    assert mapping.prepare(body, shared_manager, mapping.ApiDefaults("tiny-sd15")).request.inpainting_fill == name


def test_img2img_fields_a1111_has_and_likeness_reads_its_own_way(api, shared_manager):
    body = dict(BASE, init_images=[b64_png(INIT)], resize_mode=3, mask=b64_png(MASK), mask_blur_x=2, mask_blur_y=6,
                include_init_images=True, image_cfg_scale=1.5, steps=2)
    response = post(api, "img2img", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    warnings = " ".join(json.loads(answer["info"])["warnings"])
    assert "resize_mode 3" in warnings and "by 6" in warnings
    assert "image_cfg_scale" not in warnings  # webuiapi sends 1.5 on every call
    assert len(answer["images"]) == 2 and "parameters" not in png_of(answer["images"][1]).info  # the init image, appended
    assert np.array_equal(array(png_of(answer["images"][1])), array(INIT))
    prepared = mapping.prepare(Img2ImgRequest(**body), shared_manager, mapping.ApiDefaults("tiny-sd15"))
    request = prepared.request
    assert (request.resize_mode, request.mask_blur, request.inpaint_full_res, request.inpaint_full_res_padding) == ("Just resize", 6, True, 0)
    for mode, name in ((0, "Just resize"), (1, "Crop and resize"), (2, "Resize and fill")):
        single = Img2ImgRequest(**dict(BASE, init_images=[b64_png(INIT)], resize_mode=mode))
        assert mapping.prepare(single, shared_manager, mapping.ApiDefaults("tiny-sd15")).request.resize_mode == name


def test_txt2img_hires_fix_and_denoising_strength(api, shared_manager):
    body = dict(BASE, steps=2, enable_hr=True, hr_scale=2, hr_upscaler="Lanczos", hr_second_pass_steps=3, denoising_strength=0.5)
    response = post(api, "txt2img", body)
    assert response.status_code == 200, response.text
    png = png_of(response.json()["images"][0])
    assert png.size == (2 * SIZE, 2 * SIZE)
    params = parse_infotext(png.info["parameters"])
    assert params["Hires upscale"] == "2" and params["Hires upscaler"] == "Lanczos" and params["Denoising strength"] == "0.5"
    assert np.array_equal(array(png), engine_image(shared_manager, body, "txt2img"))
    request = mapping.prepare(Txt2ImgRequest(**body), shared_manager, mapping.ApiDefaults("tiny-sd15")).request
    assert (request.hires_scale, request.hires_upscaler, request.hires_steps, request.hires_denoising) == (2, "Lanczos", 3, 0.5)
    # hr_resize_x wins over hr_scale, as in A1111; A1111's latent variants run as Latent, with a note.
    prepared = mapping.prepare(Txt2ImgRequest(**dict(body, hr_resize_x=96, hr_upscaler="Latent (bicubic antialiased)")), shared_manager,
                               mapping.ApiDefaults("tiny-sd15"))
    assert prepared.request.hires_scale == 1.5 and prepared.request.hires_upscaler == "Latent"
    assert any("runs as Latent" in w for w in prepared.warnings)
    # enable_hr false: the hr_* fields and denoising_strength do nothing (A1111), and nothing is warned about.
    off = mapping.prepare(Txt2ImgRequest(**dict(body, enable_hr=False)), shared_manager, mapping.ApiDefaults("tiny-sd15"))
    assert off.request.hires_scale == 1 and off.warnings == []


def test_txt2img_hr_checkpoint_name_runs_the_hires_pass_on_that_model(api, shared_manager):
    """A1111's hr_checkpoint_name by title or name ("Use same checkpoint": the first pass's); the PNG names it as A1111's
    `Hires checkpoint`; a model that is not installed is a 422 naming the field."""
    body = dict(BASE, steps=2, enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5)
    same = post(api, "txt2img", dict(body, hr_checkpoint_name="Use same checkpoint"))
    assert same.status_code == 200 and "Hires checkpoint" not in png_of(same.json()["images"][0]).info["parameters"]
    title = next(m["title"] for m in api.get("/sdapi/v1/sd-models").json() if m["model_name"] == DEMO_MODEL_NAME)
    other = post(api, "txt2img", dict(body, hr_checkpoint_name=title))
    assert other.status_code == 200, other.text
    png = png_of(other.json()["images"][0])
    params = parse_infotext(png.info["parameters"])
    assert params["Model"] == "tiny-sd15" and params["Hires checkpoint"].split(" [")[0] == DEMO_MODEL_NAME
    # (The suite's random demo has tiny-sd15's weights: the pixels are the same here; tests/refine/test_hires_checkpoint.py
    # shows another model's weights change them.)
    assert not any("hr_checkpoint_name" in w for w in json.loads(other.json()["info"])["warnings"])
    request = mapping.prepare(Txt2ImgRequest(**dict(body, hr_checkpoint_name=DEMO_MODEL_NAME)), shared_manager,
                              mapping.ApiDefaults("tiny-sd15")).request
    assert request.hires_checkpoint == DEMO_MODEL_NAME
    missing = post(api, "txt2img", dict(body, hr_checkpoint_name="sdxl_base_1.0"))
    assert missing.status_code == 422 and "hr_checkpoint_name: No model 'sdxl_base_1.0'" in missing.json()["detail"]


def test_txt2img_refiner_fields_and_script(api, shared_manager):
    """A1111's refiner_checkpoint (a title, name or hash) and refiner_switch_at, or its Refiner script's args: the PNG
    has A1111's Refiner keys; "None" is no refiner; an unknown model or a switch out of range is a 422 naming it."""
    body = dict(BASE, steps=4)
    title = next(m["title"] for m in api.get("/sdapi/v1/sd-models").json() if m["model_name"] == DEMO_MODEL_NAME)
    refined = post(api, "txt2img", dict(body, refiner_checkpoint=title, refiner_switch_at=0.5))
    assert refined.status_code == 200, refined.text
    params = parse_infotext(png_of(refined.json()["images"][0]).info["parameters"])
    assert params["Model"] == "tiny-sd15" and params["Refiner"].split(" [")[0] == DEMO_MODEL_NAME and params["Refiner switch at"] == "0.5"
    assert not any("refiner" in w for w in json.loads(refined.json()["info"])["warnings"])
    script = post(api, "txt2img", dict(body, alwayson_scripts={"Refiner": {"args": [True, DEMO_MODEL_NAME, 0.5]}}))
    assert parse_infotext(png_of(script.json()["images"][0]).info["parameters"])["Refiner"] == params["Refiner"]
    for name in (None, "", "None"):
        request = mapping.prepare(Txt2ImgRequest(**dict(body, refiner_checkpoint=name)), shared_manager, mapping.ApiDefaults("tiny-sd15")).request
        assert request.refiner_checkpoint == ""
    off = post(api, "txt2img", dict(body, refiner_checkpoint=DEMO_MODEL_NAME, refiner_switch_at=0.5, alwayson_scripts={"refiner": {"args": [False]}}))
    assert "Refiner" in parse_infotext(png_of(off.json()["images"][0]).info["parameters"])  # a disabled script leaves the body's
    missing = post(api, "txt2img", dict(body, refiner_checkpoint="sd_xl_refiner_1.0"))
    assert missing.status_code == 422 and "refiner_checkpoint: No model 'sd_xl_refiner_1.0'" in missing.json()["detail"]
    out_of_range = post(api, "txt2img", dict(body, refiner_checkpoint=DEMO_MODEL_NAME, refiner_switch_at=0))
    assert out_of_range.status_code == 422 and "Refiner switch at must be between 0.01 and 1" in out_of_range.json()["detail"]


def test_face_detailer_fields_at_the_top_level(shared_manager):
    body = Txt2ImgRequest(**dict(BASE, face_detail=True, face_detail_strength=0.3, face_detail_steps=5, face_detail_faces=[1, 3],
                                 face_detail_prompt="a sharp face"))
    request = mapping.prepare(body, shared_manager, mapping.ApiDefaults("tiny-sd15")).request
    assert (request.face_detail, request.face_detail_strength, request.face_detail_steps, request.face_detail_faces,
            request.face_detail_prompt) == (True, 0.3, 5, "1,3", "a sharp face")
    assert set(mapping.echo_parameters(body)) >= {"face_detail", "face_detail_faces"}
    assert "face_detail" not in mapping.echo_parameters(Txt2ImgRequest(**BASE))  # A1111's echo unless sent
    ignored = mapping.prepare(Txt2ImgRequest(**dict(BASE, face_detail_strength=0.3)), shared_manager, mapping.ApiDefaults("tiny-sd15"))
    assert not ignored.request.face_detail and "face_detail is false" in ignored.warnings[0]


def test_upscalers_are_a1111s_list(api, tmp_path):
    items = api.get("/sdapi/v1/upscalers").json()
    assert [item["name"] for item in items] == ["None", "Lanczos", "Nearest"]
    assert all(set(item) == {"name", "model_name", "model_path", "model_url", "scale"} for item in items)
    assert api.get("/sdapi/v1/latent-upscale-modes").json() == [{"name": "Latent"}]
    assert api.get("/sdapi/v1/scripts").json()["img2img"]


def bad(name: str, **changes) -> tuple:
    return name, {**BASE, "init_images": [b64_png(INIT)], **changes}


BAD_IMG2IMG = [
    (bad("no init_images", init_images=None), "img2img needs init_images"),
    (bad("empty init_images", init_images=[]), "img2img needs init_images"),
    (bad("init image not base64", init_images=["not base64!"]), "init_images[0] is not valid base64"),
    (bad("init image not an image", init_images=[base64.b64encode(b"hello").decode()]), "init_images[0] is not an image"),
    (bad("init image claims 20000x20000", init_images=[base64.b64encode(png_claiming(20000, 20000)).decode()]), "at most"),
    (bad("init image a number", init_images=[5]), "init_images[0] must be a base64 string"),
    (bad("mask not an image", mask=base64.b64encode(b"\x00" * 10).decode()), "mask is not an image"),
    (bad("empty mask", mask=b64_png(Image.new("L", (SIZE, SIZE), 0))), "The mask is empty"),
    (bad("strength 1.5", denoising_strength=1.5), "Denoising strength must be between 0 and 1, got 1.5"),
    (bad("strength as text", denoising_strength="lots"), "denoising_strength"),
    (bad("resize_mode 5", resize_mode=5), "Resize mode must be one of 0 = Just resize"),
    (bad("inpainting_fill 4", mask=b64_png(MASK), inpainting_fill=4), "Masked content must be one of"),
    (bad("inpainting_mask_invert 2", mask=b64_png(MASK), inpainting_mask_invert=2), "inpainting_mask_invert must be 0"),
    (bad("mask_blur 100", mask=b64_png(MASK), mask_blur=100), "Mask blur must be between 0 and 64"),
    (bad("padding -1", mask=b64_png(MASK), inpaint_full_res_padding=-1), "Only-masked padding must be between"),
    (bad("face_detail_faces zero", face_detail=True, face_detail_faces=[0]), "face_detail_faces must be face numbers"),
]


@pytest.mark.parametrize("body, message", [(case[1], message) for case, message in BAD_IMG2IMG], ids=[case[0] for case, _ in BAD_IMG2IMG])
def test_bad_img2img_input_is_a_422_in_a1111s_shape(api, shared_manager, body, message):
    before = len(list(shared_manager.config.outputs_dir.rglob("*.png")))
    response = post(api, "img2img", dict(body, save_images=True))
    assert response.status_code == 422, response.text
    error = response.json()
    assert set(error) == ERROR_KEYS and message in error["detail"], error["detail"]
    assert "Traceback" not in error["detail"] and len(error["detail"]) < 2000  # no base64 echoed back
    assert len(list(shared_manager.config.outputs_dir.rglob("*.png"))) == before


BAD_TXT2IMG = [
    ("hires scale 5", dict(enable_hr=True, hr_scale=5), "Hires scale must be between 1 and 4"),
    ("unknown upscaler", dict(enable_hr=True, hr_upscaler="R-ESRGAN 4x+"), "No hires upscaler named 'R-ESRGAN 4x+'; choose one of: Latent, Lanczos"),
    ("hires denoising 2", dict(enable_hr=True, denoising_strength=2), "Hires denoising strength must be between 0 and 1"),
    ("hr_resize_x and y disagree", dict(enable_hr=True, hr_resize_x=128, hr_resize_y=96), "one factor"),
    ("detailer strength -1", dict(face_detail=True, face_detail_strength=-1), "Face detailer strength must be between 0 and 1"),
]


@pytest.mark.parametrize("changes, message", [case[1:] for case in BAD_TXT2IMG], ids=[case[0] for case in BAD_TXT2IMG])
def test_bad_hires_and_detailer_input_is_a_422(api, changes, message):
    response = post(api, "txt2img", dict(BASE, **changes))
    assert response.status_code == 422, response.text
    assert set(response.json()) == ERROR_KEYS and message in response.json()["detail"], response.json()["detail"]


def test_the_input_pixel_limit_is_the_setting_and_named(api, shared_manager):
    config = shared_manager.config
    kept = config.max_input_pixels
    config.max_input_pixels = 60 * 60
    try:
        response = post(api, "img2img", dict(BASE, init_images=[b64_png(INIT)]))
    finally:
        config.max_input_pixels = kept
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "init_images[0] is 64x64 pixels" in detail and "at most 3,600 pixels" in detail and "max_input_megapixels" in detail
    # The manager refuses it too, whatever the entry point.
    config.max_input_pixels = 60 * 60
    try:
        with pytest.raises(Exception, match="max_input_megapixels"):
            shared_manager.generate(replace(mapping.prepare(Img2ImgRequest(**dict(BASE, init_images=[b64_png(INIT)])), shared_manager,
                                                            mapping.ApiDefaults("tiny-sd15")).request, save=False))
    finally:
        config.max_input_pixels = kept


OTHER = picture(SIZE, seed=9)


def test_several_init_images_are_the_batchs_images_in_a1111s_order(api, shared_manager):
    """A1111's img2img with several init_images: each is one image of the batch (batch size = their number), batch
    after batch, image i of the job with seed + i; each equals the engine's img2img of that picture and seed."""
    body = dict(BASE, init_images=[b64_png(INIT), b64_png(OTHER)], batch_size=2, n_iter=2, steps=2, denoising_strength=0.6,
                include_init_images=True)
    response = post(api, "img2img", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [11, 12, 13, 14] and info["batch_size"] == 2 and len(answer["images"]) == 4 + 2
    for index, (start, seed) in enumerate(((INIT, 11), (OTHER, 12), (INIT, 13), (OTHER, 14))):
        one = dict(body, init_images=[b64_png(start)], batch_size=1, n_iter=1, seed=seed)
        assert np.array_equal(array(png_of(answer["images"][index])), engine_image(shared_manager, one)), index
    assert not np.array_equal(array(png_of(answer["images"][0])), array(png_of(answer["images"][1])))
    for index, start in enumerate((INIT, OTHER)):  # include_init_images: both pictures after the results
        assert np.array_equal(array(png_of(answer["images"][4 + index])), array(start))
    assert not any("init_images" in warning for warning in info["warnings"])


def test_a_batch_size_above_the_pictures_makes_one_image_each_and_a_random_seed_counts_on(api):
    body = dict(BASE, init_images=[b64_png(INIT), b64_png(OTHER)], batch_size=3, steps=2, seed=-1)
    answer = post(api, "img2img", body).json()
    seeds = json.loads(answer["info"])["all_seeds"]
    assert len(answer["images"]) == 2 and seeds[1] == seeds[0] + 1  # A1111 lowers the batch size to the pictures' number


def test_variation_seeds_count_on_per_picture_as_the_seeds_do(shared_manager):
    body = Img2ImgRequest(**dict(BASE, init_images=[b64_png(INIT), b64_png(OTHER)], batch_size=2, n_iter=2, subseed=-1,
                                 subseed_strength=0.3, seed=2**32 - 2))
    runs = mapping.prepare(body, shared_manager, mapping.ApiDefaults("tiny-sd15")).lines
    assert [run.seed for run in runs] == [2**32 - 2, 2**32 - 1, 0, 1]  # wrapping as the engine's own batches do
    first = runs[0].subseed
    assert first >= 0 and [run.subseed for run in runs] == [(first + i) % 2**32 for i in range(4)]
    assert all(run.batch_size == 1 and run.batch_count == 1 and run.subseed_strength == 0.3 for run in runs)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"batch_size": 1}, "2 init images but batch size 1"),
    ({"batch_size": 2, "init_images": [b64_png(INIT), "not base64!"]}, "init_images[1] is not valid base64"),
], ids=["more pictures than the batch", "the second picture broken"])
def test_several_init_images_refused_before_anything_runs(api, changes, expected):
    response = post(api, "img2img", {**BASE, "init_images": [b64_png(INIT), b64_png(OTHER)], **changes})
    assert response.status_code == 422 and expected in response.json()["detail"], response.text
