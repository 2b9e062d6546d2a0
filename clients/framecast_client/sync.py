"""Blocking wrapper for scripts and notebooks.

The async client runs on its own event loop in a daemon thread, so this works the
same in a plain script and inside Jupyter (whose own loop is already running).

    client = FramecastClientSync()
    with client.stream("a red ball", max_seconds=2) as stream:
        for frame in stream.frames():
            ...
    client.generate_video("a red ball", "clip.mp4", seconds=2)
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

from clients.framecast_client.client import FramecastClient
from clients.framecast_client.decode import Frame
from clients.framecast_client.stream import MediaChunk, PromptSwitch, Stream


class _LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="framecast-client", daemon=True)
        self._thread.start()

    def run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen) -> Iterator:
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(agen.aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class SyncStream:
    """Blocking view of a `Stream`; the same attributes (started, stats, prompt_events...)."""

    def __init__(self, stream: Stream, runner: _LoopThread):
        self._stream = stream
        self._runner = runner

    def __getattr__(self, name):  # started, stats, done, prompt_events, first_media_at, ...
        return getattr(self._stream, name)

    def frames(self) -> Iterator[Frame]:
        return self._runner.iterate(self._stream.frames())

    def media(self) -> Iterator[MediaChunk]:
        return self._runner.iterate(self._stream.media())

    def switch_prompt(self, prompt: str, event_id: str | None = None) -> PromptSwitch:
        return self._runner.run(self._stream.switch_prompt(prompt, event_id))

    def wait_applied(self, event_id: str, timeout: float | None = None) -> int:
        return self._runner.run(self._stream.wait_applied(event_id, timeout))

    def pause(self) -> None:
        self._runner.run(self._stream.pause())

    def resume(self) -> None:
        self._runner.run(self._stream.resume())

    def ping(self) -> float:
        return self._runner.run(self._stream.ping())

    def stop(self):
        return self._runner.run(self._stream.stop())

    def close(self) -> None:
        self._runner.run(self._stream.close())

    def __enter__(self) -> "SyncStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FramecastClientSync:
    def __init__(self, url: str | None = None, api_key: str | None = None, **options):
        self._runner = _LoopThread()
        try:
            self._client: FramecastClient = self._runner.run(self._make(url, api_key, options))
        except BaseException:
            self._runner.stop()
            raise

    @staticmethod
    async def _make(url, api_key, options) -> FramecastClient:
        return FramecastClient(url, api_key, **options)  # httpx binds to the loop it is used on

    @property
    def endpoint(self):
        return self._client.endpoint

    def stream(self, prompt: str, **options) -> SyncStream:
        return SyncStream(self._runner.run(self._client.open_stream(prompt, **options)), self._runner)

    def create_video(self, prompt: str, **options):
        return self._runner.run(self._client.create_video(prompt, **options))

    def get_video(self, video_id: str):
        return self._runner.run(self._client.get_video(video_id))

    def list_videos(self):
        return self._runner.run(self._client.list_videos())

    def delete_video(self, video_id: str):
        return self._runner.run(self._client.delete_video(video_id))

    def list_models(self):
        return self._runner.run(self._client.list_models())

    def wait_video(self, video_id: str, **options):
        return self._runner.run(self._client.wait_video(video_id, **options))

    def download_video(self, video_id: str, path) -> int:
        return self._runner.run(self._client.download_video(video_id, path))

    def generate_video(self, prompt: str, path, **options):
        return self._runner.run(self._client.generate_video(prompt, path, **options))

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.stop()

    def __enter__(self) -> "FramecastClientSync":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
