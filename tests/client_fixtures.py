"""Shared helpers for the client tests: test pictures, ffprobe, and a real
`framecast serve` on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs"
FRAMECAST = [sys.executable, "-m", "clients.cli"]
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
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe not installed (apt-get install -y ffmpeg)")
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp=tmp_path_factory.mktemp("serve")) as proc:
        yield proc


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`framecast ARGS` in a subprocess: exit code and messages as a user sees them."""
    clean = {k: v for k, v in os.environ.items() if k not in ("FRAMECAST_URL", "FRAMECAST_API_KEY")}
    return subprocess.run([*FRAMECAST, *args], cwd=REPO, env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
