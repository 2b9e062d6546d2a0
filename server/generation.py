"""The one place the server touches the engine's streaming API: opening streams, asking
for chunks, switching prompts, closing. Engine calls are blocking CPU/GPU work, so every
one of them runs on a worker thread, never on the event loop.

With batching on (the default), streams are handles of one `engine.scheduler.BatchScheduler`
per model, whose thread batches the denoising steps of all streams into one forward; with it
off, each stream runs its own forwards on its own worker thread (the baseline the
benchmark compares against).
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

log = logging.getLogger("framecast.server")
T = TypeVar("T")

# How long a worker waits on a scheduled chunk before re-checking that its stream is
# still open: a closed handle is never woken by the scheduler.
CHUNK_POLL_S = 0.5


class Generator:
    """One per loaded model."""

    def __init__(self, model: Any, max_sessions: int, batching: bool = True):
        self.model = model
        # Per stream at most one chunk in flight plus an update or a close: 2 threads each.
        self._executor = ThreadPoolExecutor(max_workers=2 * max_sessions + 2, thread_name_prefix="framecast-gen")
        self._scheduler = None
        if batching:
            from engine.scheduler import BatchScheduler

            # The server's own per-stream queue buffers encoded chunks; one generated chunk
            # ahead in the scheduler keeps the model busy without adding prompt-switch lag.
            self._scheduler = BatchScheduler(model, max_sessions=max_sessions, queue_chunks=1).start()

    @property
    def batching(self) -> bool:
        return self._scheduler is not None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self, prompt: str, seed: int | None) -> "GenerationStream":
        """Raises the engine's InvalidInput (bad prompt/seed) or CapacityError (no cache row)."""
        if self._scheduler is not None:
            handle = await self.run(self._scheduler.open, prompt, seed)
            return GenerationStream(self, handle, scheduled=True)
        session = await self.run(self.model.open_session, prompt, seed)
        return GenerationStream(self, session, scheduled=False)

    def generate_clip(self, prompt: str, seconds: float, seed: int | None,
                      progress: Callable[[float], None] | None = None):
        """Blocking (a job worker's thread): a whole clip, uint8 [T, H, W, 3]. With batching
        it runs as one more scheduled stream, so a running job holds one of the same cache
        rows streams do and batches with them: one memory budget for both."""
        if self._scheduler is None:
            return self.model.generate_clip(prompt, seconds, seed, progress=progress)
        import numpy as np

        total = max(1, round(seconds * self.model.fps))
        chunks = math.ceil(total / self.model.frames_per_chunk)
        stream = GenerationStream(self, self._scheduler.open(prompt, seed), scheduled=True)
        try:
            frames = []
            for i in range(chunks):
                frames.append(stream._next_chunk().frames)
                if progress is not None:
                    progress((i + 1) / chunks)
        finally:
            stream._engine.close()
        return np.concatenate(frames)[:total]

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)


class GenerationStream:
    def __init__(self, generator: Generator, engine_stream: Any, scheduled: bool):
        self._generator = generator
        self._engine = engine_stream  # engine StreamSession or scheduler SessionHandle
        self._scheduled = scheduled
        self._closed = False
        self._busy = threading.Lock()  # unscheduled: held while the engine makes a chunk

    def _next_chunk(self):
        if not self._scheduled:
            with self._busy:
                return self._engine.next_chunk()
        while True:
            try:
                return self._engine.next_chunk(timeout=CHUNK_POLL_S)  # SessionClosed once closed
            except queue.Empty:
                continue

    async def produce(self, work: Callable[[Any], T]) -> T:
        """The next chunk, handed to `work` on the same worker thread (encoding stays off the
        event loop too); returns what `work` returns. Cancelling the await leaves the thread
        to finish its chunk, after which `close` takes effect."""
        return await self._generator.run(lambda: work(self._next_chunk()))

    async def update_prompt(self, prompt: str, event_id: str | None) -> int:
        """The chunk index where the new prompt takes effect."""
        return await self._generator.run(self._engine.update_prompt, prompt, event_id)

    def close(self) -> Future:
        """Close on a worker thread; the future completes once the engine let go of it."""
        if self._closed:
            done: Future = Future()
            done.set_result(None)
            return done
        self._closed = True
        try:
            return self._generator._executor.submit(self._release)
        except RuntimeError:  # executor already shut down: closing is only flagging the stream
            self._engine.close()
            done = Future()
            done.set_result(None)
            return done

    def _release(self) -> None:
        if self._scheduled:
            self._engine.close()  # the scheduler reaps its row before it hands it out again
            return
        # An unscheduled session owns its cache: once a chunk in progress is done, drop the
        # session, so that its memory is free by the time its slot is (admission counts on it).
        with self._busy:
            self._engine.close()
            self._engine = None
