"""Issue 17 items 4 and 5, the wording: the Face tab's missing-files message and status marks, and the
report of a Send to Generate (every field of the image that was not applied)."""
from __future__ import annotations

import re

import pytest

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.face.files import face_file_status, missing_message
from pipelines.manager import ManagerConfig, PipelineManager
from ui.face_tab import files_markdown, missing_files_message, model_note
from ui.png_info_tab import generate_form_values, sent_report, unapplied_keys

A1111_TEXT = ("a cat\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 512x768, "
              "Model hash: 0123456789, Model: sd_xl_base, Clip skip: 2, ENSD: 31337, Version: v1.10.1")
GENERATE_FIELDS = ("model", "prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "sampler", "schedule_type", "vae_dtype",
                   "hires_scale", "hires_upscaler", "hires_steps", "hires_denoising", "clip_skip")


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    root = tmp_path_factory.mktemp("wording45")
    return PipelineManager(ManagerConfig(root / "models", root / "outputs", root / "cache", device="cpu", include_hf_cache=False))


def test_missing_files_message_ends_after_a_blank_line(tmp_path):
    message = missing_message(face_file_status(tmp_path, insightface_root=tmp_path / "home"))
    *items, blank, closing = message.splitlines()
    assert blank == "" and closing == "Likeness cannot download them; add the files and try again."
    assert items[-1].startswith("- ") and not items[-1].endswith("again.")


def test_face_tab_names_every_missing_file_and_marks_status_in_words(manager):
    from pipelines.errors import ModelNotFound

    # Detection fails on its 2 files; the message names all 6 the table lists (the demo model has no PuLID family).
    text = missing_files_message(manager, DEMO_MODEL_NAME, ModelNotFound("needs 2 files"))
    table = files_markdown(manager)
    named = re.findall(r"^- (\S+)", text, re.M)
    assert len(named) == 6 and all(f"`{name}`" in table for name in named), text
    assert "needs 6 files" in text
    assert not re.search("[\u2600-\u27bf\U0001f300-\U0001faff]", table), "an emoji status mark"
    assert table.count('class="file-mark file-missing">missing</span>') == 6
    assert "choose an SDXL or FLUX.1 model" in model_note(manager, DEMO_MODEL_NAME)


def test_send_report_lists_every_field_not_applied(manager):
    values, notes = generate_form_values(A1111_TEXT, manager, {"model": DEMO_MODEL_NAME})
    assert values["steps"] == 20 and values["width"] == 512 and values["height"] == 768 and values["hires_scale"] == 1.0
    assert values["clip_skip"] == 2
    assert notes == [f"Model 'sd_xl_base' is not installed; kept {DEMO_MODEL_NAME!r}."]
    settings, records = unapplied_keys(A1111_TEXT, GENERATE_FIELDS)
    assert settings == ["ENSD: 31337"] and records == ["Model hash", "Version"]
    report = sent_report("Generate.", notes, A1111_TEXT, GENERATE_FIELDS)
    assert report.splitlines()[0] == "Sent to Generate.  "
    assert "⚠ Model 'sd_xl_base' is not installed" in report
    assert "⚠ Not applied (no such setting here): ENSD: 31337" in report
    assert report.endswith("Recorded only, nothing to set: Model hash, Version")


def test_a_form_without_hires_reports_the_hires_fields(manager):
    text = A1111_TEXT + ", Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent, Hires steps: 10"
    values, _ = generate_form_values(text, manager, {})
    assert values["hires_scale"] == 2.0 and values["hires_steps"] == 10 and values["hires_denoising"] == 0.5
    assert values["hires_upscaler"] == "Latent"
    img2img_fields = ("model", "prompt", "negative_prompt", "steps", "cfg_scale", "seed", "sampler", "schedule_type", "vae_dtype", "width",
                      "height")
    settings, _ = unapplied_keys(text, img2img_fields)
    assert settings == ["Clip skip: 2", "ENSD: 31337", "Denoising strength: 0.5", "Hires upscale: 2", "Hires upscaler: Latent",
                        "Hires steps: 10"]
    # img2img's own strength (no hires fix) is not Generate's: listed there.
    assert "Denoising strength: 0.4" in unapplied_keys(A1111_TEXT + ", Denoising strength: 0.4", GENERATE_FIELDS)[0]


def test_a_hires_checkpoint_comes_back_when_it_is_installed(manager):
    """A1111's `Hires checkpoint: name [hash]`: the model when installed, else "Use same checkpoint" with a note; none
    written (or hires fix off) is "Use same checkpoint"."""
    hires = A1111_TEXT + ", Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent"
    values, notes = generate_form_values(hires + f", Hires checkpoint: {DEMO_MODEL_NAME}", manager, {})
    assert values["hires_checkpoint"] == DEMO_MODEL_NAME and not any("Hires checkpoint" in n for n in notes)
    values, _ = generate_form_values(hires + f", Hires checkpoint: {DEMO_MODEL_NAME} [0123abcd45]", manager, {})
    assert values["hires_checkpoint"] == DEMO_MODEL_NAME
    values, notes = generate_form_values(hires + ", Hires checkpoint: juggernaut_xl [0123abcd45]", manager, {})
    assert values["hires_checkpoint"] == "Use same checkpoint"
    assert "Hires checkpoint 'juggernaut_xl' is not installed; Use same checkpoint was chosen." in notes
    assert generate_form_values(hires, manager, {})[0]["hires_checkpoint"] == "Use same checkpoint"
    assert generate_form_values(A1111_TEXT, manager, {})[0]["hires_checkpoint"] == "Use same checkpoint"
    assert "Hires checkpoint" not in " ".join(unapplied_keys(hires + ", Hires checkpoint: x", GENERATE_FIELDS + ("hires_checkpoint",))[0])


def test_a_refiner_comes_back_when_it_is_installed(manager):
    """A1111's `Refiner: name [hash], Refiner switch at: 0.7`: the model when installed (else None, with a note), its
    switch; one that switched by noise level (A1111's default: no `Refiner switch by sampling steps`) gets a note."""
    by_steps = f", Refiner: {DEMO_MODEL_NAME} [0123abcd45], Refiner switch at: 0.7, Refiner switch by sampling steps: True"
    values, notes = generate_form_values(A1111_TEXT + by_steps, manager, {})
    assert (values["refiner_checkpoint"], values["refiner_switch_at"]) == (DEMO_MODEL_NAME, 0.7)
    assert not any("Refiner" in note or "noise level" in note for note in notes)
    values, notes = generate_form_values(A1111_TEXT + f", Refiner: {DEMO_MODEL_NAME}, Refiner switch at: 0.8", manager, {})
    assert values["refiner_checkpoint"] == DEMO_MODEL_NAME and any("switched at a noise level" in note for note in notes)
    values, notes = generate_form_values(A1111_TEXT + ", Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 2", manager, {})
    assert values["refiner_checkpoint"] == "None" and "refiner_switch_at" not in values
    assert "Refiner 'sd_xl_refiner_1.0' is not installed; None was chosen." in notes
    assert any("Refiner switch at '2' is not a number from 0.01 to 1" in note for note in notes)
    assert generate_form_values(A1111_TEXT, manager, {})[0]["refiner_checkpoint"] == "None"
    fields = GENERATE_FIELDS + ("refiner_checkpoint", "refiner_switch_at")
    assert not any(key.startswith("Refiner") for key in unapplied_keys(A1111_TEXT + by_steps, fields)[0])


def test_token_merging_comes_back_and_none_written_is_off(manager):
    assert generate_form_values(A1111_TEXT + ", Token merging ratio: 0.3", manager, {})[0]["token_merging_ratio"] == 0.3
    assert generate_form_values(A1111_TEXT, manager, {})[0]["token_merging_ratio"] == 0.0
    settings, _ = unapplied_keys(A1111_TEXT + ", Token merging ratio: 0.3", GENERATE_FIELDS + ("token_merging_ratio",))
    assert not any(key.startswith("Token merging") for key in settings)


def test_an_image_without_clip_skip_sends_clip_skip_1(manager):
    """A1111 writes "Clip skip" only when it is not 1, and its paste sets 1 when the key is absent: so does Send."""
    values, _ = generate_form_values(A1111_TEXT.replace("Clip skip: 2, ", ""), manager, {})
    assert values["clip_skip"] == 1
    values, notes = generate_form_values(A1111_TEXT.replace("Clip skip: 2", "Clip skip: two"), manager, {})
    assert "clip_skip" not in values and "Clip skip 'two' is not a number; left as it was." in notes
