"""Where the server is and which key to present: arguments first, then environment.

The client reads FRAMECAST_URL and FRAMECAST_API_KEY itself (it is a separate
install from the server, so it cannot share the server's Settings class).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from clients.framecast_client.errors import InvalidAddress
from clients.protocol import REALTIME_PATH

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "FRAMECAST_URL"
API_KEY_ENV = "FRAMECAST_API_KEY"


@dataclass(frozen=True)
class Endpoint:
    http_url: str  # scheme://host:port[/prefix], no trailing slash
    api_key: str | None

    @property
    def realtime_url(self) -> str:
        parts = urlsplit(self.http_url)
        scheme = {"http": "ws", "https": "wss"}[parts.scheme]
        return urlunsplit((scheme, parts.netloc, parts.path + REALTIME_PATH, "", ""))

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def resolve_endpoint(url: str | None = None, api_key: str | None = None) -> Endpoint:
    """Build an Endpoint; accepts http(s):// or ws(s):// and a bare host:port."""
    raw = url or os.environ.get(URL_ENV) or DEFAULT_URL
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise InvalidAddress(f"not a server address: {raw!r} (expected http://host:port)")
    path = parts.path.rstrip("/")
    if path.endswith(REALTIME_PATH):  # someone pasted the WebSocket URL itself
        path = path[: -len(REALTIME_PATH)]
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return Endpoint(urlunsplit((scheme, parts.netloc, path, "", "")), key or None)
