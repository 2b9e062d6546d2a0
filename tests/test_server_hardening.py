"""Hostile input and exhaustion, one section per item of issue #18, each as an outside client
on loopback would meet it: deep JSON, credentials in logs, oversized bodies, 405 Allow,
clients that read nothing, job floods, lax types, and the capacity a machine can hold."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import websockets

from clients.protocol import SUBPROTOCOL, CloseCode, api_key_subprotocol
from tests.client_fixtures import ServerProcess
from tests.server_fixtures import (live_server, one_session, receive_all, run, server, stalled_client,  # noqa: F401
                                   tiny_model)

START = {"type": "session.start", "prompt": "a red ball", "seed": 1, "max_seconds": 0.5}
KEY = "hardening-key-5f0c2a9e"  # long enough to be redacted wherever it appears
NESTED = "[" * 30000 + "]" * 30000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def keyed_process():
    """`framecast serve` as a user runs it, with a key and the access log on."""
    with ServerProcess("--log-level", "info", env={"FRAMECAST_API_KEYS": KEY, "FRAMECAST_MAX_SESSIONS": "2"},
                       tmp=Path(tempfile.mkdtemp(prefix="framecast-hardening-"))) as process:
        yield process


# --- 1. deeply nested JSON ------------------------------------------------------------------

def test_deeply_nested_json_on_the_websocket_is_invalid_json(server, caplog):
    with caplog.at_level(logging.INFO):
        got = run(one_session(server.ws_url, NESTED))
    assert got.error["code"] == "invalid_json" and got.close_code == CloseCode.BAD_REQUEST
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a traceback was logged"


# --- 2. credentials stay out of the logs; the browser's key travels out of the URL ------------

def test_the_key_travels_as_a_websocket_subprotocol_and_is_never_logged(keyed_process):
    url = keyed_process.url.replace("http", "ws") + "/v1/realtime/video"

    async def by_subprotocol(key: str):
        from websockets.exceptions import ConnectionClosed

        async with websockets.connect(url, subprotocols=[SUBPROTOCOL, api_key_subprotocol(key)]) as ws:
            chosen = ws.subprotocol
            try:
                await ws.send(json.dumps(START))
            except ConnectionClosed:
                pass  # refused before reading it: what it said is still to be read
            return chosen, await receive_all(ws)

    chosen, got = run(by_subprotocol(KEY))
    assert chosen == SUBPROTOCOL and got.of_type("session.done")
    _, refused = run(by_subprotocol("not-the-key"))
    assert refused.error["code"] == "unauthorized" and refused.close_code == CloseCode.UNAUTHORIZED

    # The old ways still work, and leave no key in the log either.
    assert run(one_session(f"{url}?api_key={KEY}", START)).of_type("session.done")
    assert httpx.get(f"{keyed_process.url}/?api_key={KEY}").status_code == 200
    assert httpx.get(keyed_process.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    time.sleep(0.5)  # the log is written by another process
    log = keyed_process.log_path.read_text()
    assert "api_key=[redacted]" in log  # the access lines are there, redacted
    assert KEY not in log and api_key_subprotocol(KEY) not in log


# --- 4. 405 names the real methods ------------------------------------------------------------

@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/v1/videos", "GET, POST"),
    ("POST", "/v1/videos/video_abc", "GET, DELETE"),
    ("DELETE", "/v1/videos/video_abc/content", "GET"),
    ("POST", "/v1/models", "GET"),
    ("PUT", "/index.html", "GET, HEAD"),  # the static viewer
])
def test_405_carries_the_allowed_methods(server, method, path, allow):
    r = httpx.request(method, server.url + path)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == allow
