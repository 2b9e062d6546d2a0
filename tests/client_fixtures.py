"""Shared helpers for the client tests: test pictures, ffprobe, and a real
`framecast serve` on a free loopback port."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs"
# The installed console script, as users run it.
FRAMECAST = [str(Path(sys.executable).with_name("framecast"))]
SERVER_START_TIMEOUT_S = 120.0  # model load + warm-up on a busy 2-core machine


def moving_square(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """[n, H, W, 3] uint8: a bright square sliding right over a gradient; each frame differs."""
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[..., 2] = np.linspace(0, 200, width, dtype=np.uint8)[None, None, :]
    for i in range(n):
        x = (i * 4) % (width - 16)
        frames[i, 16:32, x:x + 16] = (250, 250, 40)
    return frames


def ffprobe(path) -> dict:
    """Stream facts of a media file, counted by decoding (nb_read_frames)."""
    # .ci/run installs ffmpeg: a missing ffprobe is a broken setup, not a reason to skip
    assert shutil.which("ffprobe"), "ffprobe not installed (apt-get install -y ffmpeg)"
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,width,height,nb_read_frames,duration:format=duration,format_name",
                          "-of", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    return free_port()


class ServerProcess:
    """`framecast serve --model tiny-random` in a subprocess on a free port."""

    def __init__(self, *extra: str, env: dict | None = None, tmp: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.env = {**os.environ, **(env or {})}
        if tmp is not None:  # keep job files out of the user's data dir
            self.env.setdefault("FRAMECAST_DATA_DIR", str(tmp))
        self.proc: subprocess.Popen | None = None
        self.log_path = (tmp or Path("/tmp")) / f"framecast-serve-{self.port}.log"

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*FRAMECAST, "serve", "--model", "tiny-random", "--host", "127.0.0.1",
                                      "--port", str(self.port), *self.extra],
                                     cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"framecast serve exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"framecast serve not ready after {SERVER_START_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """Die at once, like a crashed host: no close frames, no session.done."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`framecast ARGS` in a subprocess: exit code and messages as a user sees them."""
    clean = {k: v for k, v in os.environ.items() if k not in ("FRAMECAST_URL", "FRAMECAST_API_KEY")}
    return subprocess.run([*FRAMECAST, *args], cwd=REPO, env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


# -- servers shared by every client test module in one pytest run ------------------------
# (pytest would start a session fixture imported into two modules twice.)
_SHARED: dict[tuple, ServerProcess] = {}


def shared_server(**env: str) -> ServerProcess:
    """A running server configured by FRAMECAST_* variables, started once per test run."""
    key = tuple(sorted(env.items()))
    if key not in _SHARED or _SHARED[key].proc.poll() is not None:
        proc = ServerProcess(env=env, tmp=Path(tempfile.mkdtemp(prefix="framecast-test-")))
        _SHARED[key] = proc.start()
        atexit.register(proc.stop)
    return _SHARED[key]


class DroppingProxy:
    """A TCP relay on loopback whose connections the test can cut, like a network drop,
    while it keeps listening so the client can reconnect."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bytes_down = 0  # server -> client, all connections
        self.connections = 0
        self._transports: list = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "DroppingProxy":
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def drop_all(self) -> None:
        """Reset every open connection (no WebSocket close frame reaches the client)."""
        def cut():
            for writer in self._transports:
                writer.transport.abort()
            self._transports.clear()
        self._loop.call_soon_threadsafe(cut)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _handle(self, client_reader, client_writer) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._transports += [client_writer, upstream_writer]

        async def pipe(reader, writer, count: bool):
            try:
                while data := await reader.read(65536):
                    if count:
                        self.bytes_down += len(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pipe(client_reader, upstream_writer, False), pipe(upstream_reader, client_writer, True))


def wait_until(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
