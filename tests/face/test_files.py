"""Which Face (PuLID) files are present, where each belongs, and what the user is told."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import InvalidRequest, ModelNotFound
from pipelines.face.files import (
    FACE_FILES,
    antelopev2_files,
    face_file_status,
    missing_message,
    require_face_files,
)
from pipelines.families import Family

REQUIRED = {
    "scrfd_10g_bnkps.onnx": "insightface/antelopev2",
    "glintr100.onnx": "insightface/antelopev2",
    "EVA02_CLIP_L_336_psz14_s6B.pt": "eva_clip",
    "parsing_bisenet.pth": "facexlib",
    "pulid_v1.1.safetensors": "pulid",
    "pulid_flux_v0.9.1.safetensors": "pulid",
}


def put(models: Path, relative: str) -> Path:
    path = models / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def models(tmp_path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def home(tmp_path) -> Path:
    """An empty stand-in for ~/.insightface: the real one must not decide a test."""
    return tmp_path / "home" / ".insightface"


def by_name(statuses):
    return {s.name: s for s in statuses}


def test_every_file_has_its_folder(models, home):
    statuses = by_name(face_file_status(models, insightface_root=home))
    for name, folder in REQUIRED.items():
        assert statuses[name].folder == models / folder and statuses[name].required
        assert not statuses[name].present and statuses[name].path is None
    optional = {f.name for f in FACE_FILES if f.optional}
    assert optional == {"1k3d68.onnx", "2d106det.onnx", "genderage.onnx"}
    assert all(not statuses[name].required for name in optional)


def test_empty_models_dir_names_every_required_file_and_folder(models, home):
    message = missing_message(face_file_status(models, insightface_root=home))
    assert message.startswith("Face reference needs 6 files that are missing:")
    for name, folder in REQUIRED.items():
        assert f"- {name} (" in message
        assert f"put it in {models / folder}" in message.split(f"- {name} (")[1].splitlines()[0]
    assert "1k3d68.onnx" not in message and "genderage.onnx" not in message


def test_partially_filled_models_dir(models, home):
    found = put(models, "insightface/antelopev2/scrfd_10g_bnkps.onnx")
    put(models, "eva_clip/EVA02_CLIP_L_336_psz14_s6B.pt")
    put(models, "pulid/pulid_v1.1.safetensors")
    statuses = face_file_status(models, "sdxl", insightface_root=home)
    assert by_name(statuses)["scrfd_10g_bnkps.onnx"].path == found
    assert "pulid_flux_v0.9.1.safetensors" not in by_name(statuses)  # FLUX weights: not for SDXL

    message = missing_message(statuses)
    lines = message.splitlines()
    assert lines[0] == "Face reference needs 2 files that are missing:"
    assert lines[1] == f"- glintr100.onnx (insightface antelopev2 face recognizer, ArcFace R100): put it in {models / 'insightface' / 'antelopev2'}"
    assert lines[2] == f"- parsing_bisenet.pth (facexlib BiSeNet face parsing): put it in {models / 'facexlib'}"
    assert "scrfd_10g_bnkps.onnx" not in message and "EVA02" not in message

    with pytest.raises(ModelNotFound, match="glintr100.onnx"):
        require_face_files(models, Family.SDXL, insightface_root=home)
    put(models, "insightface/antelopev2/glintr100.onnx")
    put(models, "facexlib/parsing_bisenet.pth")
    paths = require_face_files(models, "sdxl", insightface_root=home)
    assert paths["pulid_v1.1.safetensors"] == models / "pulid" / "pulid_v1.1.safetensors"
    assert missing_message(face_file_status(models, "sdxl", insightface_root=home)) == ""
    assert "pulid_flux_v0.9.1.safetensors" in missing_message(face_file_status(models, "flux", insightface_root=home))


def test_one_missing_file_reads_as_singular(models, home):
    for name, folder in REQUIRED.items():
        if name != "parsing_bisenet.pth":
            put(models, f"{folder}/{name}")
    message = missing_message(face_file_status(models, insightface_root=home))
    assert message.startswith("Face reference needs 1 file that is missing:")


def test_flux_accepts_the_older_release_with_a_note(models, home):
    older = put(models, "pulid/pulid_flux_v0.9.0.safetensors")
    status = by_name(face_file_status(models, "flux", insightface_root=home))["pulid_flux_v0.9.1.safetensors"]
    assert status.present and status.path == older
    assert "older v0.9.0" in status.note
    newer = put(models, "pulid/pulid_flux_v0.9.1.safetensors")
    status = by_name(face_file_status(models, "flux", insightface_root=home))["pulid_flux_v0.9.1.safetensors"]
    assert status.path == newer and status.note == ""


def test_nested_zip_folder_is_accepted(models, home):
    det = put(models, "insightface/antelopev2/antelopev2/scrfd_10g_bnkps.onnx")
    rec = put(models, "insightface/antelopev2/antelopev2/glintr100.onnx")
    statuses = by_name(face_file_status(models, insightface_root=home))
    assert statuses["glintr100.onnx"].present and "nested antelopev2/antelopev2" in statuses["glintr100.onnx"].note
    assert statuses["glintr100.onnx"].folder == models / "insightface" / "antelopev2"
    assert antelopev2_files(models, insightface_root=home) == (det, rec)


def test_insightface_layouts_are_fallbacks(models, home):
    comfy = put(models, "insightface/models/antelopev2/glintr100.onnx")
    own = put(home, "models/antelopev2/scrfd_10g_bnkps.onnx")
    statuses = by_name(face_file_status(models, insightface_root=home))
    assert statuses["glintr100.onnx"].path == comfy and "models/antelopev2 layout" in statuses["glintr100.onnx"].note
    assert statuses["scrfd_10g_bnkps.onnx"].path == own and "insightface's own folder" in statuses["scrfd_10g_bnkps.onnx"].note
    assert antelopev2_files(models, insightface_root=home) == (own, comfy)
    # The models folder wins over insightface's home.
    mine = put(models, "insightface/antelopev2/scrfd_10g_bnkps.onnx")
    assert antelopev2_files(models, insightface_root=home)[0] == mine


def test_hints_for_a_zip_left_packed_and_a_file_in_the_wrong_folder(models, home):
    put(models, "insightface/antelopev2.zip")
    put(models, "pulid_v1.1.safetensors")  # dropped at the top of the models folder
    put(models, "insightface/glintr100.onnx")  # one level too high
    message = missing_message(face_file_status(models, insightface_root=home))
    assert f"{models / 'insightface' / 'antelopev2.zip'} is still zipped: extract it" in message
    assert f"found at {models / 'pulid_v1.1.safetensors'}, move it" in message
    glintr = next(line for line in message.splitlines() if line.startswith("- glintr100.onnx"))
    assert "still zipped" in glintr  # the zip explains both antelopev2 files


def test_missing_antelopev2_files_raise_model_not_found(models, home):
    put(models, "insightface/antelopev2/scrfd_10g_bnkps.onnx")
    with pytest.raises(ModelNotFound) as caught:
        antelopev2_files(models, insightface_root=home)
    assert "glintr100.onnx" in str(caught.value) and "scrfd_10g_bnkps.onnx" not in str(caught.value)
    assert str(models / "insightface" / "antelopev2") in str(caught.value)


def test_sd15_has_no_pulid(models, home):
    with pytest.raises(InvalidRequest, match="SDXL and FLUX.1"):
        face_file_status(models, Family.SD15, insightface_root=home)


def test_nothing_missing_is_an_empty_message():
    assert missing_message([]) == ""
