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
