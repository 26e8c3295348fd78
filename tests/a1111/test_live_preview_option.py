"""A1111's show_progress_type option maps onto Settings live_preview (Approx cheap / TAESD)."""
from __future__ import annotations


def test_show_progress_type_reads_and_sets_the_live_preview(api_app):
    client, manager = api_app["client"], api_app["manager"]
    assert client.get("/sdapi/v1/options").json()["show_progress_type"] == "Approx cheap"
    try:
        answer = client.post("/sdapi/v1/options", json={"show_progress_type": "TAESD"})
        assert answer.status_code == 200 and "show_progress_type" in answer.json()["applied"]
        assert manager.config.live_preview == "TAESD"
        assert client.get("/sdapi/v1/options").json()["show_progress_type"] == "TAESD"
        full = client.post("/sdapi/v1/options", json={"show_progress_type": "Full"}).json()  # not offered: ignored, said so
        assert "show_progress_type" in full["ignored"] and manager.config.live_preview == "TAESD"
    finally:
        manager.config.live_preview = "cheap"
