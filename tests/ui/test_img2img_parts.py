"""The img2img tab's and the shared form's pure parts, without a browser: coercion, sizes, payloads, Send, before/after."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from pipelines.errors import InvalidRequest, LikenessError
from pipelines.families import Family
from pipelines.images import MAX_PHOTO_PIXELS
from pipelines.request import GenerationRequest
from ui import generation_form
from ui.generate_tab import APP_FIELDS, FORM_FIELDS, IMG2IMG_FIELDS
from ui.img2img_tab import editor_sources, fitted_size, gallery_path, max_pixels, open_checked, parameters_of, upload_path


def test_generate_form_is_every_request_field_but_the_apps_and_img2img():
    names = [name for name in GenerationRequest.__dataclass_fields__ if name not in APP_FIELDS]
    assert list(FORM_FIELDS) == [n for n in names if n not in IMG2IMG_FIELDS]
    assert set(generation_form.HIRES_FIELDS + generation_form.DETAILER_FIELDS) <= set(FORM_FIELDS)


def test_coerce_form_makes_whole_numbers_and_names_empty_ones():
    request = generation_form.coerce_form({"model": "m", "prompt": "p", "steps": 20.0, "hires_steps": 4.0, "mask_blur": 8.0,
                                           "denoising_strength": 0.5})
    assert (request.steps, request.hires_steps, request.mask_blur) == (20, 4, 8)
    assert isinstance(request.hires_steps, int)
    with pytest.raises(LikenessError, match="Hires steps is empty"):
        generation_form.coerce_form({"model": "m", "prompt": "p", "hires_steps": None})
    with pytest.raises(LikenessError, match="Denoising strength is empty"):
        generation_form.coerce_form({"model": "m", "prompt": "p", "denoising_strength": None})


def test_fitted_size_rounds_down_to_the_family_steps_and_limits():
    assert fitted_size((640, 480), Family.SD15) == (640, 480)
    assert fitted_size((641, 487), Family.SD15) == (640, 480)
    assert fitted_size((5000, 30), Family.SD15) == (Family.SD15.spec.max_size, Family.SD15.spec.min_size)
    assert fitted_size((1000, 1000), Family.FLUX) == (992, 992)  # FLUX.1 needs multiples of 16


def test_max_pixels_follows_the_setting():
    assert max_pixels(SimpleNamespace(max_input_megapixels=2.5)) == 2_500_000
    assert max_pixels(SimpleNamespace()) == MAX_PHOTO_PIXELS


def test_open_checked_refuses_big_and_non_images_with_messages(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    with pytest.raises(InvalidRequest, match="300x300 pixels.*at most 50,000 pixels"):
        open_checked(big, 50_000, "The picture")
    text = tmp_path / "text.png"
    text.write_text("not a picture")
    with pytest.raises(InvalidRequest, match="not an image Likeness can read"):
        open_checked(text, MAX_PHOTO_PIXELS, "The uploaded file")
    assert open_checked(big, MAX_PHOTO_PIXELS, "The picture").size == (300, 300)


def test_payload_paths():
    assert upload_path({"path": "/a.png", "url": None}) == "/a.png"
    assert upload_path("/b.png") == "/b.png" and upload_path(None) is None
    gallery = [{"image": {"path": "/1.png"}, "caption": "seed 1"}, {"image": {"path": "/2.png"}, "caption": "seed 2"}]
    assert gallery_path(gallery, 1) == "/2.png"
    assert gallery_path(gallery, 7) == "/1.png"  # an index from an older run: the first image
    assert gallery_path([], 0) is None
    editor = SimpleNamespace(blob_storage={})
    assert editor_sources(editor, {"background": {"path": "/bg.png"}, "layers": [{"path": "/l.png"}], "composite": None}) == ("/bg.png", ["/l.png"])
    editor.blob_storage["x"] = SimpleNamespace(background=b"bg", layers=[b"l", None], composite=b"c")
    assert editor_sources(editor, {"id": "x", "background": None, "layers": []}) == (b"bg", [b"l"])
    assert editor_sources(editor, None) == (None, [])


def test_parameters_of_reads_the_text_and_tolerates_bad_files(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64")
    path = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert parameters_of(str(path)).startswith("a cat")
    (tmp_path / "bad.png").write_text("x")
    assert parameters_of(str(tmp_path / "bad.png")) == "" and parameters_of(None) == ""


def test_before_after_pairs_only_for_detailed_images():
    before, after = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), "white")
    result = SimpleNamespace(images=[SimpleNamespace(before_detail=before, path="/after.png", image=after),
                                     SimpleNamespace(before_detail=None, path=None, image=after),
                                     SimpleNamespace(path=None, image=after)])  # an engine without the field
    assert generation_form.before_after_pairs(result) == [(before, "/after.png")]
    panel, slider = generation_form.BeforeAfter.show([(before, "/after.png")])
    assert panel["visible"] is True and slider["value"] == (before, "/after.png")
    assert generation_form.BeforeAfter.show([])[0]["visible"] is False


def test_upscalers_listed_with_why_a_file_cannot_be_used(tmp_path):
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "broken.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "ESRGAN" / "old.pth").write_bytes(b"pickle")
    manager = SimpleNamespace(config=SimpleNamespace(models_dir=tmp_path, allow_pickle=False))
    choices = dict((value, label) for label, value in generation_form.upscaler_choices(manager))
    assert choices["Latent"] == "Latent" and choices["Lanczos"] == "Lanczos"
    assert choices["broken"].startswith("broken — cannot be used: ")
    assert "cannot be used" in choices["old"]
    assert generation_form.upscaler_problem(manager, "broken").startswith("Hires upscaler 'broken' cannot be used")
    assert generation_form.upscaler_problem(manager, "Lanczos") is None


def test_check_upscaler_refuses_an_unusable_file_only_when_hires_is_on(tmp_path):
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "broken.safetensors").write_bytes(b"not a safetensors file")
    manager = SimpleNamespace(config=SimpleNamespace(models_dir=tmp_path, allow_pickle=False))
    generation_form.check_upscaler(manager, GenerationRequest("m", "p", hires_scale=1.0, hires_upscaler="broken"))
    generation_form.check_upscaler(manager, GenerationRequest("m", "p", hires_scale="abc", hires_upscaler="broken"))  # validate_request says it
    with pytest.raises(LikenessError, match="'broken' cannot be used"):
        generation_form.check_upscaler(manager, GenerationRequest("m", "p", hires_scale=2.0, hires_upscaler="broken"))
