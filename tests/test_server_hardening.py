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

from clients.protocol import CloseCode
from tests.client_fixtures import ServerProcess, run_cli
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
