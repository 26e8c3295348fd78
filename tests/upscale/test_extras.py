"""Extras: upscaling a finished picture (A1111's Extras tab), on the manager with real tiny ESRGAN files."""
from __future__ import annotations

import datetime as dt
import io
import threading

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pipelines.errors import GenerationCancelled, InvalidRequest
from pipelines.extras import EXTRAS_FOLDER, UpscaleRequest, plan_upscale
from pipelines.generate import CancelToken
from pipelines.telemetry import StageEnded, StageStarted
from pipelines.upscale import upscale_image
from tests.upscale import tiny_state, write_esrgan
from tests.upscale.test_upscalers import noise_image


@pytest.fixture
def models_dir(tmp_path):
    folder = tmp_path / "models" / "ESRGAN"
    write_esrgan(folder / "tiny_x4.safetensors", tiny_state(4, seed=1))
    write_esrgan(folder / "tiny_x2.safetensors", tiny_state(2, seed=2))
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    return tmp_path / "models"


@pytest.fixture
def manager(make_manager, models_dir):
    return make_manager(models_dir)


def with_parameters(image: Image.Image, text: str) -> Image.Image:
    """The picture as it comes back from a PNG file carrying A1111's `parameters`."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return Image.open(io.BytesIO(buffer.getvalue()))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_scale_by_gives_the_upscalers_picture_keeps_the_pictures_parameters_and_records_the_upscale(manager, tmp_path):
    source = with_parameters(noise_image(40, 24, seed=3), "a red circle\nSteps: 20, Seed: 7, Size: 40x24")
    result = manager.upscale(UpscaleRequest(source, upscaler="tiny_x4", scale=2))
    assert result.image.size == (80, 48)
    assert np.array_equal(pixels(result.image), pixels(upscale_image(source, 2, "tiny_x4", manager.config.models_dir)))
    assert result.postprocessing == "Postprocess upscale by: 2, Postprocess upscaler: tiny_x4"
    saved = tmp_path / "outputs" / EXTRAS_FOLDER / dt.date.today().isoformat() / "00000.png"
    assert result.path == str(saved)
    with Image.open(saved) as png:
        assert png.size == (80, 48) and np.array_equal(pixels(png.convert("RGB")), pixels(result.image))
        assert png.text == {"parameters": "a red circle\nSteps: 20, Seed: 7, Size: 40x24", "postprocessing": result.postprocessing}
    second = manager.upscale(UpscaleRequest(noise_image(8, 8), upscaler="Lanczos", scale=1.5))
    assert second.path.endswith("00001.png")  # numbered on, never over the first
    with Image.open(second.path) as png:
        assert png.text == {"postprocessing": "Postprocess upscale by: 1.5, Postprocess upscaler: Lanczos"}  # none to keep


def test_scale_to_covers_the_size_then_cuts_its_centre_as_a1111_pastes_it(manager):
    source = noise_image(40, 20, seed=4)
    cropped = manager.upscale(UpscaleRequest(source, upscaler="Lanczos", width=60, height=60, save=False))
    covering = source.resize((120, 60), Image.Resampling.LANCZOS)  # 60/20 = 3 is the larger ratio
    canvas = Image.new("RGB", (60, 60))  # A1111: the upscaled picture pasted centred on a W x H canvas
    canvas.paste(covering, box=(60 // 2 - 120 // 2, 60 // 2 - 60 // 2))
    assert cropped.image.size == (60, 60) and np.array_equal(pixels(cropped.image), pixels(canvas))
    assert cropped.postprocessing == "Postprocess upscale to: 60x60, Postprocess crop to fit: True, Postprocess upscaler: Lanczos"
    kept = manager.upscale(UpscaleRequest(source, upscaler="Lanczos", width=60, height=60, crop=False, save=False))
    assert kept.image.size == (120, 60) and np.array_equal(pixels(kept.image), pixels(covering))
    assert "crop" not in kept.postprocessing


def test_a_second_upscaler_is_blended_in_by_its_visibility_and_not_run_at_zero(manager):
    source = noise_image(24, 16, seed=5)
    models = manager.config.models_dir
    blended = manager.upscale(UpscaleRequest(source, upscaler="tiny_x4", scale=2, upscaler_2="tiny_x2", upscaler_2_visibility=0.3, save=False))
    expected = Image.blend(upscale_image(source, 2, "tiny_x4", models), upscale_image(source, 2, "tiny_x2", models), 0.3)
    assert np.array_equal(pixels(blended.image), pixels(expected))
    assert blended.postprocessing.endswith("Postprocess upscaler 2: tiny_x2, Postprocess upscaler 2 visibility: 0.3")
    unblended = manager.upscale(UpscaleRequest(source, upscaler="tiny_x4", scale=2, upscaler_2="tiny_x2", upscaler_2_visibility=0, save=False))
    assert np.array_equal(pixels(unblended.image), pixels(upscale_image(source, 2, "tiny_x4", models)))
    assert "upscaler 2" not in unblended.postprocessing


def test_none_leaves_the_picture_as_it_is_and_says_so(manager):
    source = noise_image(16, 16, seed=6)
    result = manager.upscale(UpscaleRequest(source, upscaler="None", scale=4, save=False))
    assert result.image.size == (16, 16) and np.array_equal(pixels(result.image), pixels(source))
    assert result.notes == ["Upscaler 1 is None: the picture is unchanged."] and result.postprocessing == ""


@pytest.mark.parametrize("fields, message", [
    ({"upscaler": "Latent"}, "Upscaler 1: Latent upscales the latents inside a generation"),
    ({"upscaler": "nope"}, "No Upscaler 1 named 'nope'. Available: Latent, Lanczos, Nearest, tiny_x2, tiny_x4"),
    ({"upscaler": "broken"}, "The Upscaler 1 'broken' cannot be used"),
    ({"upscaler_2": "nope", "upscaler_2_visibility": 0.5}, "No Upscaler 2 named 'nope'"),
    ({"upscaler": 3}, "Upscaler 1 must be an upscaler's name, got 3."),
    ({"upscaler_2_visibility": 1.5}, "Upscaler 2 visibility must be a number from 0 to 1, got 1.5."),
    ({"scale": float("nan")}, "Scale by must be a number from 0.01 to 4, got nan."),
    ({"scale": True}, "Scale by must be a number from 0.01 to 4, got True."),
    ({"scale": "2"}, "Scale by must be a number from 0.01 to 4, got '2'."),
    ({"width": 64}, "Height (Scale to) must be a whole number from 1 to 200, got 0."),
    ({"width": 64.5, "height": 64}, "Width (Scale to) must be a whole number"),
    ({"scale": 3.5, "upscaler": "Nearest"}, "would be 224x112; Extras makes pictures of at most 200 px a side"),
    ({"width": 150, "height": 150}, "64x32 to 150x150 is 4.7 times larger; Extras upscales at most 4 times"),
    ({"crop": "yes", "width": 64, "height": 64}, "Crop to fit must be true or false, got 'yes'."),
])
def test_bad_fields_are_refused_with_the_field_named_before_anything_runs(manager, fields, message, monkeypatch):
    monkeypatch.setattr("pipelines.extras.MAX_OUTPUT_SIDE", 200)  # a picture 16384 px a side is 768 MiB: the limit, made small
    monkeypatch.setattr("pipelines.extras.MAX_SCALE", 4.0)
    request = UpscaleRequest(noise_image(64, 32), **fields)
    with pytest.raises(InvalidRequest) as refused:
        manager.upscale(request)
    assert message in str(refused.value)
    assert not (manager.config.outputs_dir / EXTRAS_FOLDER).exists()


def test_no_picture_is_refused(manager):
    with pytest.raises(InvalidRequest, match="Choose a picture to upscale."):
        plan_upscale(UpscaleRequest(None), manager.config.models_dir)


def test_a_stop_between_tiles_ends_it_with_nothing_saved_and_the_device_free_for_the_next_job(manager):
    cancel, seen = CancelToken(), []

    def progress(done, total):
        seen.append((done, total))
        if done == 2:
            cancel.cancel()

    request = UpscaleRequest(noise_image(400, 200, seed=7), upscaler="tiny_x2", scale=2, upscaler_2="tiny_x4", upscaler_2_visibility=0.5)
    with pytest.raises(GenerationCancelled, match="nothing was saved"):
        manager.upscale(request, progress=progress, cancel=cancel)
    assert seen == [(1, 12), (2, 12)]  # 400x200 in 192 px tiles: 3 x 2 tiles a net, two nets; none after the Stop
    assert not (manager.config.outputs_dir / EXTRAS_FOLDER).exists()
    assert manager.upscale(UpscaleRequest(noise_image(8, 8), scale=2, save=False)).image.size == (16, 16)


def test_tiles_are_counted_over_both_upscalers(manager):
    seen = []
    manager.upscale(UpscaleRequest(noise_image(400, 200, seed=8), upscaler="tiny_x2", scale=2, upscaler_2="tiny_x4",
                                   upscaler_2_visibility=0.5, save=False), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(n, 12) for n in range(1, 13)]


def test_the_upscale_is_a_job_in_the_queue_and_a_stage_on_the_bus(manager):
    events, during = [], []
    unsubscribe = manager.bus.subscribe(events.append)
    try:
        manager.upscale(UpscaleRequest(noise_image(400, 200), upscaler="tiny_x2", scale=2, save=False),
                        progress=lambda done, total: during.append(manager.jobs()))
    finally:
        unsubscribe()
    [job] = during[0]
    assert (job.state, job.model, job.prompt, job.worker) == ("running", "upscaler tiny_x2", "upscale by 2", "this process")
    stages = [(type(e).__name__, e.stage) for e in events if isinstance(e, (StageStarted, StageEnded))]
    assert stages == [("StageStarted", "upscale"), ("StageEnded", "upscale")]
    assert manager.jobs() == []


def test_an_upscale_waits_for_a_running_generation(manager):
    box = {}
    with manager._generation_lock:  # what a generation holds while it runs
        thread = threading.Thread(target=lambda: box.setdefault("result", manager.upscale(UpscaleRequest(noise_image(8, 8), save=False))))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and [job.state for job in manager.jobs()] == ["waiting"]
    thread.join(10)
    assert box["result"].image.size == (16, 16)


def test_an_unwritable_outputs_folder_is_a_note_and_the_picture_is_still_given(make_manager, models_dir, tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    manager = make_manager(models_dir, outputs_dir=blocked)
    result = manager.upscale(UpscaleRequest(noise_image(8, 8), scale=2))
    assert result.path is None and result.image.size == (16, 16)
    assert len(result.notes) == 1 and result.notes[0].startswith("Could not save the image in")


def test_a_palette_picture_is_upscaled_as_rgb_and_blends_with_a_net(manager):
    palette = noise_image(24, 16, seed=9).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    result = manager.upscale(UpscaleRequest(palette, upscaler="Lanczos", scale=2, upscaler_2="tiny_x4", upscaler_2_visibility=0.5, save=False))
    rgb = palette.convert("RGB")
    models = manager.config.models_dir
    expected = Image.blend(rgb.resize((48, 32), Image.Resampling.LANCZOS), upscale_image(rgb, 2, "tiny_x4", models), 0.5)
    assert result.image.mode == "RGB" and np.array_equal(pixels(result.image), pixels(expected))
