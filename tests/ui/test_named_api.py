"""One typed request everywhere: the Gradio endpoints are called by the request's field names, and
the command line has every face control as a flag."""
from __future__ import annotations

import dataclasses

from gradio_client import Client, handle_file
from PIL import Image

from pipelines.bench.tiny_face import HANKS
from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.face.options import FaceOptions
from pipelines.infotext import parse_infotext
from pipelines.request import GenerationRequest
from tests.ui.test_face_tab import face_app  # noqa: F401  (tiny SDXL + every face file)
from ui.generate_tab import APP_FIELDS, FORM_FIELDS, IMG2IMG_FIELDS

# Generate edits every request field but those the app sets and the img2img ones (the img2img tab's own endpoint has those).
REQUEST_FIELDS = [f.name for f in dataclasses.fields(GenerationRequest) if f.name not in APP_FIELDS + IMG2IMG_FIELDS]
FACE_FIELDS = ["photos", "face_numbers", "id_weight", "start_step", "num_zero", "ortho", "true_cfg", "true_cfg_start"]


def parameter_names(client: Client, api_name: str) -> list[str]:
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"][api_name]
    return [parameter["parameter_name"] for parameter in info["parameters"]]


def test_the_form_is_the_request(live_app):
    assert list(FORM_FIELDS) == REQUEST_FIELDS, "the Generate form and GenerationRequest drifted apart"
    client = Client(live_app["url"], verbose=False)
    assert parameter_names(client, "/generate") == REQUEST_FIELDS
    assert parameter_names(client, "/experiment")[-len(REQUEST_FIELDS):] == REQUEST_FIELDS
    assert "param_" not in " ".join(parameter_names(client, "/experiment"))


def test_generate_by_field_name(live_app):
    client = Client(live_app["url"], verbose=False)
    readout, _preview, gallery, breakdown = client.predict(
        model=DEMO_MODEL_NAME, prompt="called by name", steps=3, seed=1234, width=64, height=64, sampler="Euler", api_name="/generate")
    assert gallery, readout
    params = parse_infotext(Image.open(gallery[0]["image"]).info["parameters"])
    assert (params["Prompt"], params["Steps"], params["Seed"], params["Size"]) == ("called by name", "3", "1234", "64x64")


def test_generate_face_by_field_name(face_app):  # noqa: F811
    client = Client(face_app["url"], verbose=False)
    assert parameter_names(client, "/generate_face") == FACE_FIELDS + REQUEST_FIELDS
    readout, gallery, _breakdown = client.predict(
        photos=[handle_file(str(HANKS))], id_weight=0.6, model="tiny-sdxl", prompt="a portrait by name", steps=2, seed=5,
        width=256, height=256, sampler="Euler", schedule_type="Uniform", api_name="/generate_face")
    assert gallery, readout
    params = parse_infotext(Image.open(gallery[0]["image"]).info["parameters"])
    assert params["PuLID weight"] == "0.6" and params["Prompt"] == "a portrait by name"
    # Uniform is not in the list the page was built with (SDXL's DPM++ 2M has none): the request checks it, not Gradio
    assert params["Schedule type"] == "Uniform"


def test_cli_face_flags(face_app, tmp_path, capsys):  # noqa: F811
    from app import build_parser
    from ui.cli import face_options

    args = build_parser().parse_args(["generate", "--prompt", "p", "--face", str(HANKS), "--face", str(HANKS), "--face-index", "2",
                                      "--id-weight", "0.7", "--start-step", "1", "--num-zero", "10", "--ortho", "v1",
                                      "--true-cfg", "3", "--true-cfg-start", "2"])
    assert face_options(args) == FaceOptions((str(HANKS), str(HANKS)), (1,), 0.7, 1, 10, "v1", 3.0, 2)
    assert face_options(build_parser().parse_args(["generate", "--prompt", "p"])) is None


def test_cli_generates_with_a_face_and_refuses_bad_face_flags(face_app, tmp_path, capsys):  # noqa: F811
    from app import main

    manager = face_app["manager"]
    common = ["--models-dir", str(manager.config.models_dir), "--outputs-dir", str(tmp_path / "out"),
              "--cache-dir", str(manager.config.cache_dir), "--device", "cpu"]
    from pipelines.bench.tiny_face import TINY_IDFORMER
    import pipelines.face.service as service

    original = service.FaceService.__init__

    def tiny_idformer(self, *args, **kwargs):  # the tiny PuLID file's sizes, as the face_app fixture sets them
        original(self, *args, **kwargs)
        self.idformer_config = TINY_IDFORMER

    service.FaceService.__init__ = tiny_idformer
    try:
        code = main(["generate", *common, "--model", "tiny-sdxl", "--prompt", "a cli portrait", "--steps", "2", "--width", "256",
                     "--height", "256", "--sampler", "Euler", "--face", str(HANKS), "--id-weight", "0.9"])
        out = capsys.readouterr()
        assert code == 0, out.err
        saved = sorted((tmp_path / "out").rglob("*.png"))
        assert saved and parse_infotext(Image.open(saved[-1]).info["parameters"])["PuLID weight"] == "0.9"
        for bad, message in ((["--id-weight", "9"], "ID weight must be between 0 and 5"),
                             (["--face-index", "0"], "--face-index takes one number"),
                             (["--ortho", "v1"], None)):
            argv = ["generate", *common, "--model", "tiny-sdxl", "--prompt", "x", "--steps", "2", "--width", "256", "--height", "256",
                    "--face", str(HANKS), *bad, "--no-save"]
            code = main(argv)
            err = capsys.readouterr().err
            if message:
                assert code == 2 and message in err and "Traceback" not in err, err
            else:
                assert code == 0, err
        code = main(["generate", *common, "--prompt", "x", "--face-index", "1"])
        assert code == 2 and "needs a reference photo" in capsys.readouterr().err
    finally:
        service.FaceService.__init__ = original
