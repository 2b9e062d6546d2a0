"""Real parts for the server tests: a uvicorn on loopback in a thread, a redis-server
subprocess the tests own, the tiny-random model loaded once, ffprobe.

Import the fixtures you use into a test module (`from tests.server_fixtures import ...`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from server.app import bind_socket, create_app, uvicorn_config
from server.settings import Settings

TEST_MODEL = "tiny-random"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """create_app + uvicorn on 127.0.0.1:<free port>, serving from a thread."""

    def __init__(self, settings: Settings, model: Any = None):
        import uvicorn

        self.settings = settings
        self.app = create_app(settings, model=model)
        self.server = uvicorn.Server(uvicorn_config(self.app, settings, log_level="warning"))
        self.socket = bind_socket(settings)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="uvicorn-test", daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"
        self.ws_url = f"ws://127.0.0.1:{settings.port}/v1/realtime/video"

    @property
    def state(self):
        return self.app.state.server

    def start(self, ready_timeout: float = 120.0) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self.thread.is_alive():
                raise RuntimeError("the test server exited during startup")
            time.sleep(0.1)
        raise RuntimeError(f"the test server was not ready within {ready_timeout} s: {self.state.load_error}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.socket.close()

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def server_settings(tmp: Path, **overrides: Any) -> Settings:
    """Test defaults: tiny model, no real-time pacing (tests run as fast as the model)."""
    values: dict[str, Any] = dict(model=TEST_MODEL, host="127.0.0.1", port=free_port(), data_dir=tmp,
                                  stream_lead_s=None, start_timeout_s=2.0, max_sessions=4, stats_interval_s=0.2,
                                  shutdown_grace_s=5.0)
    values.update(overrides)
    return Settings(**values)


@contextmanager
def live_server(tmp: Path, model: Any = None, **overrides: Any) -> Iterator[LiveServer]:
    server = LiveServer(server_settings(tmp, **overrides), model).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model():
    """The real engine's tiny-random model, loaded once for every server test."""
    from engine import load_model

    return load_model(TEST_MODEL)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory) -> Iterator[LiveServer]:
    """A shared server with default test settings (one per test module)."""
    with live_server(tmp_path_factory.mktemp("server"), tiny_model) as running:
        yield running


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A redis-server subprocess on a free loopback port, owned by the tests."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def ffprobe(path: Path) -> dict:
    """Stream facts of a video file, frames counted by decoding (-count_frames)."""
    if shutil.which("ffprobe") is None:
        pytest.fail("ffprobe is missing: apt-get install ffmpeg")
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=codec_name,profile,width,height,nb_read_frames,avg_frame_rate"
                          ":format=format_name", "-of", "json", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["streams"], f"no video stream in {path}: {out.stdout}"
    return {**facts["streams"][0], "format_name": facts["format"]["format_name"]}


def run(coro):
    """Run a coroutine from a sync test."""
    return asyncio.run(coro)


class Received:
    """Everything a WebSocket client got until the server closed: JSON messages in order,
    each `video.chunk` paired with the binary message that followed it, the close code."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.media: list[tuple[dict, bytes]] = []
        self.close_code: int | None = None
        self.arrivals: list[float] = []  # monotonic time of each media pair

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    @property
    def error(self) -> dict | None:
        errors = self.of_type("error")
        return errors[-1]["error"] if errors else None


async def receive_all(ws, received: Received | None = None, timeout: float = 60.0, until=None) -> Received:
    """Read until the server closes (or `until(received)` is true); asserts every
    video.chunk is immediately followed by one binary message of the announced size."""
    from websockets.exceptions import ConnectionClosed

    received = received or Received()
    try:
        while until is None or not until(received):
            message = await asyncio.wait_for(ws.recv(), timeout)
            assert isinstance(message, str), "binary message without video.chunk metadata before it"
            parsed = json.loads(message)
            received.messages.append(parsed)
            if parsed["type"] == "video.chunk":
                data = await asyncio.wait_for(ws.recv(), timeout)
                assert isinstance(data, bytes), "video.chunk not followed by a binary message"
                assert len(data) == parsed["bytes"]
                received.media.append((parsed, data))
                received.arrivals.append(time.monotonic())
    except ConnectionClosed:
        pass
    if until is None:
        received.close_code = ws.close_code
    return received


async def one_session(ws_url: str, start: dict | None, *, send: list[Any] = (), headers=None,
                      timeout: float = 60.0) -> Received:
    """Connect, send `start` then `send` (str/bytes/dict messages), read until closed."""
    import websockets
    from websockets.exceptions import ConnectionClosed

    async with websockets.connect(ws_url, additional_headers=headers, max_size=2**24) as ws:
        try:
            for message in ([start] if start is not None else []) + list(send):
                await ws.send(json.dumps(message) if isinstance(message, dict) else message)
        except ConnectionClosed:
            pass  # refused before reading it (a bad key): what it said is still to be read
        return await receive_all(ws, timeout=timeout)


def stalled_client(port: int, start: dict):
    """A WebSocket client that sends session.start and then never reads: a raw socket with a
    small receive buffer (client libraries keep reading into their own buffers)."""
    import base64
    import os
    import struct

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/realtime/video HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    payload, mask = json.dumps(start).encode(), os.urandom(4)
    assert len(payload) < 2**16
    header = bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload))  # FIN text, masked, 16-bit length
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock
