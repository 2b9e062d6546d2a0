"""The README's first command, served end to end: `framecast serve` with no model named
streams the embedded default model over a real WebSocket on loopback, and what arrives
shows the asked background (judged by the evaluator). Settings reach it from the
environment (FRAMECAST_BACKEND here)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from clients.framecast_client import FramecastClient
from distill.eval import evaluate_frames
from tests.server_fixtures import free_port

FRAMECAST = str(Path(sys.executable).parent / "framecast")
ROOT = Path(__file__).resolve().parent.parent


async def stream_frames(url: str, prompt: str, seconds: float) -> tuple[np.ndarray, float, str | None]:
    async with FramecastClient(url) as client:
        async with client.stream(prompt, seed=3, format="jpeg", max_seconds=seconds) as stream:
            frames = [frame.image async for frame in stream.frames()]
            return np.stack(frames), stream.started.fps, stream.started.read_as


def test_framecast_serve_streams_the_default_model(tmp_path):
    port = free_port()
    env = {**os.environ, "FRAMECAST_DATA_DIR": str(tmp_path), "FRAMECAST_BACKEND": "eager",
           "FRAMECAST_MAX_SESSIONS": "1", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([FRAMECAST, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in 180 s"
            time.sleep(0.5)
        card = httpx.get(url + "/v1/models").json()["data"][0]
        assert card["id"] == "shapes-default" and card["backend"] == "eager"  # FRAMECAST_BACKEND won
        prompt = "a red ball bouncing on a blue background"
        frames, fps, read_as = asyncio.run(stream_frames(url, prompt, 1.5))
        assert frames.shape == (24, 128, 128, 3)
        assert read_as == "a medium red circle bounces on a blue background"  # the caption it reads, said
        assert evaluate_frames(frames, prompt, fps=fps)["background_accuracy"] >= 0.9
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
