"""Live Likeness apps with `--api` on, for the A1111 API tests (httpx against the real server)."""
from __future__ import annotations

import httpx
import pytest

from tests.ui.conftest import start_app

API_USER, API_PASSWORD = "alice", "s3cret:with:colons"


@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    info, demo = start_app(tmp_path_factory.mktemp("api-app"), api=True)
    info["client"] = httpx.Client(base_url=info["url"], timeout=300)
    yield info
    info["client"].close()
    demo.close()


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    info, demo = start_app(tmp_path_factory.mktemp("api-auth-app"), api=True, api_auth=((API_USER, API_PASSWORD), ("bob", "other")))
    yield info
    demo.close()
