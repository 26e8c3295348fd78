"""A1111's X/Y/Z value syntax: every form, mixed lists, and the messages for bad values."""
from __future__ import annotations

import pytest

from pipelines.errors import InvalidRequest
from pipelines.experiments.axes import MAX_VALUES_PER_AXIS, SETTINGS, find_setting, parse_values

STEPS, CFG, SAMPLER, SIZE, PROMPT = (SETTINGS[k] for k in ("steps", "cfg_scale", "sampler", "size", "prompt"))


@pytest.mark.parametrize("text, expected", [
    ("10,20,30", [10, 20, 30]),
    (" 10 , 20 ", [10, 20]),
    ("1-5", [1, 2, 3, 4, 5]),
    ("5-1", [5, 4, 3, 2, 1]),
    ("1-9 (+2)", [1, 3, 5, 7, 9]),
    ("1-10 (+3)", [1, 4, 7, 10]),
    ("1-8 (+3)", [1, 4, 7]),
    ("10-1 (-3)", [10, 7, 4, 1]),
    ("1-10 [4]", [1, 4, 7, 10]),
    ("1-3, 10, 20-22", [1, 2, 3, 10, 20, 21, 22]),
    ("7", [7]),
])
def test_int_forms(text, expected):
    assert parse_values(STEPS, text) == expected


def test_negative_numbers_and_ranges():
    seed = SETTINGS["seed"]
    assert parse_values(seed, "-1") == [-1]
    assert parse_values(seed, "-3--1") == [-3, -2, -1]


@pytest.mark.parametrize("text, expected", [
    ("0.5-1 [3]", [0.5, 0.75, 1.0]),
    ("1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),  # no float drift: 0.30000000000000004 would drop the last value
    ("7, 7.5, .5", [7.0, 7.5, 0.5]),
    ("3-1 [3]", [3.0, 2.0, 1.0]),
    ("4 - 6", [4.0, 5.0, 6.0]),
])
def test_float_forms(text, expected):
    assert parse_values(CFG, text) == pytest.approx(expected)
    assert all(isinstance(v, float) for v in parse_values(CFG, text))


def test_text_values_use_csv_quoting_and_canonical_choices():
    assert parse_values(PROMPT, 'a cat, "a dog, running", b') == ["a cat", "a dog, running", "b"]
    assert parse_values(SAMPLER, "euler a, DPM++ 2M Karras") == ["Euler a", "DPM++ 2M Karras"]
    assert parse_values(SETTINGS["vae_dtype"], "FP32,bf16") == ["fp32", "bf16"]


def test_sizes():
    assert parse_values(SIZE, "512x768, 1024, 640 X 480") == [(512, 768), (1024, 1024), (640, 480)]


def test_settings_are_found_by_key_or_label():
    assert find_setting("cfg_scale") is CFG
    assert find_setting("CFG scale") is CFG
    with pytest.raises(InvalidRequest, match="no experiment setting 'colour'"):
        find_setting("colour")


@pytest.mark.parametrize("setting, text, message", [
    (STEPS, "ten", r"Steps axis value 'ten' is not a whole number"),
    (STEPS, "1.5", r"'1.5' is not a whole number"),
    (STEPS, "", "has no values"),
    (STEPS, " , ", "has no values"),
    (STEPS, "1-5 (+0)", "step of 0"),
    (STEPS, "1-5 (-1)", "steps away from its end"),
    (STEPS, "1-5 [0]", "asks for 0 values"),
    (STEPS, "1-100000", f"at most {MAX_VALUES_PER_AXIS}"),
    (CFG, "inf", "'inf' is out of range: numbers must be finite"),
    (CFG, "nan", "'nan' is out of range"),
    (STEPS, "1-" + "9" * 400, "is out of range: numbers must be finite, between -1,000,000,000,000,000 and"),
    (CFG, "1-" + "9" * 400 + " [3]", "is out of range"),
    (STEPS, "1-2 (+1" + "0" * 400 + ")", "is out of range"),
    (STEPS, "1-5 [" + "9" * 5000 + "]", "is out of range"),
    (STEPS, "9" * 5000, "is out of range"),
    (SIZE, "1x" + "9" * 400, "is out of range"),
    (STEPS, "1, " * 50_000, "axis values are 150,000 characters long; at most 16,384 are read"),
    (STEPS, '"' + "x" * 200_000 + '"', "at most 16,384 are read"),
    (CFG, "0.5-1 [x]", r"'0.5-1 \[x\]' is not a number or a range"),
    (SAMPLER, "Euler b", "'Euler b' is not one of: Euler, Euler a"),
    (SIZE, "512by512", "not a size"),
])
def test_bad_values_name_the_axis_and_the_value(setting, text, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_values(setting, text)
    assert len(str(caught.value)) < 300, "a huge value is cut short in the message"


def test_prompt_sr_values_pair_the_search_string_with_each_value():
    sr = SETTINGS["prompt_sr"]
    assert find_setting("Prompt S/R") is sr
    values = parse_values(sr, 'dog, cat, "red fox, running"')
    assert values == [("dog", "dog"), ("dog", "cat"), ("dog", "red fox, running")]
    assert [sr.describe(v) for v in values] == ["Prompt S/R: dog", "Prompt S/R: cat", "Prompt S/R: red fox, running"]
    with pytest.raises(InvalidRequest, match="Prompt S/R axis has no values"):
        parse_values(sr, " , ")


def test_lora_weight_values_are_numbers():
    weight = SETTINGS["lora_weight"]
    assert parse_values(weight, "0-1 [3], -0.5") == [0.0, 0.5, 1.0, -0.5]
    assert weight.describe(0.5) == "LoRA weight: 0.5"
    with pytest.raises(InvalidRequest, match="LoRA weight axis value 'strong' is not a number"):
        parse_values(weight, "strong")


def test_prompt_order_values_are_every_order_of_the_fragments():
    order = SETTINGS["prompt_order"]
    assert find_setting("Prompt order") is order
    values = parse_values(order, 'red, "at dusk, calm", big')
    assert len(values) == 6 and values[0] == ("red", "at dusk, calm", "big") and len(set(values)) == 6
    assert ("big", "red", "at dusk, calm") in values
    assert order.describe(values[0]) == "Prompt order: red, at dusk, calm, big"
    assert len(parse_values(order, "a, b, c, d")) == 24
    with pytest.raises(InvalidRequest, match=r"has 5 fragments \(120 orders\); at most 4 fit on an axis \(24 orders\)"):
        parse_values(order, "a, b, c, d, e")
    with pytest.raises(InvalidRequest, match=r"has 8,000 fragments \(billions of orders\)"):
        parse_values(order, ",".join(["x"] * 8000))  # 8,000! is never computed in full
    with pytest.raises(InvalidRequest, match="names 'red' twice"):
        parse_values(order, "red, big, red")
