"""The one place the server touches the engine's streaming API: opening streams, asking for
chunks, switching prompts (with a rewind), closing. Engine calls are blocking CPU/GPU work,
so every one runs on a worker thread, never on the event loop.

Streams are handles (`engine.scheduler.SessionHandle`) of one `BatchScheduler` per model,
whose thread runs the forwards of every stream. With batching on (the default) it batches
the streams' denoising steps into one forward; off, it runs one stream's forward at a time
(max_batch=1: the baseline the benchmark compares against). Clip jobs are streams of the
same scheduler, so streams and jobs share one set of cache rows: one memory budget.
"""

from __future__ import annotations

import asyncio
import math
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

# How long a worker waits on a chunk before re-checking that its stream is still open: a
# closed handle is never woken by the scheduler.
CHUNK_POLL_S = 0.5
# Chunk boundaries a stream can rewind to: what a live stream may hold generated but
# unsent (the scheduler's queue, the chunk in progress, the server's outbox and the chunk
# waiting for its send time), with one to spare.
REWIND_CHUNKS = 5


class StreamPool:
    """One per loaded model."""

    def __init__(self, model: Any, max_sessions: int, batching: bool = True):
        from engine.scheduler import BatchScheduler

        self.model = model
        self.batching = batching
        # Per stream at most one chunk in flight plus a close: 2 threads each.
        self._executor = ThreadPoolExecutor(max_workers=2 * max_sessions + 2, thread_name_prefix="framecast-stream")
        # One chunk queued ahead per stream keeps the model busy; a prompt switch discards it.
        self.scheduler = BatchScheduler(model, max_sessions=max_sessions, queue_chunks=1,
                                        max_batch=None if batching else 1, rewind_chunks=REWIND_CHUNKS).start()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self, prompt: str, seed: int | None):
        """A SessionHandle. Raises the engine's InvalidInput (bad prompt/seed) or CapacityError."""
        return await self.run(self.scheduler.open, prompt, seed)

    async def next_chunk(self, handle, work: Callable[[Any], Any] = lambda chunk: chunk) -> Any:
        """The stream's next chunk (engine Chunk), passed through `work` on the worker thread.
        Raises SessionClosed once the stream is closed."""
        return await self.run(lambda: work(self._wait_chunk(handle)))

    @staticmethod
    def _wait_chunk(handle):
        while True:
            try:
                return handle.next_chunk(timeout=CHUNK_POLL_S)
            except queue.Empty:
                continue

    async def switch(self, handle, prompt: str, event_id: str, resume_after: int | None) -> int:
        """Switch the stream's prompt; chunks after `resume_after` are discarded and the
        stream rewound (SessionHandle.switch_prompt). Returns the first chunk under the new prompt."""
        return await asyncio.wrap_future(handle.switch_prompt(prompt, event_id, resume_after))

    def close(self, handle) -> Future:
        """Close on a worker thread; the future completes once the engine let go of the stream
        (the scheduler reaps its cache row before it hands it out again)."""
        try:
            return self._executor.submit(handle.close)
        except RuntimeError:  # executor already shut down: closing is only flagging the stream
            handle.close()
            done: Future = Future()
            done.set_result(None)
            return done

    def generate_clip(self, prompt: str, seconds: float, seed: int | None,
                      progress: Callable[[float], None] | None = None):
        """Blocking (a job worker's thread): a whole clip, uint8 [T, H, W, 3], made as one more
        stream of the scheduler."""
        import numpy as np

        total = max(1, round(seconds * self.model.fps))
        chunks = math.ceil(total / self.model.frames_per_chunk)
        handle = self.scheduler.open(prompt, seed)
        try:
            frames = []
            for i in range(chunks):
                frames.append(self._wait_chunk(handle).frames)
                if progress is not None:
                    progress((i + 1) / chunks)
        finally:
            handle.close()
        return np.concatenate(frames)[:total]

    def shutdown(self) -> None:
        self.scheduler.shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)
