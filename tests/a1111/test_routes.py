"""Every /sdapi/v1 route with A1111's field names, checked against A1111's own models
(AUTOMATIC1111/stable-diffusion-webui modules/api/models.py and processing.py, v1.10), on a live app."""
from __future__ import annotations

import base64
import io
import json

import httpx
from PIL import Image

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.infotext import PARAM_PATTERN, parse_infotext
from tests.a1111.conftest import API_PASSWORD, API_USER
from tests.ui.conftest import start_app

# StableDiffusionTxt2ImgProcessingAPI: the init fields of StableDiffusionProcessingTxt2Img minus
# API_NOT_ALLOWED, plus the API's additional fields.
A1111_TXT2IMG_FIELDS = {
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
    "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "restore_faces", "tiling",
    "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax", "s_tmin",
    "s_noise", "override_settings", "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at",
    "disable_extra_networks", "firstpass_image", "comments", "enable_hr", "firstphase_width", "firstphase_height", "hr_scale",
    "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt", "force_task_id",
    "sampler_index", "script_name", "script_args", "send_images", "save_images", "alwayson_scripts", "infotext",
}
A1111_TXT2IMG_DEFAULTS = {"seed": -1, "subseed": -1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512, "batch_size": 1,
                          "n_iter": 1, "sampler_index": "Euler", "send_images": True, "save_images": False, "enable_hr": False,
                          "hr_scale": 2.0, "override_settings_restore_afterwards": True, "script_args": [], "alwayson_scripts": {}}
# Processed.js()
A1111_INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds",
    "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size", "restore_faces",
    "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
    "seed_resize_from_h", "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts", "styles",
    "job_timestamp", "clip_skip", "is_using_inpainting_conditioning", "version",
}
A1111_STATE_KEYS = {"skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no", "sampling_step", "sampling_steps"}
A1111_ITEM_KEYS = {
    "sd-models": {"title", "model_name", "hash", "sha256", "filename", "config"},
    "samplers": {"name", "aliases", "options"},
    "schedulers": {"name", "label", "aliases", "default_rho", "need_inner_model"},
    "upscalers": {"name", "model_name", "model_path", "model_url", "scale"},
}
A1111_ERROR_KEYS = {"error", "detail", "body", "errors"}
QUICK = {"prompt": "a lighthouse, at dusk", "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64, "seed": 77}


def png_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_list_routes_answer_with_a1111_items(api_app):
    client = api_app["client"]
    for route, keys in A1111_ITEM_KEYS.items():
        items = client.get(f"/sdapi/v1/{route}").json()
        assert items and all(set(item) == keys for item in items), route
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == [DEMO_MODEL_NAME]
    samplers = {s["name"] for s in client.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC"} <= samplers
    assert "karras" in {s["name"] for s in client.get("/sdapi/v1/schedulers").json()}
    assert client.get("/sdapi/v1/loras").json() == []
    for empty in ("sd-vae", "prompt-styles", "hypernetworks", "face-restorers"):
        assert client.get(f"/sdapi/v1/{empty}").json() == [], empty
    assert {"pulid", "adetailer"} <= set(client.get("/sdapi/v1/scripts").json()["txt2img"])
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    memory = client.get("/sdapi/v1/memory").json()
    assert set(memory) == {"ram", "cuda"} and memory["ram"]["used"] > 0 and memory["cuda"] == {"error": "unavailable"}
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["api_auth"] is None
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    idle = client.get("/sdapi/v1/progress").json()
    assert set(idle) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert set(idle["state"]) == A1111_STATE_KEYS and idle["progress"] == 0
    assert client.post("/sdapi/v1/interrupt").json() == {}  # nothing runs: a no-op, as in A1111
    assert client.post("/sdapi/v1/skip").status_code == 200
    # FastAPI's docs list the routes when --api is on.
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/progress", "/sdapi/v1/options", "/sdapi/v1/png-info"} <= set(paths)


def test_txt2img_returns_pngs_whose_infotext_a1111_parses(api_app):
    client = api_app["client"]
    # With the sampler options every webuiapi call sends (A1111's option defaults): no warning for them.
    response = client.post("/sdapi/v1/txt2img", json=dict(QUICK, batch_size=2, sampler_name="DPM++ 2M", scheduler="Karras",
                                                         eta=1.0, s_churn=0, s_tmax=0, s_tmin=0, s_noise=1))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert set(body["parameters"]) == A1111_TXT2IMG_FIELDS
    assert body["parameters"]["prompt"] == QUICK["prompt"] and body["parameters"]["scheduler"] == "Karras"
    info = json.loads(body["info"])
    assert A1111_INFO_KEYS <= set(info)
    assert info["all_seeds"] == [77, 78] and info["seed"] == 77 and info["steps"] == 3 and info["sd_model_name"] == DEMO_MODEL_NAME
    assert info["warnings"] == []
    assert len(body["images"]) == 2
    for image, infotext in zip(body["images"], info["infotexts"]):
        png = png_of(image)
        assert png.format == "PNG" and png.size == (64, 64)
        text = png.info["parameters"]
        assert text == infotext
        lines = text.split("\n")
        assert lines[0] == QUICK["prompt"] and lines[1] == "Negative prompt: blurry"
        pairs = dict(PARAM_PATTERN.findall(lines[-1]))  # A1111's own regex, on our short line
        assert len(pairs) >= 3
        assert pairs["Steps"] == "3" and pairs["Sampler"] == "DPM++ 2M" and pairs["Schedule type"] == "Karras"
        assert pairs["Size"] == "64x64" and pairs["Model"] == DEMO_MODEL_NAME
    # Nothing is saved unless save_images is true (A1111's API default).
    assert not any((api_app["root"] / "outputs").rglob("*.png"))


def test_the_scheduler_field_picks_the_schedule_type(api_app):
    """A1111's `scheduler` by name or label runs that schedule type and the PNG says so; one Likeness lacks runs
    Automatic with a warning; the lists say what there is and what Automatic means for each sampler."""
    client = api_app["client"]
    response = client.post("/sdapi/v1/txt2img", json=dict(QUICK, sampler_name="Euler a", scheduler="sgm_uniform"))
    info = json.loads(response.json()["info"])
    assert "Schedule type: SGM Uniform" in info["infotexts"][0] and info["warnings"] == []
    response = client.post("/sdapi/v1/txt2img", json=dict(QUICK, sampler_name="Euler a", scheduler="kl_optimal"))
    info = json.loads(response.json()["info"])
    assert "Schedule type: KL Optimal" in info["infotexts"][0] and info["warnings"] == []
    response = client.post("/sdapi/v1/txt2img", json=dict(QUICK, sampler_name="DDIM", scheduler="Karras"))
    info = json.loads(response.json()["info"])
    assert "Schedule type: Automatic" in info["infotexts"][0]
    assert info["warnings"] == ["Schedule type Karras is not available with DDIM in Likeness; Automatic was used."]
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [(s["name"], s["label"]) for s in schedulers] == [  # A1111 1.10's, in its order
        ("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"), ("exponential", "Exponential"),
        ("polyexponential", "Polyexponential"), ("sgm_uniform", "SGM Uniform"), ("kl_optimal", "KL Optimal"),
        ("align_your_steps", "Align Your Steps"), ("simple", "Simple"), ("normal", "Normal"), ("ddim", "DDIM"), ("beta", "Beta")]
    by_name = {s["name"]: s for s in schedulers}
    assert by_name["polyexponential"]["default_rho"] == 1.0 and by_name["karras"]["default_rho"] == 7.0
    assert by_name["normal"]["need_inner_model"] and not by_name["kl_optimal"]["need_inner_model"]
    options = {s["name"]: s["options"] for s in client.get("/sdapi/v1/samplers").json()}
    assert options["DPM++ 2M"] == {"scheduler": "karras"} and options["DPM++ 3M SDE"] == {"scheduler": "exponential"}
    assert options["Euler a"] == {}


def test_defaults_unknown_fields_and_unsupported_values_give_warnings(api_app):
    client = api_app["client"]
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64, "my_client_field": {"a": 1}, "restore_faces": True,
        "tiling": True, "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": DEMO_MODEL_NAME},
        "sampler_name": None, "cfg_scale": None, "send_images": False})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["images"] == []  # send_images=false
    for key, value in A1111_TXT2IMG_DEFAULTS.items():
        if key not in ("steps", "width", "height", "send_images"):
            assert body["parameters"][key] == value, key
    assert "my_client_field" not in body["parameters"]
    warnings = " ".join(json.loads(body["info"])["warnings"])
    for fragment in ("'my_client_field'", "restore_faces=True"):
        assert fragment in warnings
    assert "CLIP_stop_at_last_layers" not in warnings  # applied: clip skip 2
    assert "tiling" not in warnings  # applied too
    info = json.loads(body["info"])
    assert ", Tiling: True, " in info["infotexts"][0]
    assert info["sampler_name"] == "Euler" and info["cfg_scale"] == 7.0  # null = A1111's default (sampler_index "Euler")
    assert info["clip_skip"] == 2 and ", Clip skip: 2, " in info["infotexts"][0]  # for this request only (restore afterwards)
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_alwayson_deepcache_and_vae_precision(api_app):
    response = api_app["client"].post("/sdapi/v1/txt2img", json=dict(QUICK, steps=4, alwayson_scripts={
        "DeepCache": {"args": [True, 2, 0, "uniform"]}, "vae precision": {"args": [{"dtype": "fp32"}]}}))
    assert response.status_code == 200, response.text
    text = png_of(response.json()["images"][0]).info["parameters"]
    assert "DeepCache: N=2 B=0 uniform" in text and "VAE dtype: fp32" in text
    # A disabled script (leading false) does nothing.
    off = api_app["client"].post("/sdapi/v1/txt2img", json=dict(QUICK, alwayson_scripts={"deepcache": {"args": [False, 2]}}))
    assert "DeepCache" not in png_of(off.json()["images"][0]).info["parameters"]


def test_script_info_describes_the_args_each_script_takes(api_app):
    """GET /script-info in A1111's shape; a client that builds `args` from it (its defaults, in its order) is understood:
    every listed name is accepted, DeepCache's args with the interval changed switch it on, and Prompts from file or
    textbox runs its list."""
    client = api_app["client"]
    info = client.get("/sdapi/v1/script-info").json()
    assert all(set(item) == {"name", "is_alwayson", "is_img2img", "args"} for item in info)
    assert all(set(one) == {"label", "value", "minimum", "maximum", "step", "choices"} for item in info for one in item["args"])
    txt2img = {item["name"]: item for item in info if not item["is_img2img"]}
    assert sorted(txt2img) == sorted(client.get("/sdapi/v1/scripts").json()["txt2img"])
    assert {item["name"] for item in info if item["is_img2img"]} == set(txt2img)
    assert [a["label"] for a in txt2img["pulid"]["args"]][:3] == ["images", "id_weight", "start_step"]
    for name, item in txt2img.items():  # each name is one the routes take (switched off: nothing runs for it)
        if item["is_alwayson"]:
            response = client.post("/sdapi/v1/txt2img", json=dict(QUICK, steps=1, alwayson_scripts={name: {"args": [False]}}))
            assert response.status_code == 200, (name, response.text)
    deepcache = [a["value"] for a in txt2img["deepcache"]["args"]]
    assert deepcache == [1, 0, "uniform"] and txt2img["deepcache"]["args"][0]["maximum"] == 20
    response = client.post("/sdapi/v1/txt2img", json=dict(QUICK, steps=4, alwayson_scripts={"deepcache": {"args": [True, 3] + deepcache[1:]}}))
    assert "DeepCache: N=3 B=0 uniform" in png_of(response.json()["images"][0]).info["parameters"]
    lines = [a["value"] for a in txt2img["prompts from file or textbox"]["args"]]
    assert lines == [False, False, "start", ""]
    response = client.post("/sdapi/v1/txt2img", json=dict(QUICK, steps=1, script_name="prompts from file or textbox",
                                                           script_args=lines[:-1] + ["a red circle\na blue square"]))
    assert response.status_code == 200 and len(response.json()["images"]) == 2, response.text


def test_options_map_onto_likeness(api_app):
    client, manager = api_app["client"], api_app["manager"]
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == DEMO_MODEL_NAME and options["likeness_vae_dtype"] == "auto"
    answer = client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 2, "likeness_vae_dtype": "fp32",
                                                     "sd_model_checkpoint": DEMO_MODEL_NAME, "some_a1111_option": True})
    assert answer.status_code == 200
    assert "some_a1111_option" in answer.json()["ignored"]
    assert manager.config.preview_every == 2
    options = client.get("/sdapi/v1/options").json()
    assert options["show_progress_every_n_steps"] == 2 and options["likeness_vae_dtype"] == "fp32"
    text = png_of(client.post("/sdapi/v1/txt2img", json=QUICK).json()["images"][0]).info["parameters"]
    assert "VAE dtype: fp32" in text  # the new default applies to the next request
    # A bad value refuses the whole request and applies nothing.
    refused = client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 7, "sd_model_checkpoint": "no such model"})
    assert refused.status_code == 422 and set(refused.json()) == A1111_ERROR_KEYS
    assert manager.config.preview_every == 2
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 5, "likeness_vae_dtype": "auto"})
    # A1111's Clip skip option: the default of later requests; out of range refused with its range.
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).json()["applied"] == ["CLIP_stop_at_last_layers"]
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    assert json.loads(client.post("/sdapi/v1/txt2img", json=QUICK).json()["info"])["clip_skip"] == 2
    refused = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 13})
    assert refused.status_code == 422 and "from 1 to 12" in refused.json()["detail"]
    client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
    # A1111's token_merging_ratio: the default of later requests (their PNG says it), or one request's override.
    assert client.post("/sdapi/v1/options", json={"token_merging_ratio": 0.5}).json()["applied"] == ["token_merging_ratio"]
    assert client.get("/sdapi/v1/options").json()["token_merging_ratio"] == 0.5
    assert "Token merging ratio: 0.5" in png_of(client.post("/sdapi/v1/txt2img", json=QUICK).json()["images"][0]).info["parameters"]
    assert client.post("/sdapi/v1/options", json={"token_merging_ratio": 0.9}).status_code == 422
    client.post("/sdapi/v1/options", json={"token_merging_ratio": 0})
    once = client.post("/sdapi/v1/txt2img", json=dict(QUICK, override_settings={"token_merging_ratio": 0.25}))
    assert "Token merging ratio: 0.25" in png_of(once.json()["images"][0]).info["parameters"]
    assert "Token merging ratio" not in png_of(client.post("/sdapi/v1/txt2img", json=QUICK).json()["images"][0]).info["parameters"]


def test_png_info_reads_back_the_infotext(api_app):
    client = api_app["client"]
    image = client.post("/sdapi/v1/txt2img", json=QUICK).json()["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + image}).json()
    assert set(info) == {"info", "items", "parameters"}
    assert info["info"] == png_of(image).info["parameters"]
    assert info["parameters"]["Steps"] == "3" and info["parameters"]["Prompt"] == QUICK["prompt"]
    assert info["parameters"]["Negative prompt"] == "blurry" and info["parameters"]["Size-1"] == "64"


def test_img2img_on_the_live_app(api_app):
    """img2img on the served app (tests/a1111/test_img2img.py covers it in depth)."""
    client = api_app["client"]
    init = client.post("/sdapi/v1/txt2img", json=QUICK).json()["images"][0]
    response = client.post("/sdapi/v1/img2img", json=dict(QUICK, init_images=[init], denoising_strength=0.5))
    assert response.status_code == 200, response.text
    assert png_of(response.json()["images"][0]).size == (64, 64)
    assert "Denoising strength: 0.5" in png_of(response.json()["images"][0]).info["parameters"]
    refused = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": []})
    assert refused.status_code == 422
    assert set(refused.json()) == A1111_ERROR_KEYS and "init_images" in refused.json()["detail"]


def test_api_auth_refuses_a_wrong_password_and_takes_the_right_one(auth_app):
    url = auth_app["url"]
    nobody = httpx.get(f"{url}/sdapi/v1/sd-models")
    assert nobody.status_code == 401 and nobody.headers["www-authenticate"] == "Basic"
    assert set(nobody.json()) == A1111_ERROR_KEYS
    assert httpx.get(f"{url}/sdapi/v1/sd-models", auth=(API_USER, "wrong")).status_code == 401
    assert httpx.get(f"{url}/sdapi/v1/sd-models", auth=("bob", API_PASSWORD)).status_code == 401  # another user's password
    refused = httpx.post(f"{url}/sdapi/v1/txt2img", json=QUICK, auth=(API_USER, "wrong"))
    assert refused.status_code == 401
    assert httpx.get(f"{url}/sdapi/v1/sd-models", auth=(API_USER, API_PASSWORD)).status_code == 200
    assert httpx.get(f"{url}/sdapi/v1/sd-models", auth=("bob", "other")).status_code == 200
    done = httpx.post(f"{url}/sdapi/v1/txt2img", json=QUICK, auth=(API_USER, API_PASSWORD), timeout=300)
    assert done.status_code == 200 and done.json()["images"]
    assert httpx.get(f"{url}/sdapi/v1/cmd-flags", auth=(API_USER, API_PASSWORD)).json()["api_auth"] == "(set)"  # never the password
    assert httpx.get(url).status_code == 200  # the UI itself is not behind --api-auth (as in A1111)


def test_without_api_flag_there_is_no_sdapi(tmp_path):
    info, demo = start_app(tmp_path)
    try:
        assert httpx.post(f"{info['url']}/sdapi/v1/txt2img", json=QUICK).status_code == 404
        assert httpx.get(f"{info['url']}/sdapi/v1/progress").status_code == 404
        assert httpx.get(f"{info['url']}/docs").status_code == 404
        assert httpx.get(info["url"]).status_code == 200
    finally:
        demo.close()


def test_each_api_user_has_its_own_approximate_cache(auth_app):
    """With --api-auth, a user's cached latents are never served to another user (the cache namespace is the user)."""
    url = auth_app["url"]
    body = {**QUICK, "steps": 10, "seed": 8, "prompt": "a red circle on a blue square",
            "alwayson_scripts": {"approximate cache": {"args": [True]}}}
    similar = {**body, "prompt": "a red circle on a blue square!"}

    def approx(response) -> str:
        assert response.status_code == 200, response.text
        text = json.loads(response.json()["info"])["infotexts"][0]
        return parse_infotext(text).get("Approx cache", "") or text

    approx(httpx.post(f"{url}/sdapi/v1/txt2img", json=body, auth=(API_USER, API_PASSWORD), timeout=300))
    assert approx(httpx.post(f"{url}/sdapi/v1/txt2img", json=similar, auth=("bob", "other"), timeout=300)).startswith("miss")
    assert approx(httpx.post(f"{url}/sdapi/v1/txt2img", json=similar, auth=(API_USER, API_PASSWORD), timeout=300)).startswith("hit")


def test_api_user_is_the_authenticated_name_only():
    import base64

    from ui.a1111.routes import api_user

    header = "Basic " + base64.b64encode(b"alice:pw").decode()
    assert api_user(header, (("alice", "pw"),)) == "alice"
    assert api_user(header, (("alice", "other"),)) == ""  # a wrong password names nobody
    assert api_user(header, ()) == ""  # no --api-auth: the single-user default
    assert api_user(None, (("alice", "pw"),)) == ""


def test_prompt_styles_list_and_apply(api_app):
    """A1111's `styles` field and /prompt-styles, from the models folder's styles.csv."""
    client = api_app["client"]
    (api_app["root"] / "models").mkdir(exist_ok=True)
    (api_app["root"] / "models" / "styles.csv").write_text("name,prompt,negative_prompt\nPhoto,\"{prompt}, 35mm photo\",cartoon\n")
    assert client.get("/sdapi/v1/prompt-styles").json() == [{"name": "Photo", "prompt": "{prompt}, 35mm photo", "negative_prompt": "cartoon"}]
    info = json.loads(client.post("/sdapi/v1/txt2img", json=dict(QUICK, styles=["Photo"])).json()["info"])
    assert info["prompt"] == "a lighthouse, at dusk, 35mm photo" and info["negative_prompt"] == "blurry, cartoon"
    assert info["styles"] == ["Photo"] and not any("styles" in w for w in info["warnings"])
    refused = client.post("/sdapi/v1/txt2img", json=dict(QUICK, styles=["Nope"]))
    assert refused.status_code == 422 and "No style named 'Nope'" in refused.json()["detail"]


def test_variation_seed_fields(api_app):
    """A1111's subseed / subseed_strength: applied (no warning), and info lists each image's variation seed."""
    body = dict(QUICK, sampler_name="Euler", subseed=40, subseed_strength=0.25, batch_size=2)
    info = json.loads(api_app["client"].post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["subseed"] == 40 and info["all_subseeds"] == [40, 41] and info["subseed_strength"] == 0.25
    assert "Variation seed: 41, Variation seed strength: 0.25" in info["infotexts"][1]
    assert not any("subseed" in warning for warning in info["warnings"])
    refused = api_app["client"].post("/sdapi/v1/txt2img", json=dict(QUICK, subseed_strength=2))
    assert refused.status_code == 422 and "Variation seed strength must be between 0 and 1" in refused.json()["detail"]


def test_unload_and_reload_checkpoint_and_the_refresh_routes(api_app):
    """A1111's /unload-checkpoint frees the GPU (models to RAM), /reload-checkpoint loads the current checkpoint again;
    /refresh-vae and /refresh-embeddings answer (Likeness reads those folders at each use). Clients that call them at
    start-up or after a run no longer get a 404."""
    client, manager = api_app["client"], api_app["manager"]
    current = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    manager.cache.clear()
    assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
    assert [r.name for r in manager.cache.records()] == [manager.entry(manager.default_model()).name]
    assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert [r.level for r in manager.cache.records()] == ["RAM"]  # kept in the RAM cache: the next run needs no disk load
    assert client.post("/sdapi/v1/txt2img", json=QUICK).status_code == 200
    assert client.post("/sdapi/v1/refresh-vae").status_code == 200 and client.post("/sdapi/v1/refresh-embeddings").status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == current


def test_unload_moves_idle_models_off_the_device_and_leaves_one_in_use(tiny_pipes):
    """The cache's side of /unload-checkpoint on a GPU (here two real tiny pipelines marked as on the device): the idle
    one goes to RAM, the one a run holds stays."""
    import torch

    from pipelines.model_cache import ModelCache

    cache = ModelCache(torch.device("cpu"), ram_budget_bytes=2**34)
    for name in ("idle", "busy"):
        cache.put(name, tiny_pipes["sd15"], 1000).on_device = True
    busy = cache.acquire("busy")
    assert cache.offload_idle() == ["idle"]
    assert {r.name: r.level for r in cache.records()} == {"idle": "RAM", "busy": "VRAM"}
    cache.release(busy)
    assert cache.offload_idle() == ["busy"] and cache.offload_idle() == []


def test_prompts_from_file_or_textbox_runs_a_generation_per_line(api_app):
    """A1111's script through `script_name` / `script_args` (1.10's four args, or the older three): every image of
    every line in one response, each with its own prompt; a bad line is a 422 naming it, before anything runs."""
    client = api_app["client"]
    body = dict(QUICK, prompt="on grey", seed=50, script_name="Prompts from file or textbox",
                script_args=[True, False, "end", 'a red circle\n--prompt "a blue ring" --seed 9\n'])
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["all_prompts"] == ["on grey a red circle", "on grey a blue ring"] and info["all_seeds"] == [50, 9]
    older = dict(body, script_args=[False, False, "a green star\na white heart"])
    response = client.post("/sdapi/v1/txt2img", json=older).json()
    assert len(response["images"]) == 2 and json.loads(response["info"])["all_prompts"] == ["a green star on grey", "a white heart on grey"]
    bad = client.post("/sdapi/v1/txt2img", json=dict(body, script_args=[False, False, "fine\n--steps 0"]))
    assert bad.status_code == 422 and "Line 2: Steps must be between 1 and 150, got 0" in bad.json()["detail"]
    unknown = client.post("/sdapi/v1/txt2img", json=dict(QUICK, script_name="X/Y/Z plot"))
    assert unknown.status_code == 422 and 'Likeness has "Prompts from file or textbox"' in unknown.json()["detail"]


def test_prompts_from_file_with_script_args_of_another_shape_is_a_422(api_app):
    client = api_app["client"]
    for args in ([], ["a cat"], [1, 0, "a cat"], [True, False, "start", 5]):
        response = client.post("/sdapi/v1/txt2img", json=dict(QUICK, script_name="Prompts from file or textbox", script_args=args))
        assert response.status_code == 422 and "Prompts from file or textbox takes script_args [iterate_seed" in response.json()["detail"]
