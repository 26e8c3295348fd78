"""The ID weight wherever it is defaulted or checked: each family's official app (PuLID-FLUX: 0-3,
default 1; SDXL v1.1: 0-5, default 0.8) on the command line, the A1111 API, the Face tab's slider and
the experiment axes. The engine's own check is in test_face_generation."""
from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import pytest
from PIL import Image

from pipelines.errors import InvalidRequest, ModelNotFound
from pipelines.face.options import FaceOptions
from pipelines.families import Family


def fake_manager(**families):
    """entry(name).family for the names given; any other name is not installed."""
    def entry(name):
        if name not in families:
            raise ModelNotFound(f"{name} is not installed")
        return SimpleNamespace(family=families[name])
    return SimpleNamespace(entry=entry)


def test_cli_leaves_the_weight_to_the_family_and_says_both_ranges():
    from app import build_parser
    from ui.cli import face_options

    parser = build_parser()
    args = parser.parse_args(["generate", "--prompt", "p", "--face", "me.jpg"])
    assert args.id_weight is None and face_options(args).id_weight is None
    assert face_options(args).for_family(Family.FLUX).id_weight == 1.0
    assert face_options(args).for_family(Family.SDXL).id_weight == 0.8
    assert face_options(parser.parse_args(["generate", "--prompt", "p", "--face", "me.jpg", "--id-weight", "2.5"])).id_weight == 2.5
    gen = next(a for a in parser._subparsers._group_actions[0].choices.values() if any(o.dest == "id_weight" for o in a._actions))
    help_text = next(o.help for o in gen._actions if o.dest == "id_weight")
    assert "SDXL 0-5 (default 0.8)" in help_text and "FLUX.1 0-3 (default 1)" in help_text


def photo_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a1111_pulid_args_default_the_weight_per_family_and_check_it():
    from ui.a1111.mapping import pulid_options

    _, left_out = pulid_options([{"images": [photo_b64()]}])
    _, null = pulid_options([{"images": [photo_b64()], "id_weight": None}])
    _, positional = pulid_options([[photo_b64()]])
    assert left_out.id_weight is None and null.id_weight is None and positional.id_weight is None
    assert left_out.for_family(Family.FLUX).id_weight == 1.0 and left_out.for_family(Family.SDXL).id_weight == 0.8
    _, given = pulid_options([[photo_b64()], 2.5])
    assert given.id_weight == 2.5
    with pytest.raises(InvalidRequest, match=r"The ID weight for FLUX\.1 models must be between 0 and 3; got 3\.5"):
        pulid_options([{"images": [photo_b64()], "id_weight": 3.5}])[1].for_family(Family.FLUX)
    with pytest.raises(InvalidRequest, match=r"ID weight must be between 0 and 5 \(FLUX\.1: 0-3\); got 9"):
        pulid_options([{"images": [photo_b64()], "id_weight": 9}])
    with pytest.raises(InvalidRequest, match="id_weight must be a number"):
        pulid_options([{"images": [photo_b64()], "id_weight": "strong"}])


def test_face_tab_slider_follows_the_models_family():
    from ui.face_tab import id_weight_slider

    manager = fake_manager(flux=Family.FLUX, sdxl=Family.SDXL, sd15=Family.SD15)
    assert id_weight_slider(manager, "flux") == (1.0, 3.0)
    assert id_weight_slider(manager, "sdxl") == (0.8, 5.0)
    assert id_weight_slider(manager, "flux", 0.8) == (1.0, 3.0)  # SDXL's default -> FLUX's
    assert id_weight_slider(manager, "sdxl", 1.0) == (0.8, 5.0)  # and back
    assert id_weight_slider(manager, "flux", 2.2) == (2.2, 3.0)  # a value the user chose is kept while it fits
    assert id_weight_slider(manager, "flux", 4.5) == (1.0, 3.0)  # beyond FLUX's range: its default
    assert id_weight_slider(manager, "sdxl", 4.5) == (4.5, 5.0)
    assert id_weight_slider(manager, "missing") == (0.8, 5.0) and id_weight_slider(manager, None) == (0.8, 5.0)


def test_experiment_axis_checks_the_starting_models_range_and_leaves_the_default_to_the_family():
    from pipelines.experiments.axes import find_setting
    from pipelines.experiments.plan import _value_problem
    from pipelines.request import GenerationRequest
    from ui.experiments_tab import experiment_from_form

    setting = find_setting("pulid_weight")
    face = FaceOptions(photos=("me.jpg",))
    flux = GenerationRequest(model="flux", prompt="p")
    sdxl = GenerationRequest(model="sdxl", prompt="p")
    manager = fake_manager(flux=Family.FLUX, sdxl=Family.SDXL)
    assert _value_problem(setting, 4.0, flux, face, manager) == "the ID weight for FLUX.1 models must be between 0 and 3; got 4."
    assert _value_problem(setting, 3.0, flux, face, manager) is None
    assert _value_problem(setting, 4.0, sdxl, face, manager) is None
    assert "between 0 and 5" in _value_problem(setting, 6.0, sdxl, face, manager)

    form = {name: value for name, value in GenerationRequest(model="flux", prompt="p").to_dict().items()}
    left_out = experiment_from_form([], 0, False, 1, ["me.jpg"], None, 0, form)
    assert "id_weight" not in left_out.face  # each cell's model family's default
    assert experiment_from_form([], 0, False, 1, ["me.jpg"], 2.0, 0, form).face["id_weight"] == 2.0


def test_cli_refuses_a_flux_weight_above_3_with_the_message(tmp_path, model_zoo, capsys):
    from app import main
    from pipelines.bench.tiny_face import HANKS
    from tests.tiny_models import copy_model

    models = tmp_path / "models"
    copy_model(model_zoo["flux"], models, "tiny-flux")
    common = ["--models-dir", str(models), "--outputs-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    code = main(["generate", *common, "--model", "tiny-flux", "--prompt", "x", "--steps", "2", "--width", "256", "--height", "256",
                 "--face", str(HANKS), "--id-weight", "4", "--no-save"])
    err = capsys.readouterr().err
    assert code == 2 and "The ID weight for FLUX.1 models must be between 0 and 3; got 4." in err
