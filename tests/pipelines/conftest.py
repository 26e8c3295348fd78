"""Fixtures for the pipelines tests: a Milvus Lite server process (the approximate cache's shared
store as other processes and machines reach it)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def lite_server(tmp_path):
    """One `milvus-lite server` process on a free loopback port; yields its URI."""
    from pipelines.caches.milvus_store import lite_engine

    if lite_engine() < 3:
        pytest.skip("Milvus Lite 2.4 has no server command (Milvus Lite 3 and Milvus itself have)")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "server-data"),
                               "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, "the Milvus Lite server did not start"
            time.sleep(0.2)
    server.uri = f"http://127.0.0.1:{port}"
    yield server
    server.kill()
    server.wait()
