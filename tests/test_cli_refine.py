"""`app.py generate` with img2img, inpainting, hires fix and the face detailer, end to end on the tiny
SD 1.5 model: each mode's picture is the engine's for the same request, and bad input exits 2 with one
`error:` line before anything is written. Most runs call `app.main` in this process (as
tests/reliability does); one runs `python app.py` as a user would."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines.infotext import parse_infotext
from pipelines.refine import RESIZE_MODES
from tests.a1111.test_bad_input import png_claiming
from tests.refine.test_img2img_inpaint import box_mask, picture
from tests.test_cli import APP, ROOT, cli_env
from tests.tiny_models import copy_model, tiny_request

SIZE = 64
GEN = ["generate", "--model", "tiny-sd15", "--prompt", "a lighthouse", "--steps", "4", "--width", str(SIZE), "--height", str(SIZE),
       "--seed", "5", "--sampler", "Euler", "--cfg-scale", "3"]
FACES = ((40, 40, 248, 248), (400, 400, 580, 580))  # where the tiny detector plants its faces in a 640x640 square


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The pictures, masks and broken files the runs use."""
    folder = tmp_path_factory.mktemp("cli-refine-files")
    picture(SIZE, seed=4).save(folder / "init.png")
    picture(96, seed=4).crop((0, 0, 96, 64)).save(folder / "wide.png")
    picture(128, seed=4).save(folder / "big.png")
    box_mask(SIZE, (16, 16, 40, 40)).save(folder / "mask.png")
    Image.new("L", (SIZE, SIZE), 0).save(folder / "empty-mask.png")
    Image.new("L", (SIZE, SIZE), 255).save(folder / "white-mask.png")
    (folder / "notes.png").write_text("not a picture")
    (folder / "bomb.png").write_bytes(png_claiming(20000, 20000))
    (folder / "small-limit.json").write_text(json.dumps({"max_input_megapixels": 0.01}))  # 10,000 pixels
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, model_zoo):
    """tiny-sd15 and the tiny face detector (it reports two faces at fixed places of any square picture)."""
    from pipelines.bench import tiny_onnx
    from pipelines.bench.tiny_face import write_face_models

    folder = tmp_path_factory.mktemp("cli-refine-models")
    copy_model(model_zoo["sd15"], folder, "tiny-sd15")
    write_face_models(folder, photo_shape=(tiny_onnx.DET_SIZE, tiny_onnx.DET_SIZE, 3), boxes=FACES)
    return folder


def run(capsys, models, tmp_path, demo_cache_dir, *args, settings: str | None = None) -> tuple[int, str, str]:
    import app

    argv = [*GEN, *args, "--models-dir", str(models), "--outputs-dir", str(tmp_path / "outputs"), "--cache-dir", str(demo_cache_dir),
            "--device", "cpu", "--settings", settings or str(tmp_path / "settings.json")]
    try:
        code = app.main(argv)
    except SystemExit as exit_:  # argparse refuses a flag's value itself
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, models, tmp_path, demo_cache_dir, *args) -> dict:
    code, out, err = run(capsys, models, tmp_path, demo_cache_dir, *args, "--json")
    assert code == 0, err
    assert "Traceback" not in err
    return json.loads(out.strip().splitlines()[-1])


def saved(result: dict, index: int = 0) -> Image.Image:
    return Image.open(result["images"][index])


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def engine(manager, **fields) -> np.ndarray:
    """The engine's picture for the request the flags stand for."""
    request = tiny_request("sd15", seed=5, steps=4, cfg_scale=3.0, prompt="a lighthouse", save=False, **fields)
    return array(manager.generate(request).images[0].image)


def test_img2img(capsys, models, files, tmp_path, demo_cache_dir, shared_manager):
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(files / "init.png"), "--strength", "0.5")
    assert result["request"]["init_image"]["size"] == [SIZE, SIZE] and result["request"]["denoising_strength"] == 0.5
    assert len(result["step_seconds"]) == 2 and "img encode" in result["stage_seconds"]  # int(4 x 0.5) steps
    params = parse_infotext(saved(result).info["parameters"])
    assert params["Denoising strength"] == "0.5"
    init = Image.open(files / "init.png")
    assert np.array_equal(array(saved(result)), engine(shared_manager, init_image=init, denoising_strength=0.5))


def test_resize_modes_by_name_number_and_short_name(capsys, models, files, tmp_path, demo_cache_dir):
    for given, mode in (("crop", "Crop and resize"), ("2", "Resize and fill"), ("Just resize", "Just resize")):
        result = run_json(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(files / "wide.png"), "--resize-mode", given,
                          "--strength", "0.25", "--no-save")
        assert result["request"]["resize_mode"] == mode and result["request"]["init_image"]["size"] == [96, 64]
    assert mode in RESIZE_MODES


def test_inpaint_keeps_the_pixels_outside_the_mask(capsys, models, files, tmp_path, demo_cache_dir, shared_manager):
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(files / "init.png"), "--mask", str(files / "mask.png"),
                      "--strength", "0.9", "--mask-blur", "0", "--masked-content", "original")
    out, original = array(saved(result)), array(Image.open(files / "init.png"))
    mask = np.asarray(Image.open(files / "mask.png"))
    assert np.array_equal(out[mask == 0], original[mask == 0]) and not np.array_equal(out[mask == 255], original[mask == 255])
    assert {"img encode", "paste back"} <= set(result["stage_seconds"])
    params = parse_infotext(saved(result).info["parameters"])
    assert params["Mask blur"] == "0" and params["Masked content"] == "original"
    expected = engine(shared_manager, init_image=Image.open(files / "init.png"), mask=Image.open(files / "mask.png"), denoising_strength=0.9,
                      mask_blur=0, inpainting_fill="original")
    assert np.array_equal(out, expected)


def test_inpaint_only_masked_inverted(capsys, models, files, tmp_path, demo_cache_dir):
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(files / "init.png"), "--mask", str(files / "mask.png"),
                      "--only-masked", "--only-masked-padding", "8", "--invert-mask", "--masked-content", "latent noise", "--mask-blur", "2")
    request = result["request"]
    assert (request["inpaint_full_res"], request["inpaint_full_res_padding"], request["inpainting_mask_invert"], request["inpainting_fill"],
            request["mask_blur"]) == (True, 8, True, "latent noise", 2)
    params = parse_infotext(saved(result).info["parameters"])
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "8" and params["Mask mode"] == "Inpaint not masked"


def test_a_white_mask_is_a_note_not_an_error(capsys, models, files, tmp_path, demo_cache_dir):
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(files / "init.png"), "--mask", str(files / "white-mask.png"),
                      "--no-save")
    assert any("covers the whole image" in warning for warning in result["warnings"])


def test_hires_fix(capsys, models, files, tmp_path, demo_cache_dir):
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--hires-scale", "2", "--hires-upscaler", "lanczos", "--hires-steps", "2",
                      "--hires-denoising", "0.5", "--hires-sampler", "DPM++ 2M", "--hires-schedule-type", "sgm_uniform")
    assert saved(result).size == (2 * SIZE, 2 * SIZE)
    assert "hires pass" in result["stage_seconds"]
    params = parse_infotext(saved(result).info["parameters"])
    assert (params["Hires upscale"], params["Hires upscaler"], params["Hires steps"], params["Denoising strength"]) == ("2", "Lanczos", "2", "0.5")
    assert (params["Hires sampler"], params["Hires schedule type"]) == ("DPM++ 2M", "SGM Uniform")
    # --hires-checkpoint: the demo (SD 1.5 too) runs the second pass; without --hires-scale it is a message.
    from pipelines.catalog import DEMO_MODEL_NAME

    other = run_json(capsys, models, tmp_path, demo_cache_dir, "--hires-scale", "2", "--hires-checkpoint", DEMO_MODEL_NAME)
    params = parse_infotext(saved(other).info["parameters"])
    assert params["Model"] == "tiny-sd15" and params["Hires checkpoint"] == DEMO_MODEL_NAME  # a folder: no hash
    code, _out, err = run(capsys, models, tmp_path, demo_cache_dir, "--hires-checkpoint", DEMO_MODEL_NAME)
    assert code == 2 and "--hires-checkpoint needs --hires-scale above 1" in err


def test_refiner(capsys, models, tmp_path, demo_cache_dir):
    """--refiner: the demo (SD 1.5 too) takes over after half of the 4 steps; A1111's keys; the flag's mistakes."""
    from pipelines.catalog import DEMO_MODEL_NAME

    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--refiner", DEMO_MODEL_NAME, "--refiner-switch-at", "0.5")
    params = parse_infotext(saved(result).info["parameters"])
    assert (params["Model"], params["Refiner"], params["Refiner switch at"]) == ("tiny-sd15", DEMO_MODEL_NAME, "0.5")
    assert "refiner" in result["stage_seconds"] and result["request"]["refiner_checkpoint"] == DEMO_MODEL_NAME
    for args, message in ((("--refiner-switch-at", "0.5"), "--refiner-switch-at needs --refiner MODEL"),
                          (("--refiner", "nope"), "The refiner 'nope' is not installed"),
                          (("--refiner", DEMO_MODEL_NAME, "--refiner-switch-at", "2"), "Refiner switch at must be between 0.01 and 1")):
        code, _out, err = run(capsys, models, tmp_path, demo_cache_dir, *args)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert not list((tmp_path / "outputs").rglob("*.png"))[1:], "a refused run wrote a file"


def test_token_merging(capsys, models, tmp_path, demo_cache_dir):
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--token-merging", "0.5")
    assert parse_infotext(saved(result).info["parameters"])["Token merging ratio"] == "0.5"
    assert result["request"]["token_merging_ratio"] == 0.5
    code, _out, err = run(capsys, models, tmp_path, demo_cache_dir, "--token-merging", "0.9")
    assert code == 2 and "Token merging ratio must be between 0 (off) and 0.75, got 0.9" in err and "Traceback" not in err


def test_face_detailer(capsys, models, files, tmp_path, demo_cache_dir):
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--face-detail", "--face-detail-strength", "0.5", "--face-detail-steps", "2",
                      "--face-detail-faces", "1", "--face-detail-prompt", "a sharp face")
    request = result["request"]
    assert (request["face_detail"], request["face_detail_strength"], request["face_detail_steps"], request["face_detail_faces"],
            request["face_detail_prompt"]) == (True, 0.5, 2, "1", "a sharp face")
    assert "face detail" in result["stage_seconds"] and not any("skipped" in w for w in result["warnings"]), result["warnings"]
    assert parse_infotext(saved(result).info["parameters"])["Face detailer strength"] == "0.5"
    plain = run_json(capsys, models, tmp_path, demo_cache_dir, "--no-save")
    assert "face detail" not in plain["stage_seconds"]


def test_text_output_names_the_new_stages(capsys, models, files, tmp_path, demo_cache_dir):
    code, out, err = run(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(files / "init.png"), "--mask", str(files / "mask.png"))
    assert code == 0, err
    assert "img encode:" in err and "paste back:" in err and out.startswith("stages: ")


BAD = [
    ("missing init image", ["--init-image", "{files}/nope.png"], "The init image was not found"),
    ("init image not a picture", ["--init-image", "{files}/notes.png"], "The init image is not an image"),
    # a folder of init images is a batch (tests/test_cli_batch.py); a folder of masks for one picture is not a mask
    ("mask a folder for one picture", ["--init-image", "{files}/init.png", "--mask", "{files}"], "is a folder, not an image"),
    ("init image claims 20000x20000", ["--init-image", "{files}/bomb.png"], "Likeness opens images of at most 100 megapixels. The limit is the max_input_megapixels setting"),
    ("mask not a picture", ["--init-image", "{files}/init.png", "--mask", "{files}/notes.png"], "The mask is not an image"),
    ("empty mask", ["--init-image", "{files}/init.png", "--mask", "{files}/empty-mask.png"], "The mask is empty"),
    ("strength 1.5", ["--init-image", "{files}/init.png", "--strength", "1.5"], "Denoising strength must be between 0 and 1, got 1.5"),
    ("strength nan", ["--init-image", "{files}/init.png", "--strength", "nan"], "Denoising strength must be between 0 and 1, got nan"),
    ("strength as text", ["--init-image", "{files}/init.png", "--strength", "lots"], "argument --strength: invalid float value"),
    ("strength without an init image", ["--strength", "0.5"], "--strength needs --init-image PATH"),
    ("strength 0 without an init image", ["--strength", "0"], "--strength needs --init-image PATH"),
    ("mask blur 0 without a mask", ["--init-image", "{files}/init.png", "--mask-blur", "0"], "--mask-blur needs --mask PATH"),
    ("mask without an init image", ["--mask", "{files}/mask.png"], "--mask needs --init-image PATH"),
    ("mask blur without a mask", ["--init-image", "{files}/init.png", "--mask-blur", "3"], "--mask-blur needs --mask PATH"),
    ("only masked without a mask", ["--init-image", "{files}/init.png", "--only-masked"], "--only-masked needs --mask PATH"),
    ("unknown resize mode", ["--init-image", "{files}/init.png", "--resize-mode", "7"], "Resize mode must be one of 0 = Just resize"),
    ("unknown masked content", ["--init-image", "{files}/init.png", "--mask", "{files}/mask.png", "--masked-content", "sky"],
     "Masked content must be one of 0 = fill, 1 = original"),
    ("mask blur 100", ["--init-image", "{files}/init.png", "--mask", "{files}/mask.png", "--mask-blur", "100"], "Mask blur must be between 0 and 64"),
    ("hires scale 5", ["--hires-scale", "5"], "Hires scale must be between 1 and 4, got 5.0"),
    ("hires steps without a scale", ["--hires-steps", "3"], "--hires-steps needs --hires-scale above 1"),
    ("hires sampler without a scale", ["--hires-sampler", "Euler"], "--hires-sampler needs --hires-scale above 1"),
    ("hires sampler of another family", ["--hires-scale", "2", "--hires-sampler", "Flow Euler"], "Hires sampler 'Flow Euler' is not available"),
    ("unknown upscaler", ["--hires-scale", "2", "--hires-upscaler", "R-ESRGAN 4x+"], "No hires upscaler named 'R-ESRGAN 4x+'; choose one of: Latent, Lanczos, Nearest"),
    ("detailer flag without the detailer", ["--face-detail-strength", "0.3"], "--face-detail-strength needs --face-detail"),
    ("detailer strength 2", ["--face-detail", "--face-detail-strength", "2"], "Face detailer strength must be between 0 and 1, got 2.0"),
    ("detailer face 0", ["--face-detail", "--face-detail-faces", "0"], "Face detailer faces must be numbers from 1"),
]


@pytest.mark.parametrize("args, message", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_exits_2_with_one_message(capsys, models, files, tmp_path, demo_cache_dir, args, message):
    code, out, err = run(capsys, models, tmp_path, demo_cache_dir, *[arg.format(files=files) for arg in args])
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    if "invalid float" not in message:  # argparse's own refusals print the usage first
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], err
        assert out == ""
    assert not (tmp_path / "outputs").exists()


def test_the_pixel_limit_is_the_setting_and_named(capsys, models, files, tmp_path, demo_cache_dir):
    limited = str(files / "small-limit.json")
    code, _, err = run(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(files / "big.png"), settings=limited)
    assert code == 2
    assert "error: The init image is 128x128 pixels (16,384 pixels); Likeness opens images of at most 10,000 pixels." in err
    assert "max_input_megapixels" in err
    code, _, err = run(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(files / "init.png"), "--no-save", settings=limited)
    assert code == 0, err  # 64x64 is under the limit


def test_img2img_as_a_user_runs_it(files, tmp_path, demo_cache_dir):
    """A real process, the demo model: the flags parse, the picture is read and the result saved."""
    argv = [sys.executable, str(APP), "generate", "--prompt", "x", "--steps", "2", "--width", "64", "--height", "64", "--init-image",
            str(files / "init.png"), "--mask", str(files / "mask.png"), "--strength", "0.6", "--json", "--models-dir", str(tmp_path / "models"),
            "--outputs-dir", str(tmp_path / "outputs"), "--cache-dir", str(demo_cache_dir)]
    completed = subprocess.run(argv, cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["request"]["mask"]["size"] == [64, 64] and len(result["step_seconds"]) == 1  # int(2 x 0.6)
    assert Image.open(result["images"][0]).size == (64, 64)
