"""The web UI and the A1111 API with `--workers ray`: a live app over the session's Ray pool (2 CPU
workers), checked in Chromium and over HTTP. Screenshots land in test-artifacts/."""
from __future__ import annotations

import base64
import io

import httpx
import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-scale.txt")

from PIL import Image  # noqa: E402

from pipelines.catalog import DEMO_MODEL_NAME  # noqa: E402
from pipelines.distributed.front import DispatchingManager  # noqa: E402
from pipelines.generate import CancelToken  # noqa: E402
from pipelines.infotext import parse_infotext  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from tests.ui.conftest import ARTIFACTS, browser, free_port, keep_screenshot, open_page  # noqa: E402, F401  (browser: a fixture)
from tests.ui.test_app_extras import queue_table  # noqa: E402
from tests.ui.test_generate_tab import generate_small, set_number  # noqa: E402


@pytest.fixture(scope="module")
def worker_app(pool, tmp_path_factory):
    """Settings -> the UI's manager -> DispatchingManager over the pool -> the UI and the API, as app.py does."""
    from settings import load_settings
    from ui.app import launch
    from ui.server import ServerOptions

    config = pool.manager_config
    root = tmp_path_factory.mktemp("worker-app")
    settings, store = load_settings(root / "settings.json", {"models_dir": str(config.models_dir), "outputs_dir": str(config.outputs_dir),
                                                             "cache_dir": str(config.cache_dir), "device": "cpu"})
    front = DispatchingManager(PipelineManager(config), pool)
    port = free_port()
    demo = launch(front, settings, store, ServerOptions(port=port, api=True), block=False)
    yield {"url": f"http://127.0.0.1:{port}", "front": front}
    demo.close()


@pytest.fixture
def page(browser, worker_app, request):  # noqa: F811
    page = open_page(browser, worker_app["url"])
    yield page
    keep_screenshot(page, f"workers_{request.node.name}")
    page.context.close()


def test_generate_tab_runs_on_a_worker_and_redecode_says_why_not(page, worker_app):
    # The shared models folder may hold other tests' tiny models (the first real one is the default): pick the demo.
    page.click("#model input")
    page.locator("#model").get_by_role("option", name=DEMO_MODEL_NAME).first.click()
    generate_small(page, "a red circle", steps=3, size=64, timeout_ms=120000)
    assert page.locator("#gallery img").count() >= 1
    assert "cpu" in page.inner_text("#breakdown")
    saved = sorted(worker_app["front"].config.outputs_dir.rglob("*.png"), key=lambda p: p.stat().st_mtime)
    assert parse_infotext(Image.open(saved[-1]).info["parameters"])["Worker"].startswith("worker-")
    page.get_by_text("Re-decode the last latents").click()
    page.click("#redecode")
    page.wait_for_function("(document.querySelector('#redecode_info')?.innerText || '').includes('not available')", timeout=30000)
    assert "Ray workers" in page.inner_text("#redecode_info")


def test_status_bar_and_models_tab_list_every_worker(page, worker_app):
    page.wait_for_function("(document.querySelector('#status')?.innerText || '').includes('Workers 2')", timeout=30000)
    status = page.inner_text("#status")
    assert "worker-1 (cpu, " in status and "worker-2 (cpu, " in status
    page.get_by_role("tab", name="Models").click()
    page.wait_for_function("(document.querySelector('#models_workers')?.innerText || '').includes('worker-2')", timeout=30000)
    table = page.inner_text("#models_workers")
    assert "worker-1" in table and "idle" in table
    page.click("#models_load")
    page.wait_for_function("/worker-\\d: /.test((document.querySelector('#models_message')?.innerText || ''))", timeout=120000)
    page.wait_for_function(f"(document.querySelector('#models_workers')?.innerText || '').includes('{DEMO_MODEL_NAME} (')", timeout=30000)
    assert "worker-" in page.inner_text("#models_table")  # the catalog's "in memory" names the worker


def test_a1111_txt2img_runs_on_a_worker(worker_app):
    body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 31,
            "override_settings": {"sd_model_checkpoint": DEMO_MODEL_NAME}}  # not whichever model the shared folder lists first
    response = httpx.post(f"{worker_app['url']}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text[:500]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (64, 64)
    assert "Worker: worker-" in response.json()["info"]


def test_models_tab_queue_names_the_worker_running_each_job(page, worker_app):
    """A run from this tab and one from the API at once: the queue table says which worker runs each."""
    import threading

    from pipelines.jobs import tagged
    from pipelines.request import GenerationRequest

    page.click("#model input")
    page.locator("#model").get_by_role("option", name=DEMO_MODEL_NAME).first.click()
    page.fill("#prompt textarea", "a lighthouse at dusk")
    # Both jobs must outlast every reading below: at 192 px 150 steps took about 10 s on two busy workers, and the
    # tab's job could end before the table was read (it then listed the API job alone). At 512 px a step costs
    # about 0.35 s: a minute or more; both are stopped at the end.
    set_number(page, "steps", 150)
    set_number(page, "width", 512)
    set_number(page, "height", 512)
    page.click("#generate")
    page.wait_for_function("/step \\d+/.test((document.querySelector('#readout')?.innerText || ''))", timeout=120000)
    page.wait_for_function("/ · on worker-\\d \\(cpu\\)/.test((document.querySelector('#readout')?.innerText || ''))", timeout=10000)
    api_job = GenerationRequest(model=DEMO_MODEL_NAME, prompt="a blue square on grey", steps=150, width=512, height=512, seed=2)
    front = worker_app["front"]

    def from_the_api():
        with tagged(source="api", kind="txt2img"):
            try:
                front.generate(api_job, cancel=stop_api)
            except Exception:  # stopped below
                pass

    stop_api = CancelToken()
    api_thread = threading.Thread(target=from_the_api, daemon=True)
    api_thread.start()
    try:
        page.get_by_role("tab", name="Models").click()
        page.wait_for_function("(t => t.includes('you') && t.includes('the API'))(document.querySelector('#models_queue').innerText)",
                               timeout=60000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "workers_models_queue_two_workers.png"), full_page=True)
        # The table re-renders every 2 s: read it until both rows are in one reading (at most 30 s).
        for _ in range(60):
            rows = queue_table(page)
            by_prompt = {row[4]: row for row in rows if len(row) == 5}  # job, from, where, model, prompt
            if {"a lighthouse at dusk", "a blue square on grey"} <= by_prompt.keys():
                break
            page.wait_for_timeout(500)
        assert {"a lighthouse at dusk", "a blue square on grey"} <= by_prompt.keys(), rows
        mine, theirs = by_prompt["a lighthouse at dusk"], by_prompt["a blue square on grey"]
        assert mine[:2] == ["txt2img", "you"] and theirs[:2] == ["txt2img", "the API"]
        assert {mine[2], theirs[2]} == {"worker-1 (cpu)", "worker-2 (cpu)"}, rows  # one job on each worker, each named
    finally:
        stop_api.cancel()
        page.get_by_role("tab", name="Generate").click()
        page.click("#stop")
        api_thread.join(60)
