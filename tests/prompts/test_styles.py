"""Prompt styles as A1111 keeps them (styles.csv): the merge rule, the file (A1111's own, damaged, edited, saved),
and a generation through the real manager on the tiny SD 1.5 pipeline."""
from __future__ import annotations

import os

import pytest

from pipelines.errors import InvalidRequest
from pipelines.infotext import parse_infotext
from pipelines.prompts.styles import STYLES_FILE, StyleLibrary, apply_styles, merge_prompts, Style
from pipelines.request import GenerationRequest
from tests.tiny_models import copy_model

# As A1111 writes it (csv module, a BOM from Excel, a column A1111 ignores, a quoted comma and line break).
A1111_FILE = ('\ufeffname,prompt,negative_prompt,extra\n'
              'Photo,"{prompt}, 35mm photo, sharp","cartoon, drawing",x\n'
              'Moody,"dark, cinematic\nlight",,\n'
              ',unnamed row,,\n')


def test_merge_follows_a1111():
    assert merge_prompts("{prompt}, 35mm photo", "a cat") == "a cat, 35mm photo"
    assert merge_prompts("oil painting", "a cat") == "a cat, oil painting"
    assert merge_prompts("oil painting", "  ") == "oil painting"
    assert merge_prompts("", "a cat ") == "a cat"
    assert merge_prompts("a {prompt} and a {prompt}", "cat") == "a cat and a cat"
    styles = [Style("a", "{prompt}, photo", "blurry"), Style("b", "dark", "")]
    assert apply_styles(styles, "a cat", "ugly") == ("a cat, photo, dark", "ugly, blurry")


def test_an_a1111_styles_file_reads_as_it_is(tmp_path):
    (tmp_path / STYLES_FILE).write_text(A1111_FILE, encoding="utf-8")
    library = StyleLibrary(tmp_path / STYLES_FILE)
    assert library.names() == ["Photo", "Moody"]
    request = library.expand(GenerationRequest(model="m", prompt="a cat", negative_prompt="ugly", styles=("Photo", "Moody")))
    assert request.prompt == "a cat, 35mm photo, sharp, dark, cinematic\nlight"
    assert request.negative_prompt == "ugly, cartoon, drawing" and request.styles == ()
    assert library.expand(request) is request  # nothing left to apply: a worker or a second pass changes nothing
    # A1111 styles the hires prompts too; an empty one stays "the main prompt" (already styled).
    hires = library.expand(GenerationRequest(model="m", prompt="a cat", negative_prompt="ugly", styles=("Photo",),
                                             hires_prompt="a cat, detailed fur"))
    assert hires.hires_prompt == "a cat, detailed fur, 35mm photo, sharp" and hires.hires_negative_prompt == ""


def test_unknown_names_and_a_damaged_file_say_what_to_do(tmp_path):
    library = StyleLibrary(tmp_path / STYLES_FILE)
    assert library.names() == []
    with pytest.raises(InvalidRequest, match="No style named 'Photo'.*none yet"):
        library.expand(GenerationRequest(model="m", prompt="x", styles=("Photo",)))
    (tmp_path / STYLES_FILE).write_bytes(b"\xff\xfe\x00garbage")
    assert library.names() == []  # the page still builds
    with pytest.raises(InvalidRequest, match=f"The styles file {tmp_path / STYLES_FILE} cannot be read"):
        library.expand(GenerationRequest(model="m", prompt="x", styles=("Photo",)))
    with pytest.raises(InvalidRequest, match="Fix or move it before saving"):
        library.save("Photo", "x", "")
    (tmp_path / STYLES_FILE).write_text("prompt,negative_prompt\nx,y\n")
    with pytest.raises(InvalidRequest, match="must name the columns: name,prompt,negative_prompt"):
        library.styles()
    with pytest.raises(InvalidRequest, match="Styles must be a list of style names"):
        library.expand(GenerationRequest(model="m", prompt="x", styles="Photo"))


def test_save_adds_replaces_and_is_read_back_after_an_edit(tmp_path):
    path = tmp_path / "sub" / STYLES_FILE
    library = StyleLibrary(path)
    assert library.save(" Photo ", "{prompt}, photo", "blurry") == f"Style 'Photo' saved in {path}."
    assert library.save("Sketch", "pencil sketch, {prompt}", "") == f"Style 'Sketch' saved in {path}."
    assert library.save("Photo", "{prompt}, 50mm photo", "") == f"Style 'Photo' replaced in {path}."
    assert [s.name for s in library.styles()] == ["Photo", "Sketch"]
    assert StyleLibrary(path).styles()[0].prompt == "{prompt}, 50mm photo"  # on disk, readable by a fresh reader
    assert not [p for p in path.parent.iterdir() if p.name != STYLES_FILE], "a temporary file was left"
    path.write_text("name,prompt,negative_prompt\nEdited,by hand,\n")  # edited outside the app
    os.utime(path, ns=(1, 1))  # a different stamp even within the filesystem's timestamp resolution
    assert library.names() == ["Edited"]
    for bad, message in (("", "Give the style a name"), ("a\nb", "one line"), ("x" * 201, "one line")):
        with pytest.raises(InvalidRequest, match=message):
            library.save(bad, "p", "")


def test_a_generation_applies_the_styles_before_anything_is_keyed(tmp_path, model_zoo, make_manager):
    copy_model(model_zoo["sd15"], tmp_path / "models", "tiny-sd15")
    (tmp_path / "models" / STYLES_FILE).write_text(A1111_FILE, encoding="utf-8")
    manager = make_manager(tmp_path / "models")
    base = GenerationRequest(model="tiny-sd15", prompt="a cat", steps=2, width=64, height=64, seed=3, sampler="Euler", save=False)
    styled = manager.generate(GenerationRequest(**{**base.__dict__, "styles": ("Photo",)}), telemetry=False)
    params = parse_infotext(styled.images[0].infotext)
    assert params["Prompt"] == "a cat, 35mm photo, sharp" and params["Negative prompt"] == "cartoon, drawing"
    assert styled.request.styles == ()
    # The same words typed out are the same run: the exact-repeat cache serves it.
    typed = manager.generate(GenerationRequest(**{**base.__dict__, "prompt": "a cat, 35mm photo, sharp",
                                                  "negative_prompt": "cartoon, drawing"}), telemetry=False)
    assert typed.cache_notes.get("latent cache", "").startswith("hit"), typed.cache_notes
    with pytest.raises(InvalidRequest, match="No style named 'Nope'.*styles here: Photo, Moody"):
        manager.generate(GenerationRequest(**{**base.__dict__, "styles": ("Nope",)}), telemetry=False)


def test_extract_takes_back_what_apply_added_as_a1111s_paste_does():
    from pipelines.prompts.styles import extract_styles

    styles = [Style("Photo", "{prompt}, 35mm photo", "cartoon"), Style("Moody", "dark", ""), Style("Empty", "", "")]
    for chosen in (["Photo"], ["Moody"], ["Photo", "Moody"], ["Moody", "Photo"], []):
        by_name = {s.name: s for s in styles}
        prompt, negative = apply_styles([by_name[n] for n in chosen], "a cat", "ugly")
        assert extract_styles(styles, prompt, negative) == (chosen, "a cat", "ugly"), chosen
    # Both prompts must carry a style's words: the prompt's alone is the user's own text.
    assert extract_styles(styles, "a cat, 35mm photo", "ugly") == ([], "a cat, 35mm photo", "ugly")
    assert extract_styles(styles, "dark", "") == (["Moody"], "", "")  # a style on an empty prompt


def test_send_to_generate_chooses_the_styles_found_and_clears_them_otherwise(tmp_path, make_manager):
    from ui.png_info_tab import generate_form_values

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / STYLES_FILE).write_text(A1111_FILE, encoding="utf-8")
    manager = make_manager(tmp_path / "models")
    text = "a cat, 35mm photo, sharp\nNegative prompt: ugly, cartoon, drawing\nSteps: 20, Seed: 1, Size: 64x64"
    values, notes = generate_form_values(text, manager, {})
    assert (values["prompt"], values["negative_prompt"], values["styles"]) == ("a cat", "ugly", ["Photo"])
    assert notes == ["Styles found in the prompt: Photo; chosen in Styles, and the prompt shows the rest."]
    values, notes = generate_form_values("a dog\nSteps: 20, Seed: 1, Size: 64x64", manager, {})
    assert values["styles"] == [] and values["prompt"] == "a dog" and not notes  # a choice left from before is cleared
