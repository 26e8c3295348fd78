"""The approximate-cache row of `bench --suite cache` asks the demo model in its own words."""
from __future__ import annotations

from pipelines.bench.cache import demo_prompt_stream
from pipelines.demo import scenes


def test_demo_prompt_stream_rephrases_earlier_scenes_in_the_demo_vocabulary():
    stream = demo_prompt_stream(200, seed=3)
    assert stream == demo_prompt_stream(200, seed=3) and stream != demo_prompt_stream(200, seed=4)
    assert not stream[0][1]  # nothing to rephrase before the first scene
    rephrased = [prompt for prompt, again in stream if again]
    assert 70 <= len(rephrased) <= 130
    new = {prompt for prompt, again in stream if not again}
    assert len(new) > 80  # new scenes are mostly different prompts
    known = scenes.known_words()
    for prompt, _ in stream:
        assert set(prompt.replace(",", " ").split()) <= known, prompt


def test_the_token_merging_rows_measure_both_ratios(monkeypatch):
    """Section (e) on a small pipeline with attention at full resolution: a row per ratio, each with its own unmerged
    run, the merged picture close to the unmerged one but not the same, and the table printed."""
    from pipelines.bench import cache
    from pipelines.demo_model import build_tiny_sd15_pipeline

    def small_pipe():
        pipe = build_tiny_sd15_pipeline(seed=5, unet_channels=(32, 64, 64), sd15_block_layout=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    monkeypatch.setattr(cache, "mid_size_pipe", small_pipe)
    monkeypatch.setattr(cache, "say", lambda text="": None)
    data = cache.token_merging_section(quick=True)
    assert [row["ratio"] for row in data["rows"]] == list(cache.TOKEN_MERGING_RATIOS)
    for row in data["rows"]:
        assert row["seconds"] > 0 and row["baseline_seconds"] > 0 and row["speedup"] == row["baseline_seconds"] / row["seconds"]
        assert 10 < row["psnr"] < float("inf"), row
    report = "\n".join(cache.token_merging_report(data))
    assert all(f"{row['psnr']:.1f} dB" in report for row in data["rows"]) and "speedup" in report
