"""A1111's "Prompts from file or textbox": each line a prompt or `--tag value` options over the form's settings; every
line checked before anything runs; A1111's seed options and prompt position."""
from __future__ import annotations

import dataclasses
import random

import pytest

from pipelines.errors import InvalidRequest
from pipelines.prompt_lines import MAX_FILE_BYTES, line_requests, parse_line, parse_lines, read_prompt_file
from pipelines.request import GenerationRequest

BASE = GenerationRequest(model="demo", prompt="watercolor", negative_prompt="blurry", steps=20, seed=-1, batch_size=2, batch_count=3)


def test_a_plain_line_is_a_prompt_and_options_set_fields():
    assert parse_line("a red circle", 1).fields == {"prompt": "a red circle"}
    line = parse_line('--prompt "a cat" on a mat --negative_prompt dog --steps 30 --cfg_scale 6.5 --seed 5 --sampler_name "DPM++ 2M" '
                      '--width 64 --height 96 --n_iter 2 --batch_size 1 --styles "warm, film" --tiling true --do_not_save_samples true', 3)
    assert line.fields == {"prompt": "a cat on a mat", "negative_prompt": "dog", "steps": 30, "cfg_scale": 6.5, "seed": 5,
                           "sampler": "DPM++ 2M", "width": 64, "height": 96, "batch_count": 2, "batch_size": 1, "styles": ("warm", "film"),
                           "tiling": True, "save": False}
    noted = parse_line("--prompt x --outpath_samples /tmp/elsewhere --restore_faces true", 4)
    assert noted.fields == {"prompt": "x"}
    assert noted.notes == ("line 4: --outpath_samples is not used here", "line 4: --restore_faces is not used here")


@pytest.mark.parametrize("text, message", [
    ("ok\n\n--stpes 30", "Line 3: unknown option --stpes; A1111's are: --sd_model"),
    ("--steps thirty", "Line 1: --steps must be a number, got 'thirty'."),
    ("--steps", "Line 1: --steps needs a value."),
    ('--prompt "unclosed', "Line 1: No closing quotation"),
    ("a cat --steps 3", "Line 1: 'a' should be a --tag"),
    ("\n  \n", "The list of prompt inputs is empty"),
])
def test_a_bad_line_is_refused_naming_it(text, message):
    with pytest.raises(InvalidRequest, match=message.replace("(", "\\(").replace(")", "\\)")):
        parse_lines(text)


def test_prompts_join_the_forms_at_the_chosen_end():
    lines = parse_lines("a cat\n--prompt a dog --negative_prompt noise\n--steps 5")
    start = line_requests(BASE, lines)
    assert [(r.prompt, r.negative_prompt, r.steps) for r in start] == [
        ("a cat watercolor", "blurry", 20), ("a dog watercolor", "noise blurry", 20), ("watercolor", "blurry", 5)]
    end = line_requests(BASE, lines, position="end")
    assert [r.prompt for r in end] == ["watercolor a cat", "watercolor a dog", "watercolor"]
    assert line_requests(GenerationRequest(model="demo", prompt=""), lines)[0].prompt == "a cat"
    with pytest.raises(InvalidRequest, match="Prompt position must be one of start, end"):
        line_requests(BASE, lines, position="middle")


def test_seeds_as_a1111():
    lines = parse_lines("a\nb\n--seed 7 c\nd".replace("--seed 7 c", "--seed 7 --prompt c"))
    assert [r.seed for r in line_requests(BASE, lines)] == [-1, -1, 7, -1]  # each line its own random seed
    same = line_requests(BASE, lines, same_seed=True, rng=random.Random(1))
    assert len({same[0].seed, same[1].seed, same[3].seed}) == 1 and same[0].seed >= 0 and same[2].seed == 7
    stepped = line_requests(dataclasses.replace(BASE, seed=100), lines, iterate_seed=True)
    assert [r.seed for r in stepped] == [100, 106, 7, 118]  # + batch size 2 x batch count 3 after each line


def test_a_prompt_file_is_read_no_further_than_its_limit(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeffa red circle\n--prompt \"a café\"\n".encode("utf-8"))  # Notepad's BOM, a non-ASCII letter
    assert read_prompt_file(listing).splitlines() == ["a red circle", '--prompt "a café"']
    listing.write_bytes(b"a red circle\n" * (MAX_FILE_BYTES // 13 + 1))  # 1 MB and a few bytes
    with pytest.raises(InvalidRequest, match=r"^The list is over 1,000 kB; split it \(at most 1,000 lines run at once\)\.$"):
        read_prompt_file(listing)
    listing.write_bytes("a caf\u00e9".encode("cp1252"))
    with pytest.raises(InvalidRequest, match=r"--prompts-file 'x' is not UTF-8 text \(byte 5 cannot be read\); save it as UTF-8"):
        read_prompt_file(listing, "--prompts-file 'x'")
    with pytest.raises(InvalidRequest, match="The list cannot be read: No such file or directory"):
        read_prompt_file(tmp_path / "missing.txt")
    with pytest.raises(InvalidRequest, match="The list cannot be read: Is a directory"):
        read_prompt_file(tmp_path)
