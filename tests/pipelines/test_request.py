"""Request validation per family, with messages that say what to change; odd but valid input."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.errors import InvalidRequest, LikenessError
from pipelines.families import Family
from pipelines.request import MAX_PROMPT_CHARS, MAX_SEED, GenerationRequest, validate_request
from tests.tiny_models import tiny_request


def request(**fields) -> GenerationRequest:
    values = dict(model="m", prompt="p", steps=2, width=512, height=512, seed=1, cfg_scale=7.0, sampler="Euler")
    values.update(fields)
    return GenerationRequest(**values)


def problem(family: Family = Family.SD15, **fields) -> str:
    with pytest.raises(InvalidRequest) as raised:
        validate_request(request(**fields), family)
    return str(raised.value)


@pytest.mark.parametrize(
    ("family", "fields", "expected"),
    [
        (Family.SD15, {"width": 65}, "Width 65 is not a multiple of 8 (Stable Diffusion 1.5 needs multiples of 8); try 64."),
        (Family.SD15, {"height": 100}, "Height 100 is not a multiple of 8"),
        (Family.FLUX, {"width": 264, "sampler": "Flow Euler"}, "Width 264 is not a multiple of 16 (FLUX.1 needs multiples of 16)"),
        (Family.SD15, {"width": 4096}, "Width 4096 is outside 64-2048, the range Stable Diffusion 1.5 supports."),
        (Family.SDXL, {"height": 128}, "Height 128 is outside 256-4096"),
        (Family.FLUX, {"width": 4096, "sampler": "Flow Euler"}, "Width 4096 is outside 256-2048"),
        (Family.SD15, {"width": 0}, "Width 0 is outside 64-2048"),
        (Family.SD15, {"width": 512.0}, "Width must be a whole number, got 512.0."),
        (Family.SD15, {"steps": 0}, "Steps must be between 1 and 150, got 0."),
        (Family.SD15, {"steps": 10000}, "Steps must be between 1 and 150, got 10000."),
        (Family.SD15, {"steps": True}, "Steps must be a whole number, got True."),
        (Family.SD15, {"cfg_scale": -1.0}, "CFG scale must be between 0 and 30, got -1.0."),
        (Family.SD15, {"cfg_scale": float("nan")}, "CFG scale must be between 0 and 30, got nan."),
        (Family.SD15, {"cfg_scale": "7"}, "CFG scale must be a number, got '7'."),
        (Family.SD15, {"seed": -2}, f"Seed must be -1 (random) or between 0 and {MAX_SEED}, got -2."),
        (Family.SD15, {"seed": 2**32}, f"Seed must be -1 (random) or between 0 and {MAX_SEED}, got {2**32}."),
        (Family.SD15, {"seed": 1.5}, "Seed must be a whole number (-1 for random), got 1.5."),
        (Family.SD15, {"batch_size": 0}, "Batch size must be between 1 and 8, got 0."),
        (Family.SD15, {"batch_count": 101}, "Batch count must be between 1 and 100, got 101."),
        (Family.SD15, {"sampler": "Flow Euler"}, "Sampler 'Flow Euler' is not available for Stable Diffusion 1.5; choose one of: Euler, Euler a,"),
        (Family.FLUX, {"sampler": "Euler a"}, "Sampler 'Euler a' is not available for FLUX.1; choose one of: Flow Euler."),
        (Family.SD15, {"vae_dtype": "fp8"}, "VAE dtype must be one of auto, bf16, fp16, fp32, got 'fp8'."),
        (Family.SD15, {"prompt": None}, "The prompt must be text, got NoneType None."),
    ],
)
def test_invalid_fields_are_named_with_the_fix(family, fields, expected):
    assert expected in problem(family, **fields)


def test_all_problems_are_reported_at_once():
    message = problem(width=65, steps=0, seed=-5)
    assert "Width 65" in message and "Steps must be" in message and "Seed must be" in message


def test_limits_themselves_are_valid():
    for fields in ({"steps": 1}, {"steps": 150}, {"cfg_scale": 0}, {"cfg_scale": 30}, {"seed": 0}, {"seed": MAX_SEED},
                   {"width": 64, "height": 2048}, {"batch_size": 8, "batch_count": 100}):
        validated = validate_request(request(**fields), Family.SD15)
        assert validated.request.width == fields.get("width", 512)


def test_random_seed_is_drawn_in_range():
    validated = validate_request(request(seed=-1), Family.SD15, rng=random.Random(3))
    assert validated.seed == random.Random(3).randint(0, MAX_SEED)
    assert validated.request.seed == -1  # the request keeps what was asked; the validated seed is the real one
    assert validated.seeds() == [[validated.seed]]


def test_long_prompt_is_cut_with_a_warning():
    validated = validate_request(request(prompt="x" * 10_000, negative_prompt="y" * 5000), Family.SD15)
    assert len(validated.request.prompt) == MAX_PROMPT_CHARS
    assert len(validated.request.negative_prompt) == MAX_PROMPT_CHARS
    assert "The prompt was 10,000 characters; only the first 4,000 are used." in validated.warnings
    assert any(w.startswith("The negative prompt was 5,000 characters") for w in validated.warnings)


# -- through the manager ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"steps": 0}, "Steps"), ({"steps": 10000}, "Steps"), ({"width": 65}, "multiple of 8"), ({"cfg_scale": -3.0}, "CFG scale"),
     ({"seed": -2}, "Seed"), ({"seed": 2**32}, "Seed")],
)
def test_manager_refuses_bad_requests_before_loading(make_manager, fields, expected):
    manager = make_manager()
    with pytest.raises(InvalidRequest, match=expected):
        manager.generate(tiny_request("sd15", model=DEMO_MODEL_NAME, **fields))
    assert not manager.cache.records(), "a refused request must not load the model"


def test_family_limits_apply_to_the_chosen_model(shared_manager):
    with pytest.raises(InvalidRequest, match="outside 256-4096"):
        shared_manager.generate(tiny_request("sdxl", width=64, height=64))
    with pytest.raises(InvalidRequest, match="multiple of 16"):
        shared_manager.generate(tiny_request("flux", width=264, height=256))


def test_ten_thousand_character_prompt_generates_with_warnings(shared_manager):
    prompt = ("a portrait photo of an old man, " * 400)[:10_000]
    assert len(prompt) == 10_000
    result = shared_manager.generate(tiny_request("sd15", prompt=prompt, save=False))
    assert result.images and result.images[0].image.size == (64, 64)
    assert any("10,000 characters" in w and "4,000" in w for w in result.warnings)
    # SD 1.5 reads a long prompt whole, in 75-token chunks (A1111): no token limit to warn about.
    assert not any("tokens" in w and "ignored" in w for w in result.warnings)
    assert len(result.request.prompt) == MAX_PROMPT_CHARS


def test_unwritable_outputs_folder_still_returns_the_images(make_manager, tmp_path):
    blocker = tmp_path / "outputs-is-a-file"
    blocker.write_text("not a folder")
    manager = make_manager(outputs_dir=blocker)
    result = manager.generate(tiny_request("sd15", model=DEMO_MODEL_NAME, batch_size=2))
    assert len(result.images) == 2
    assert all(img.path is None for img in result.images)
    assert all(img.image.size == (64, 64) for img in result.images)
    saves = [w for w in result.warnings if "Could not save" in w]
    assert len(saves) == 1, "one warning, not one per image"
    assert str(blocker) in saves[0] and "writable outputs folder" in saves[0]
    assert blocker.read_text() == "not a folder"


def test_errors_are_user_facing_sentences(make_manager):
    manager = make_manager()
    with pytest.raises(LikenessError) as raised:
        manager.generate(tiny_request("sd15", model=DEMO_MODEL_NAME, steps=0, width=65))
    text = str(raised.value)
    assert "\n" not in text and "Traceback" not in text and text.endswith(".")


def test_outputs_numbering_never_overwrites(tmp_path):
    from PIL import Image

    from pipelines.outputs import save_image

    image = Image.new("RGB", (8, 8), "red")
    first = save_image(image, "p", tmp_path, 5)
    (first.parent / "00007-99.png").write_bytes(b"x")
    second = save_image(image, "p", tmp_path, 5)
    assert first.name == "00000-5.png"
    assert second.name == "00008-5.png"
    assert Path(first).read_bytes() != b"x"
