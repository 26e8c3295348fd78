"""A1111's parameters text: written by build_infotext, read back with A1111's own regex."""
from __future__ import annotations

from PIL import Image

from pipelines.infotext import PARAM_PATTERN, build_infotext, parse_infotext, quote, unquote
from pipelines.outputs import read_parameters
from tests.tiny_models import tiny_request

STANDARD_KEYS = ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "Version"]
OUR_KEYS = ["VAE dtype", "Denoiser dtype", "Stage times"]

TRICKY = {
    "Steps": 20,
    "Model": 'my "best", v2: final',
    "Multi line": "line1\nline2",
    "Back slash": "back\\slash,",
    "Trailing backslash": "a\\",
    "Empty": "",
    "Unicode": "ünïcödé, ok",
    "Colon": "Key: v",
    "Comma": "x,y",
    "Tab": "tab\there, x",
    "Size": "512x768",
}


def a1111_pairs(line: str) -> dict:
    """What A1111's reader gets from one parameters line (its regex, then its unquote)."""
    return {key: unquote(value.strip()) for key, value in PARAM_PATTERN.findall(line)}


def test_quote_only_when_needed():
    assert quote("Euler a") == "Euler a"
    assert quote(7) == "7"
    assert quote("a, b") == '"a, b"'
    assert quote("a: b") == '"a: b"'
    assert quote("a\nb") == '"a\\nb"'
    assert quote("ü, x") == '"ü, x"'  # not escaped to \u00fc


def test_values_with_separators_survive_a1111s_regex():
    text = build_infotext("a cat", "", TRICKY)
    last = text.split("\n")[-1]
    assert text.count("\n") == 1, "a newline inside a value must not break the parameters line"
    assert a1111_pairs(last) == {key: str(value) for key, value in TRICKY.items()}
    assert [key for key, _ in PARAM_PATTERN.findall(last)] == list(TRICKY)


def test_prompt_and_negative_prompt_round_trip():
    prompt = "a cat, wearing: a hat\nsecond line"
    negative = "blurry, bad: hands\nworse"
    parsed = parse_infotext(build_infotext(prompt, negative, {"Steps": 3, "Seed": 9, "Size": "64x128"}))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert (parsed["Steps"], parsed["Seed"], parsed["Size"]) == ("3", "9", "64x128")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "128")


def test_empty_negative_prompt_line_is_left_out_and_none_values_skipped():
    text = build_infotext("p", "", {"Steps": 1, "Model hash": None, "Seed": 2, "Size": "8x8"})
    assert "Negative prompt" not in text
    assert "Model hash" not in text
    assert parse_infotext(text)["Negative prompt"] == ""


def test_text_without_parameters_is_all_prompt():
    parsed = parse_infotext("just a prompt\nwith: two lines")
    assert parsed["Prompt"] == "just a prompt\nwith: two lines"
    assert "Steps" not in parsed


def test_a_value_wrapped_in_quotes_round_trips():
    """A value that itself starts and ends with '"' must be quoted, or the reader strips its quotes (regression)."""
    text = build_infotext("p", "", {"Steps": 1, "Seed": 2, "Model": '"quoted"'})
    assert parse_infotext(text)["Model"] == '"quoted"'



def test_png_written_by_the_manager_carries_parseable_parameters(shared_manager):
    prompt = "a portrait, studio light: soft\nsecond line"
    result = shared_manager.generate(tiny_request("sd15", prompt=prompt, negative_prompt="blurry, dark", seed=321, steps=3, cfg_scale=4.5))
    generated = result.images[0]
    with Image.open(generated.path) as png:
        text = read_parameters(png)
        assert png.info["parameters"] == text
    assert text == generated.infotext
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == "blurry, dark"
    assert parsed["Steps"] == "3"
    assert parsed["Sampler"] == "Euler"
    assert parsed["CFG scale"] == "4.5"
    assert parsed["Seed"] == "321"
    assert parsed["Size"] == "64x64"
    assert parsed["Model"] == "tiny-sd15"
    assert parsed["Version"].startswith("Likeness ")
    assert parsed["VAE dtype"] == "fp32"
    assert parsed["Denoiser dtype"] == "fp32"
    stage_times = parsed["Stage times"]
    for stage in ("text encode", "denoise", "VAE decode"):
        assert f"{stage} " in stage_times
    assert "save" not in stage_times

    # Our keys come after every standard A1111 key present.
    keys = [key for key, _ in PARAM_PATTERN.findall(text.split("\n")[-1])]
    standard = [k for k in keys if k in STANDARD_KEYS]
    extra = [k for k in keys if k not in STANDARD_KEYS]
    assert [k for k in extra if k in OUR_KEYS] == OUR_KEYS
    assert standard == [k for k in STANDARD_KEYS if k in keys]
    assert {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model"} <= set(standard)
    assert max(keys.index(k) for k in standard) < min(keys.index(k) for k in extra)


def test_infotext_for_each_image_of_a_batch_has_its_own_seed(shared_manager):
    result = shared_manager.generate(tiny_request("sdxl", seed=50, batch_size=2, save=False))
    assert [parse_infotext(img.infotext)["Seed"] for img in result.images] == ["50", "51"]
    assert parse_infotext(result.images[0].infotext)["Size"] == "256x256"


# --- The linear reader: A1111's results, without its regex's quadratic time on hostile text ---

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipelines.infotext import param_pairs  # noqa: E402

# Every character class the pattern treats specially, plus Unicode letters/digits/spaces it must
# classify exactly as `\w` and `\s` do.
PATTERN_ALPHABET = st.sampled_from(list('ab Z_9-/:,"\\\n\t\r\x0bé²\u00a0\u2028\u3000\x1c.'))


@settings(max_examples=3000, deadline=None)
@given(st.text(PATTERN_ALPHABET, max_size=40))
def test_param_pairs_equals_a1111_regex_on_any_text(line):
    assert param_pairs(line) == PARAM_PATTERN.findall(line)


KEY = st.text(st.sampled_from(list("abcXYZ_09 -/é")), min_size=1, max_size=12)
VALUE = st.one_of(st.text(st.sampled_from(list('ab ,:"\\\n7x')), max_size=12), st.integers(), st.floats(allow_nan=False))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(KEY, VALUE), max_size=8), st.text(max_size=20))
def test_parse_infotext_equals_a1111_regex_on_written_parameters(params, prompt):
    text = build_infotext(prompt, "", dict(params))
    last = text.strip().split("\n")[-1]
    assert param_pairs(last) == PARAM_PATTERN.findall(last)


def test_one_long_line_parses_in_linear_time():
    import time

    for hostile in ("x" * 2 * 2**20, "a b" * 700_000 + ":", '"' * 2**20, "k: " + '"\\' * 2**20, ", " * 2**20):
        started = time.perf_counter()
        parsed = parse_infotext(hostile)
        seconds = time.perf_counter() - started
        assert seconds < 2, f"{len(hostile):,} characters took {seconds:.1f} s"
        assert isinstance(parsed["Prompt"], str)
