"""Bad input, every way it comes in: the engine, the command line and the Gradio API.

Each kind ends in a message that names the field and the fix (InvalidRequest/LikenessError in the
engine, `⚠ ...` in the UI and the API, exit code 2 and one `error:` line in the CLI), never a
traceback, and the app keeps serving. `BAD_REQUESTS`, `BAD_CLI` and the API cases below list them.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.errors import InvalidRequest, LikenessError, ModelLoadError, ModelNotFound
from pipelines.families import Family
from pipelines.request import GenerationRequest, ValidatedRequest, validate_request
from tests.pipelines.test_images import png_chunk, with_text_after_pixels, write_huge_png

ROOT = Path(__file__).resolve().parents[2]
DEMO = dict(model=DEMO_MODEL_NAME, prompt="a cat", steps=2, width=64, height=64, seed=1, save=False)

# (what, fields over DEMO, part of the message). One kind of bad input each.
BAD_REQUESTS = [
    ("prompt with a lone surrogate", {"prompt": "a \udcff cat"}, "The prompt has characters that are not valid Unicode"),
    ("prompt as non-UTF-8 bytes", {"prompt": b"\xff\xfe cat"}, "The prompt must be text, got bytes"),
    ("prompt None", {"prompt": None}, "The prompt must be text"),
    ("prompt a number", {"prompt": 5}, "The prompt must be text, got int"),
    ("negative prompt with a lone surrogate", {"negative_prompt": "\ud800"}, "The negative prompt has characters"),
    ("steps None", {"steps": None}, "Steps must be a whole number, got None"),
    ("steps text", {"steps": "abc"}, "Steps must be a whole number, got 'abc'"),
    ("steps a bool", {"steps": True}, "Steps must be a whole number, got True"),
    ("steps 0", {"steps": 0}, "Steps must be between 1 and 150, got 0"),
    ("steps too many", {"steps": 151}, "Steps must be between 1 and 150"),
    ("steps a fraction", {"steps": 2.5}, "Steps must be a whole number, got 2.5"),
    ("seed NaN", {"seed": math.nan}, "Seed must be a whole number (-1 for random), got nan"),
    ("seed below -1", {"seed": -2}, "Seed must be -1 (random) or between 0 and 4294967295"),
    ("seed above 2**32-1", {"seed": 2**32}, "Seed must be -1 (random) or between 0 and 4294967295"),
    ("seed with 400 digits", {"seed": 10**400}, "got a number of about 400 digits"),
    ("seed with 5000 digits (past repr's limit)", {"seed": -(10**5000)}, "got a number of about 5,000 digits"),
    ("CFG NaN", {"cfg_scale": math.nan}, "CFG scale must be between 0 and 30, got nan"),
    ("CFG infinite", {"cfg_scale": math.inf}, "CFG scale must be between 0 and 30, got inf"),
    ("CFG negative", {"cfg_scale": -1.0}, "CFG scale must be between 0 and 30"),
    ("CFG as text", {"cfg_scale": "7"}, "CFG scale must be a number, got '7'"),
    ("width 0", {"width": 0}, "Width 0 is outside 64-2048"),
    ("width negative", {"width": -64}, "Width -64 is outside 64-2048"),
    ("width not a multiple of 8", {"width": 65}, "Width 65 is not a multiple of 8"),
    ("width 10**30", {"width": 10**30}, "is outside 64-2048"),
    ("width a float", {"width": 64.0}, "Width must be a whole number, got 64.0"),
    ("height None", {"height": None}, "Height must be a whole number, got None"),
    ("sampler None", {"sampler": None}, "Sampler None is not available"),
    ("sampler unknown", {"sampler": "Euler c"}, "Sampler 'Euler c' is not available for Stable Diffusion 1.5; choose one of"),
    ("sampler a list", {"sampler": ["Euler"]}, "Sampler ['Euler'] is not available"),
    ("schedule type unknown", {"schedule_type": "Turbo"}, "Schedule type must be one of: Automatic, Uniform, Karras, Exponential, "
                                                          "Polyexponential, SGM Uniform, KL Optimal, Align Your Steps, Simple, Normal, "
                                                          "DDIM, Beta; got 'Turbo'"),
    ("schedule type a list", {"schedule_type": ["Karras"]}, "Schedule type must be one of"),
    ("schedule type the sampler lacks", {"sampler": "DDIM", "schedule_type": "Karras"},
     "Schedule type Karras is not available with DDIM"),
    ("batch size 0", {"batch_size": 0}, "Batch size must be between 1 and 8"),
    ("batch size 10**30", {"batch_size": 10**30}, "Batch size must be between 1 and 8"),
    ("batch count 101", {"batch_count": 101}, "Batch count must be between 1 and 100"),
    ("VAE dtype unknown", {"vae_dtype": "fp64"}, "VAE dtype must be one of auto, bf16, fp16, fp32, got 'fp64'"),
    ("VAE dtype unhashable", {"vae_dtype": ["fp16"]}, "VAE dtype must be one of"),
    ("DeepCache interval 0", {"deepcache_interval": 0}, "DeepCache interval must be between 1 and 20"),
    ("DeepCache with 1 step", {"deepcache_interval": 3, "steps": 1}, "DeepCache (N = 3) needs at least 2 steps"),
    ("DeepCache branch negative", {"deepcache_branch": -1}, "DeepCache branch must be between 0 and 8"),
    ("DeepCache schedule unknown", {"deepcache_schedule": "cubic"}, "DeepCache schedule must be uniform or quadratic"),
    ("block cache unknown", {"flux_cache": "on"}, "FLUX block cache must be off, first-block, taylorseer or magcache"),
    ("block cache on SD 1.5", {"flux_cache": "first-block"}, "The FLUX block caches work on FLUX.1 models"),
    ("block cache threshold NaN", {"flux_cache_threshold": math.nan}, "threshold must be between 0 and 1, got nan"),
    ("block cache threshold a bool", {"flux_cache_threshold": True}, "threshold must be between 0 and 1, got True"),
    ("approximate cache as text", {"approximate_cache": "yes"}, "Approximate cache must be true or false"),
    ("save as text", {"save": "no"}, "Save must be true or false, got 'no'"),
    ("model None", {"model": None}, "The model must be given by its name (text), got None"),
    ("model a list", {"model": ["x"]}, "The model must be given by its name (text), got ['x']"),
    ("model unknown", {"model": "nope"}, "No model named 'nope'"),
    ("model unusable (damaged file)", {"model": "broken"}, "broken.safetensors is not a valid safetensors file"),
]


@pytest.fixture(scope="module")
def manager(tmp_path_factory, demo_cache_dir):
    from pipelines.manager import ManagerConfig, PipelineManager

    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "models").mkdir()
    (root / "models" / "broken.safetensors").write_bytes(b"not a model at all")
    return PipelineManager(ManagerConfig(models_dir=root / "models", outputs_dir=root / "outputs", cache_dir=demo_cache_dir,
                                         device="cpu", include_hf_cache=False))


@pytest.mark.parametrize("what, fields, message", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_engine_refuses_with_a_message_before_loading(manager, what, fields, message):
    with pytest.raises(LikenessError) as caught:
        manager.generate(GenerationRequest(**{**DEMO, **fields}))
    assert message in str(caught.value)
    assert len(str(caught.value)) < 400, "a huge value is cut short in the message"
    assert not manager.cache.records(), "the model was loaded for a request that was refused"


@pytest.mark.parametrize("name, error", [("broken", ModelLoadError), (None, ModelNotFound), (["x"], ModelNotFound), ({"a": 1}, ModelNotFound)])
def test_load_model_refuses_unusable_entries_and_names_that_are_not_text(manager, name, error):
    with pytest.raises(error):
        manager.load(name)


# -- fuzzing validate_request: any value of any type in any field -------------------------------

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**5000), max_value=10**5000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.binary(max_size=10),
    st.sampled_from(["\ud800", "a\udcffb", "", " ", "Euler a", "auto", "uniform", "off", "first-block", "512", "nan"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.decimals(allow_nan=True), st.fractions(), st.complex_numbers(allow_nan=True),
)
FIELDS = [name for name in GenerationRequest.__dataclass_fields__ if name != "model"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, min_size=1, max_size=4), st.sampled_from(list(Family)))
def test_validate_request_on_any_values_is_valid_or_invalid_request(fields, family):
    request = GenerationRequest(**{**DEMO, **fields})
    try:
        validated = validate_request(request, family)
    except InvalidRequest as error:
        assert str(error) and len(str(error)) < 2000
        return
    assert isinstance(validated, ValidatedRequest)
    cleaned = validated.request
    assert isinstance(cleaned.prompt, str) and isinstance(cleaned.prompt.encode("utf-8"), bytes)
    for name in ("steps", "width", "height", "batch_size", "batch_count", "deepcache_interval", "deepcache_branch"):
        assert type(getattr(cleaned, name)) is int, name
    assert 0 <= validated.seed <= 2**32 - 1 and math.isfinite(cleaned.cfg_scale)
    assert type(cleaned.save) is bool and type(cleaned.approximate_cache) is bool


# -- the command line: exit 2, one `error:` line, no traceback ---------------------------------

BAD_CLI = [
    ("--width 0", ["--width", "0"], "argument --width: 0 is not a size"),
    ("--width negative", ["--width", "-8"], "argument --width: -8 is not a size"),
    ("--height not a number", ["--height", "abc"], "argument --height: 'abc' is not a whole number of pixels"),
    ("--steps 1 with --deepcache 3", ["--steps", "1", "--deepcache", "3"], "DeepCache (N = 3) needs at least 2 steps"),
    ("--cfg nan", ["--cfg", "nan"], "CFG scale must be between 0 and 30, got nan"),
    ("--seed with 400 digits", ["--seed", "9" * 400], "Seed must be -1 (random) or between 0 and 4294967295"),
    ("--prompt with a lone surrogate", ["--prompt", "a \udcff cat"], "The prompt has characters that are not valid Unicode"),
    ("--model unusable", ["--model", "broken"], "broken.safetensors is not a valid safetensors file"),
]


@pytest.mark.parametrize("what, args, message", BAD_CLI, ids=[case[0] for case in BAD_CLI])
def test_cli_bad_input_exits_2_with_the_message(manager, tmp_path, demo_cache_dir, capsys, what, args, message):
    import app

    argv = ["generate", "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64", *args,
            "--models-dir", str(manager.config.models_dir), "--outputs-dir", str(tmp_path / "outputs"),
            "--cache-dir", str(demo_cache_dir), "--settings", str(tmp_path / "settings.json")]
    try:
        code = app.main(argv)
    except SystemExit as exit_:  # argparse refuses the flag itself
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()


def test_cli_prompt_bytes_that_are_not_utf8(tmp_path, demo_cache_dir, model_zoo):
    """A real process: the OS hands Python bytes; they arrive as lone surrogates (surrogateescape)."""
    from tests.tiny_models import copy_model

    copy_model(model_zoo["sd15"], tmp_path / "models", "tiny-sd15")
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(tmp_path), "LIKENESS_SETTINGS": str(tmp_path / "s.json"),
           "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable.encode(), str(ROOT / "app.py").encode(), b"generate", b"--prompt", b"caf\xe9 \xff", b"--steps", b"2", b"--model", b"tiny-sd15",
            b"--models-dir", str(tmp_path / "models").encode(), b"--cache-dir", str(demo_cache_dir).encode()]
    completed = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=300)
    err = completed.stderr.decode("utf-8", "replace")
    assert completed.returncode == 2, err
    assert "error: The prompt has characters that are not valid Unicode text (at position 3: '\\udce9')" in err
    assert "Traceback" not in err


# -- PNG Info, engine side: any file is a message, a long line is linear time --------------------

def png_with_parameters(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def bad_png_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, part of the message)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = png_with_parameters(folder / "good.png", "a cat\nSteps: 3, Seed: 4, Size: 8x8")
    files = {
        "empty file": (b"", "not an image Likeness can read"),
        "text file": (b"just text", "not an image Likeness can read"),
        "PNG signature only": (b"\x89PNG\r\n\x1a\n", "This PNG is damaged"),
        "PNG cut after its header": (good.read_bytes()[:40], "no generation parameters"),
        "PNG without parameters": (None, "no generation parameters"),
        "zTXt that is not zlib": (with_text_after_pixels(b"zTXt", b"parameters\x00\x00garbage"), "no generation parameters"),
    }
    out = {}
    for name, (content, message) in files.items():
        path = folder / f"{name.replace(' ', '_')}.png"
        if content is None:
            Image.new("RGB", (8, 8)).save(path)
        else:
            path.write_bytes(content)
        out[name] = (path, message)
    return out


def test_png_info_bad_files_are_messages(tmp_path):
    from ui.png_info_tab import read_image_parameters

    for name, (path, message) in bad_png_files(tmp_path).items():
        text, rows, shown = read_image_parameters(str(path))
        assert shown.startswith("⚠") and message in shown, (name, shown)
        assert text == "" and rows == []


def test_png_info_huge_one_line_and_huge_image(tmp_path):
    from ui.png_info_tab import generate_form_values, read_image_parameters

    long_line = png_with_parameters(tmp_path / "line.png", "x" * 2 * 2**20)
    started = time.perf_counter()
    text, _rows, message = read_image_parameters(str(long_line))
    assert time.perf_counter() - started < 2
    assert len(text) == 64 * 1024 and "only the first 65,536 were read" in message

    huge = tmp_path / "huge.png"
    write_huge_png(huge, text_chunks=png_chunk(b"tEXt", b"parameters\x00a cat\nSteps: 3, Seed: 4, Size: 8x8"))
    text, rows, message = read_image_parameters(str(huge))
    assert ["Steps", "3"] in rows and message == "Read 5 parameters."

    values, notes = generate_form_values("a cat\nSteps: abc, CFG scale: nan, Seed: 1e999, Size: 8x8", None, {})
    assert "steps" not in values and "cfg_scale" not in values and "seed" not in values
    assert len(notes) == 3 and all("is not a number; left as it was" in note for note in notes)


def test_huge_reference_photo_is_refused_without_decoding(tmp_path):
    import psutil

    from pipelines.face.detect import FaceError, load_reference_image

    huge = tmp_path / "huge.png"
    write_huge_png(huge)
    before = psutil.Process().memory_info().rss
    with pytest.raises(FaceError, match=r"13000x13000 pixels \(169 megapixels\).*at most 100 megapixels"):
        load_reference_image(huge)
    assert psutil.Process().memory_info().rss - before < 50 * 2**20


# -- the Gradio API: one app for the module -----------------------------------------------------

@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    from tests.ui.conftest import start_app

    root = tmp_path_factory.mktemp("api-bad-inputs")
    (root / "models").mkdir()
    (root / "models" / "broken.safetensors").write_bytes(b"not a model at all")
    info, demo = start_app(root)
    yield info
    demo.close()


@pytest.fixture(scope="module")
def client(api_app):
    from gradio_client import Client

    return Client(api_app["url"], verbose=False)


FORM = [DEMO_MODEL_NAME, "a cat", "", 2, 7.0, 1, 64, 64, "Euler", 1, 1, "auto", 1, 0, "uniform", "off", 0.08, False,
        1.0, "Latent", 0, 0.7, False, 0.4, 0, "", "",  # hires fix (off) and face detailer (off)
        1, [], -1, 0.0, False, "", "", "Automatic",  # clip skip 1, no styles, no variation seed, no tiling, no hires prompts, own VAE
        "Automatic", "", "", 0, 0,  # schedule type; hires sampler and schedule type: the first pass's; no seed resize
        "",  # hires checkpoint: the first pass's
        "None", 0.8,  # no refiner
        0.0]  # no token merging
FORM_INDEX = {"model": 0, "prompt": 1, "steps": 3, "cfg_scale": 4, "seed": 5, "width": 6, "sampler": 8, "batch_size": 9,
              "schedule_type": 35}


def raw_call(url: str, api_name: str, data: list, timeout: float = 120, expect: str = "complete"):
    """POST the inputs as JSON text (NaN and lone surrogates are valid there; gradio_client cannot send them);
    the outputs, or with expect="error" the error message."""
    body = json.dumps({"data": data}, allow_nan=True)  # ensure_ascii: "\udcff" travels as its escape
    with httpx.Client(base_url=url, timeout=timeout) as http:
        event = http.post(f"/gradio_api/call/{api_name}", content=body, headers={"content-type": "application/json"}).json()["event_id"]
        stream = http.get(f"/gradio_api/call/{api_name}/{event}").text
    events = [line for line in stream.splitlines() if line.startswith(("event:", "data:"))]
    assert events[-2] == f"event: {expect}", stream
    data = json.loads(events[-1][len("data:"):])
    return data["error"] if expect == "error" else data


@pytest.mark.parametrize("field, value, message", [
    ("steps", None, "Steps is empty; enter a number."),
    ("steps", "abc", "Steps must be a whole number, got 'abc'."),
    ("seed", "nan", "Seed must be a whole number (-1 for random), got 'nan'."),
    ("width", 0, "Width 0 is outside 64-2048"),
    ("model", None, "The model must be given by its name (text), got None."),
    ("model", "broken", "broken.safetensors is not a valid safetensors file"),
    ("prompt", 5, "The prompt must be text, got int 5."),
    ("sampler", ["Euler"], "Sampler ['Euler'] is not available"),
    ("schedule_type", None, "Schedule type must be one of: Automatic, Uniform, Karras, Exponential, Polyexponential, SGM Uniform, "
                            "KL Optimal, Align Your Steps, Simple, Normal, DDIM, Beta; got None"),
    ("batch_size", 10**30, "Batch size must be between 1 and 8"),
])
def test_api_generate_bad_fields_are_messages(client, field, value, message):
    form = list(FORM)
    form[FORM_INDEX[field]] = value
    readout = client.predict(*form, api_name="/generate")[0]
    assert readout.startswith("⚠") and message in readout, readout


@pytest.mark.parametrize("field, value, message", [
    ("seed", math.nan, "Seed must be a whole number (-1 for random), got nan."),
    ("cfg_scale", math.inf, "CFG scale must be between 0 and 30, got inf."),
    ("prompt", "a \udcff cat", "The prompt has characters that are not valid Unicode"),
])
def test_api_generate_nan_and_lone_surrogates_sent_as_raw_json(api_app, field, value, message):
    form = list(FORM)
    form[FORM_INDEX[field]] = value
    readout = raw_call(api_app["url"], "generate", form)[0]
    assert readout.startswith("⚠") and message in readout, readout


def face_and_experiment_inputs(endpoint: str, form: list) -> list:
    from gradio_client import handle_file

    from pipelines.bench.tiny_face import HANKS

    if endpoint == "experiment":
        return ["seed", "5, 6", "", "", "", "", 0, False, 1, False, [], 0.8, 0, *form]
    return [[handle_file(str(HANKS))], "", 0.8, 0, 20, "v2", 1, 1, *form]


@pytest.mark.parametrize("endpoint", ["experiment", "generate_face"])
@pytest.mark.parametrize("field, value, message", [
    ("steps", None, "Steps is empty; enter a number."),
    ("steps", "abc", "Steps must be a number, got 'abc'."),
    ("seed", "nan", "Seed (-1 = random) must be a number, got 'nan'."),
    ("width", [64], "Width must be a number, got [64]."),
])
def test_api_face_and_experiment_number_fields_are_messages(client, endpoint, field, value, message):
    """Gradio checks these inputs before the handler runs; the message still names the field."""
    from gradio_client.exceptions import AppError

    form = list(FORM)
    form[FORM_INDEX[field]] = value
    with pytest.raises(AppError) as caught:
        client.predict(*face_and_experiment_inputs(endpoint, form), api_name=f"/{endpoint}")
    assert str(caught.value) == message


@pytest.mark.parametrize("endpoint", ["experiment", "generate_face"])
def test_api_face_and_experiment_nan_as_raw_json(api_app, endpoint):
    form = list(FORM)
    form[FORM_INDEX["cfg_scale"]] = math.nan
    inputs = face_and_experiment_inputs(endpoint, form)
    if endpoint == "generate_face":
        inputs[0] = []  # no upload through raw JSON; the number check comes first anyway
    assert raw_call(api_app["url"], endpoint, inputs, expect="error") == "CFG scale must be a finite number, got nan."


@pytest.mark.parametrize("name, message", [
    ("broken", "broken.safetensors is not a valid safetensors file"),
    (None, "The model must be given by its name (text), got None."),
    ("no such model", "No model named 'no such model'"),
])
def test_api_load_model_bad_names_are_messages(client, name, message):
    assert message in client.predict(name, api_name="/load_model")[0]


def test_api_png_info_bad_and_huge_files(client, api_app, tmp_path):
    from gradio_client import handle_file

    for name, (path, message) in bad_png_files(tmp_path).items():
        _text, _table, shown = client.predict(handle_file(str(path)), api_name="/png_info")
        assert shown.startswith("⚠") and message in shown, (name, shown)

    # 2 MiB of one line: read in linear time, off the event loop; the page keeps answering meanwhile.
    long_line = png_with_parameters(tmp_path / "line.png", "x" * 2 * 2**20)
    job = client.submit(handle_file(str(long_line)), api_name="/png_info")
    slowest = 0.0
    while not job.done():
        started = time.perf_counter()
        assert httpx.get(api_app["url"] + "/", timeout=10).status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
    text, _table, shown = job.result(timeout=60)
    assert len(text) == 64 * 1024 and "only the first 65,536 were read" in shown
    assert slowest < 2, f"GET / took {slowest:.1f} s while PNG Info ran"

    huge = tmp_path / "huge.png"
    write_huge_png(huge, text_chunks=png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(b"a cat\nSteps: 3, Seed: 4, Size: 8x8")))
    _text, table, shown = client.predict(handle_file(str(huge)), api_name="/png_info")
    assert shown == "Read 5 parameters." and ["Steps", "3"] in table["data"]


@pytest.mark.parametrize("axis, values, message", [
    ("steps", "1-" + "9" * 400, "is out of range: numbers must be finite"),
    ("cfg_scale", "1, " * 50_000, "axis values are 150,000 characters long; at most 16,384 are read"),
    ("steps", "1-5 [" + "9" * 5000 + "]", "is out of range"),
    ("cfg_scale", "nan", "'nan' is out of range"),
])
def test_api_experiment_bad_axes_are_messages(client, axis, values, message):
    from ui.generate_tab import FORM_FIELDS

    start = GenerationRequest(DEMO_MODEL_NAME, "api experiment", steps=2, seed=5, width=64, height=64, sampler="Euler", vae_dtype="fp32")
    form = tuple(getattr(start, name) for name in FORM_FIELDS)
    progress = client.predict(axis, values, "", "", "", "", 0, False, 1, False, [], 0.8, 0, *form, api_name="/experiment")[0]
    assert progress.startswith("⚠") and message in progress and len(progress) < 400, progress[:300]


def test_the_app_still_serves_after_all_of_it(client):
    readout = client.predict(*FORM, api_name="/generate")[0]
    assert "done" in readout
