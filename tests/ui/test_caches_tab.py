"""The Caches tab in a real browser: per-cache stats after generations, clear one, clear all."""
from __future__ import annotations

from tests.ui.test_generate_tab import set_number


def row_of(page, name: str) -> list[str]:
    """The table's cells in order (the Dataframe renders one per line): the row that starts with `name`."""
    cells = [line.strip() for line in page.inner_text("#caches_table").splitlines() if line.strip()]
    start = cells.index(name)
    return cells[start:start + 8]


def test_caches_tab_shows_stats_and_clears(page, live_app):
    manager = live_app["manager"]
    page.fill("#prompt textarea", "a harbour at noon")
    set_number(page, "steps", 4)
    set_number(page, "width", 128)
    set_number(page, "height", 128)
    page.get_by_text("Approximate cache (trades exactness for speed)").click()
    page.check("#approximate_cache input")
    for seed in (1, 2):  # the second run: a prompt-memo hit, and an approximate-cache hit on the same prompt
        page.locator("#seed input").fill(str(seed))
        page.click("#generate")
        page.wait_for_function(f"document.querySelector('#breakdown') && (document.querySelector('#breakdown')?.innerText || '').includes('seeds {seed}')",
                               timeout=90000)
    memo, approx = manager.prompt_memo.stats(), manager.approximate_cache().stats()
    assert memo.hits >= 1 and approx.hits == 1 and approx.entries >= 1

    page.get_by_role("tab", name="Caches").click()
    page.wait_for_function("(document.querySelector('#caches_table')?.innerText || '').includes('approximate latents')", timeout=30000)
    approx_row = row_of(page, "approximate latents")
    assert approx_row[1:3] == ["lcbfu", str(manager.approximate_cache().stats().entries)]
    assert approx_row[3].endswith("KiB") and approx_row[4:7] == ["1", "1", "50%"]
    assert "prompt embeddings" in page.inner_text("#caches_table")

    page.click("#clear_approximate_latents")
    page.wait_for_function("(document.querySelector('#caches_message')?.innerText || '').includes('Cleared approximate latents')", timeout=30000)
    assert manager.approximate_cache().stats().entries == 0
    assert manager.prompt_memo.stats().entries >= 1, "clearing one cache leaves the others"

    page.click("#clear_all_caches")
    page.wait_for_function("(document.querySelector('#caches_message')?.innerText || '').includes('Cleared every cache')", timeout=30000)
    assert all(cache.stats().entries == 0 for cache in manager.caches())
    page.wait_for_function("(document.querySelector('#caches_table')?.innerText || '').includes('0/64')", timeout=30000)
    assert row_of(page, "prompt embeddings")[2:4] == ["0/64", "0 B"]


def test_api_approximate_cache_flag_and_clear(live_app):
    from gradio_client import Client

    from pipelines.catalog import DEMO_MODEL_NAME

    manager = live_app["manager"]
    client = Client(live_app["url"], verbose=False)
    form = [DEMO_MODEL_NAME, "api approx", "", 4, 7.0, 1, 64, 64, "Euler", 1, 1, "auto", 1, 0, "uniform", "off", 0.08]
    client.predict(*form, api_name="/generate")  # an older client's 17 inputs: the new field takes its default (off)
    assert manager.approximate_cache().stats().entries == 0
    form[5] = 3  # another seed: not an exact repeat (the exact-repeat latent cache would skip the denoise)
    client.predict(*form, True, api_name="/generate")
    assert manager.approximate_cache().stats().entries >= 1
    hits = manager.approximate_cache().hits
    form[5] = 2  # another seed: no exact repeat, the same prompt resumes from the kept latents
    client.predict(*form, True, api_name="/generate")
    assert manager.approximate_cache().hits == hits + 1
    client.predict(api_name="/clear_caches")
    assert all(cache.stats().entries == 0 for cache in manager.caches())
