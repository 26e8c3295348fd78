"""The start-up log names the demo model's build only when something is built (issue 17: it said
"preparing the demo model..." at every start)."""
from __future__ import annotations

import logging

from pipelines.demo_model import ensure_random_demo


def test_the_build_is_logged_once_then_the_folder_is_reused(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="likeness"):
        first = ensure_random_demo(tmp_path)
    built = [r.getMessage() for r in caplog.records if "building the tiny random demo" in r.getMessage()]
    assert len(built) == 1 and str(first) in built[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="likeness"):
        assert ensure_random_demo(tmp_path) == first
    assert not [r for r in caplog.records if r.name == "likeness"], "nothing to say when the demo is already there"
