"""--api and --api-auth on the command line (app.py) -> ServerOptions."""
from __future__ import annotations

import pytest

from app import build_parser, server_options
from ui.server import ServerOptions, exposure_warnings


def test_api_flags_reach_the_server_options():
    options = server_options(build_parser().parse_args(["--api", "--api-auth", "alice:pw1, bob:pw:2"]))
    assert options.api is True and options.api_auth == (("alice", "pw1"), ("bob", "pw:2"))
    assert server_options(build_parser().parse_args([])).api is False  # off unless asked, as in A1111


def test_a_malformed_api_auth_is_refused_without_echoing_it():
    with pytest.raises(ValueError, match="--api-auth") as refused:
        server_options(build_parser().parse_args(["--api", "--api-auth", "justapassword"]))
    assert "justapassword" not in str(refused.value)


def test_listening_with_the_api_and_no_api_auth_warns():
    assert any("--api-auth" in w for w in exposure_warnings(ServerOptions(listen=True, api=True, auth=(("u", "p"),))))
    assert not any("--api-auth" in w for w in exposure_warnings(ServerOptions(listen=True, api=True, auth=(("u", "p"),), api_auth=(("a", "b"),))))
    assert not exposure_warnings(ServerOptions(api=True))  # loopback only
