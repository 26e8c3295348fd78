"""Bad input to the A1111 API: every case is HTTP 422 in A1111's error shape, nothing is written, and
the server keeps serving; an internal error is a 500 in the same shape without traceback text."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from ui.a1111.routes import MAX_BODY_BYTES

ERROR_KEYS = {"error", "detail", "body", "errors"}
OK = {"prompt": "x", "steps": 2, "width": 64, "height": 64}


def png_claiming(width: int, height: int) -> bytes:
    """A valid little PNG whose header says it is width x height (an image bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def real_png(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 150, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pulid(*images) -> dict:
    return dict(OK, alwayson_scripts={"pulid": {"args": [list(images), 0.8]}})


BAD_TXT2IMG = {
    "malformed JSON": b'{"prompt": "x", "steps": ',
    "not an object": [1, 2, 3],
    "steps as text": dict(OK, steps="many"),
    "prompt as a number": dict(OK, prompt=5),
    "width as a list": dict(OK, width=[64]),
    "width 65": dict(OK, width=65),
    "steps 100000": dict(OK, steps=100000),
    "seed too large": dict(OK, seed=2**40),
    "negative cfg": dict(OK, cfg_scale=-1),
    "unknown sampler": dict(OK, sampler_name="no such sampler"),
    "an A1111 sampler Likeness lacks": dict(OK, sampler_name="DPM adaptive"),
    "unknown scheduler": dict(OK, scheduler="wobbly"),
    "unknown model": dict(OK, override_settings={"sd_model_checkpoint": "no such model [0123456789]"}),
    "model as a list": dict(OK, override_settings={"sd_model_checkpoint": ["x"]}),
    "unknown alwayson script": dict(OK, alwayson_scripts={"controlnet": {"args": []}}),
    "selectable script": dict(OK, script_name="X/Y/Z plot"),
    "script without args list": dict(OK, alwayson_scripts={"deepcache": {"args": "3"}}),
    "deepcache interval as text": dict(OK, alwayson_scripts={"deepcache": {"args": ["three"]}}),
    "flux cache on a UNet model": dict(OK, alwayson_scripts={"flux block cache": {"args": ["first-block"]}}),
    "bad vae precision": dict(OK, alwayson_scripts={"vae precision": {"args": ["fp8"]}}),
    "photo that is not base64": pulid("@@not base64@@"),
    "base64 that is not an image": pulid(b64(b"hello, this is text and not a picture")),
    "image bomb": pulid(b64(png_claiming(50_000, 50_000))),
    "truncated PNG": pulid(b64(real_png()[:60])),
    "too many photos": pulid(*[b64(real_png())] * 5),
    "bad ID weight": dict(OK, alwayson_scripts={"pulid": {"args": [{"images": [b64(real_png())], "id_weight": "strong"}]}}),
    "ID weight out of range": dict(OK, alwayson_scripts={"pulid": {"args": [{"images": [b64(real_png())], "id_weight": 9}]}}),
    "unknown pulid argument": dict(OK, alwayson_scripts={"pulid": {"args": [{"images": [b64(real_png())], "strength": 1}]}}),
    "face on an SD 1.5 model (engine refusal)": pulid(b64(real_png())),
}


def assert_refused(response, status: int = 422) -> dict:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == ERROR_KEYS and body["detail"] and body["body"] == ""
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


def assert_nothing_written(app) -> None:
    assert not any((app["root"] / "outputs").rglob("*")), "no image may be saved"
    photos = app["root"] / "cache" / "api-photos"
    assert not photos.exists() or not any(photos.iterdir()), "no photo may be left behind"


@pytest.mark.parametrize("case", list(BAD_TXT2IMG))
def test_bad_txt2img_bodies_are_422(api_app, case):
    client = api_app["client"]
    body = BAD_TXT2IMG[case]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    refused = assert_refused(client.post("/sdapi/v1/txt2img", content=data, headers={"content-type": "application/json"}))
    assert len(refused["detail"]) < 2000  # a message, not an echo of the body
    assert client.get("/sdapi/v1/progress").status_code == 200
    assert_nothing_written(api_app)


def test_bodies_over_the_limit_are_refused_by_length_and_by_stream(api_app):
    client = api_app["client"]
    oversized = b'{"prompt": "' + b"a" * (MAX_BODY_BYTES + 1024) + b'"}'
    assert "BodyTooLarge" == assert_refused(client.post("/sdapi/v1/txt2img", content=oversized,
                                                        headers={"content-type": "application/json"}))["error"]

    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        yield b'{"prompt": "'
        for _ in range(MAX_BODY_BYTES // 2**20 + 2):
            yield b"a" * 2**20
        yield b'"}'

    assert "BodyTooLarge" == assert_refused(client.post("/sdapi/v1/txt2img", content=chunks(),
                                                        headers={"content-type": "application/json"}))["error"]
    assert client.post("/sdapi/v1/txt2img", json=OK).status_code == 200
    assert_nothing_written(api_app)


def test_bad_png_info_and_options_are_422(api_app):
    client = api_app["client"]
    assert_refused(client.post("/sdapi/v1/png-info", json={"image": "%%%"}))
    assert_refused(client.post("/sdapi/v1/png-info", json={"image": b64(b"not an image at all")}))
    assert "megapixels" in assert_refused(client.post("/sdapi/v1/png-info", json={"image": b64(png_claiming(40_000, 40_000))}))["detail"]
    assert_refused(client.post("/sdapi/v1/png-info", json={"picture": "x"}))
    assert_refused(client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": "often"}))
    assert_refused(client.post("/sdapi/v1/options", json=["sd_model_checkpoint"]))
    assert_refused(client.get("/sdapi/v1/progress", params={"skip_current_image": "perhaps"}))
    assert client.get("/sdapi/v1/options").status_code == 200


def test_an_internal_error_is_a_500_without_traceback(api_app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /home/user/.cache")

    monkeypatch.setattr(api_app["manager"], "generate", broken)
    refused = assert_refused(api_app["client"].post("/sdapi/v1/txt2img", json=OK), status=500)
    assert refused["error"] == "RuntimeError" and "secret" not in json.dumps(refused)
    monkeypatch.undo()
    assert api_app["client"].post("/sdapi/v1/txt2img", json=OK).status_code == 200
