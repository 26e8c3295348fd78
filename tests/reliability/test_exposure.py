"""How the server is exposed: login, the --listen warning, the Host check on loopback, the upload
limit, and Gradio's files kept under Likeness's own cache folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from pipelines.catalog import DEMO_MODEL_NAME
from tests.reliability.test_sessions import form
from tests.ui.conftest import keep_screenshot, start_app
from ui.server import ServerOptions, exposure_warnings, is_loopback_host, parse_credentials

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def locked_app(tmp_path_factory):
    info, demo = start_app(tmp_path_factory.mktemp("auth-app"), auth=(("ann", "s3cret"), ("bob", "pw:with:colons")), max_upload_mb=1)
    yield info
    demo.close()


@pytest.fixture(scope="module")
def listening_app(tmp_path_factory):
    info, demo = start_app(tmp_path_factory.mktemp("listen-app"), listen=True)
    yield info
    demo.close()


@pytest.mark.parametrize("text, pairs", [
    ("ann:s3cret", (("ann", "s3cret"),)),
    ("ann:a, bob:b:c", (("ann", "a"), ("bob", "b:c"))),
    ("ann:a\nbob:b\n", (("ann", "a"), ("bob", "b"))),
])
def test_credentials_in_a1111_form(text, pairs):
    assert parse_credentials(text) == pairs


@pytest.mark.parametrize("text", ["", "ann", ":pw", "ann:", "ann:a,justapassword"])
def test_bad_credentials_are_refused_without_echoing_them(text):
    with pytest.raises(ValueError, match="user:password") as error:
        parse_credentials(text)
    assert "justapassword" not in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["--gradio-auth", "nopassword"], "--gradio-auth: expected user:password"),
    (["--gradio-auth-path", "/no/such/file"], "--gradio-auth-path: cannot read /no/such/file"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be at least 1"),
])
def test_bad_server_flags_exit_2_with_a_message(argv, message, tmp_path):
    import subprocess

    run = subprocess.run([sys.executable, "app.py", "--models-dir", str(tmp_path / "m"), "--outputs-dir", str(tmp_path / "o"),
                          "--device", "cpu", "--port", "1", *argv], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LIKENESS_SETTINGS": str(tmp_path / "settings.json")})
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


def test_listen_without_login_warns():
    assert exposure_warnings(ServerOptions(listen=True)) and "--gradio-auth" in exposure_warnings(ServerOptions(listen=True))[0]
    assert exposure_warnings(ServerOptions(listen=True, auth=(("a", "b"),))) == []
    assert exposure_warnings(ServerOptions()) == []


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:7860", True), ("localhost", True), ("LOCALHOST:1", True), ("[::1]:7860", True), ("127.5.6.7", True),
    ("evil.example", False), ("evil.example:7860", False), ("127.0.0.1.evil.example", False), ("192.168.1.2:7860", False), ("", False),
])
def test_loopback_host_names(host, ok):
    assert is_loopback_host(host) is ok


def test_login_is_required_for_the_page_and_the_api(locked_app):
    url = locked_app["url"]
    page = httpx.get(url + "/config", timeout=30)
    assert page.status_code in (401, 403) or "login" in page.text.lower()
    with pytest.raises(Exception):
        Client(url, auth=("ann", "wrong"), verbose=False)
    with pytest.raises(Exception):
        Client(url, verbose=False).predict(*form().values(), api_name="/generate")
    client = Client(url, auth=("bob", "pw:with:colons"), verbose=False)
    assert client.predict(*form().values(), api_name="/generate")[2], "a logged-in client could not generate"


def test_login_page_in_the_browser(browser, locked_app):
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    try:
        page.goto(locked_app["url"])
        page.wait_for_selector("input[type=password]", timeout=30000)
        keep_screenshot(page, "login_page")
        assert page.locator("#generate").count() == 0
        page.fill("input[type=text]", "ann")
        page.fill("input[type=password]", "s3cret")
        page.keyboard.press("Enter")
        page.wait_for_selector("#generate", timeout=30000)
    finally:
        context.close()


def test_uploads_over_the_limit_are_refused_and_not_kept(locked_app):
    client = httpx.Client(base_url=locked_app["url"], timeout=60)
    assert client.post("/login", data={"username": "ann", "password": "s3cret"}).status_code in (200, 302, 303)
    small = client.post("/gradio_api/upload", files={"files": ("small.png", b"\x89PNG" + b"0" * 1000, "image/png")})
    assert small.status_code == 200, small.text
    big = client.post("/gradio_api/upload", files={"files": ("big.png", b"\x89PNG" + b"0" * (3 * 2**20), "image/png")})
    assert big.status_code == 413, big.status_code
    temp = Path(locked_app["manager"].config.cache_dir).resolve() / "gradio"
    kept = [p for p in temp.rglob("*") if p.is_file() and p.stat().st_size > 2**20]
    assert kept == [], f"the refused upload stayed on disk: {kept}"


def test_gradio_files_live_under_the_cache_folder(locked_app):
    client = Client(locked_app["url"], auth=("ann", "s3cret"), verbose=False)
    client.predict(*form(prompt="where do the copies go", seed=3).values(), api_name="/generate")
    temp = Path(locked_app["manager"].config.cache_dir).resolve() / "gradio"
    assert any(p.suffix == ".png" for p in temp.rglob("*")), "the shown image was not copied under the cache folder"
    assert os.environ["GRADIO_TEMP_DIR"] == str(temp)


def test_foreign_host_header_is_refused_on_loopback(locked_app):
    url = locked_app["url"]
    port = url.rsplit(":", 1)[1]
    refused = httpx.get(url + "/", headers={"Host": f"rebind.example:{port}"}, timeout=30)
    assert refused.status_code == 400 and "localhost" in refused.text
    assert httpx.get(url + "/", headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200


def test_listen_serves_any_host_name_and_shows_the_warning(browser, listening_app):
    url = listening_app["url"]
    port = url.rsplit(":", 1)[1]
    assert httpx.get(url + "/", headers={"Host": f"studio-box.lan:{port}"}, timeout=30).status_code == 200
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_selector("#generate")
        assert "without a login" in page.inner_text("body")
        keep_screenshot(page, "listen_without_login_warning")
    finally:
        context.close()
    assert Client(url, verbose=False).predict(*form(model=DEMO_MODEL_NAME).values(), api_name="/generate")[2]
