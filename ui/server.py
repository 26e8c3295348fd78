"""How the web server is exposed: login, the --listen warning, and the Host check on loopback."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServerOptions:
    """From the command line (see app.py)."""

    listen: bool = False
    port: int = 7860
    auth: tuple[tuple[str, str], ...] = ()  # (user, password) pairs; empty = no login
    max_upload_mb: int = 200
    api: bool = False  # AUTOMATIC1111's web API under /sdapi/v1 (--api)
    api_auth: tuple[tuple[str, str], ...] = ()  # HTTP Basic pairs for /sdapi only (--api-auth)

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"


def parse_credentials(text: str, source: str = "--gradio-auth") -> tuple[tuple[str, str], ...]:
    """A1111's form: `user:pass[,user2:pass2]`; a file may also put one pair per line."""
    pairs = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        user, colon, password = item.partition(":")
        if not colon or not user or not password:
            # Never echo the item: it may be a password typed without its user.
            raise ValueError(f"{source}: expected user:password pairs separated by commas (item {len(pairs) + 1} is not one)")
        pairs.append((user, password))
    if not pairs:
        raise ValueError(f"{source}: no user:password pair given")
    return tuple(pairs)


def exposure_warnings(options: ServerOptions) -> list[str]:
    if options.listen and not options.auth:
        return ["Serving on every network interface (--listen) without a login: anyone on your network can generate images, "
                "see what this server shows and change settings. Add --gradio-auth user:password (or --gradio-auth-path FILE)."] + api_warnings(options)
    return api_warnings(options)


def api_warnings(options: ServerOptions) -> list[str]:
    if options.listen and options.api and not options.api_auth:
        return ["The A1111 API (--api) is served on every network interface without --api-auth: anyone on your network can "
                "generate images through /sdapi/v1. Add --api-auth user:password."]
    return []


def is_loopback_host(host_header: str) -> bool:
    """True for `localhost`, `127.x.x.x`, `[::1]`, with or without a port."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """ASGI middleware for a server bound to 127.0.0.1: refuse requests whose Host header names another
    site, so a web page cannot reach Likeness through a DNS name that resolves to 127.0.0.1 (DNS rebinding)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and not is_loopback_host(Headers(scope=scope).get("host", "")):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            response = PlainTextResponse("Refused: this Likeness server answers only to localhost / 127.0.0.1 "
                                         "(start it with --listen to serve other names).", status_code=400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
