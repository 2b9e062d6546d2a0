"""API keys: `Authorization: Bearer <key>` on HTTP and WebSocket. Browsers cannot set
headers on a WebSocket: they offer the key as a subprotocol (clients.protocol.
api_key_subprotocol), which stays out of URLs, logs and history; `?api_key=` still works.
No keys configured = no authentication."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.websockets import WebSocket

from clients.protocol import api_key_from_subprotocols

from .errors import ApiError

bearer = HTTPBearer(auto_error=False, description="an API key, when the server is configured with keys")


def check_key(accepted: list[str], key: str | None) -> str | None:
    """The caller's key when accepted (None when the server needs none); else ApiError."""
    if not accepted:
        return None  # with no keys configured a key names nobody: no per-key limits
    if not key:
        raise ApiError("unauthorized", "an API key is required (Authorization: Bearer <key>)")
    # Compare against every key so the time taken does not say which prefix matched.
    if not any([secrets.compare_digest(key.encode(), k.encode()) for k in accepted]):
        raise ApiError("unauthorized", "invalid API key")
    return key


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


async def require_api_key(request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str | None:
    """FastAPI dependency for HTTP routes."""
    return check_key(request.app.state.server.settings.api_keys, credentials.credentials if credentials else None)


def websocket_key(websocket: WebSocket, accepted: list[str]) -> str | None:
    key = (bearer_token(websocket.headers.get("authorization"))
           or api_key_from_subprotocols(websocket.scope.get("subprotocols", []))
           or websocket.query_params.get("api_key"))
    return check_key(accepted, key)


@dataclass(frozen=True)
class Caller:
    """Whom a request counts against for per-caller limits: its API key, or, when the
    server has no keys, the client's address."""

    owner: str | None  # "key:<hash>" (never the key itself: it is stored with jobs) or "address:<ip>"
    label: str  # for messages

    @property
    def by_key(self) -> bool:
        return bool(self.owner and self.owner.startswith("key:"))


def caller(key: str | None, address: str | None) -> Caller:
    if key is not None:
        return Caller("key:" + hashlib.sha256(key.encode()).hexdigest()[:16], "this API key")
    if address:
        return Caller("address:" + address, f"the address {address}")
    return Caller(None, "")
