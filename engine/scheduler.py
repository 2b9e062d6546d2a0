"""Many streams, one model: a worker thread that batches the next forward of every
session that wants a chunk into one transformer call (sessions at different chunks and
steps: each row carries its own timestep and cache fill).

Each session owns one row of a pooled KV cache and a bounded queue of finished chunks.
A session whose queue is full is left out of the batch until its consumer catches up,
so a slow client slows only its own stream and memory never grows.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from .errors import CapacityError, SessionClosed
from .session import Chunk, Forward, StreamSession, check_prompt

if TYPE_CHECKING:
    from .model import StreamModel

log = logging.getLogger(__name__)


class SessionHandle:
    """What a caller holds for a scheduled stream; thread-safe."""

    def __init__(self, scheduler: "BatchScheduler", session: StreamSession, queue_chunks: int):
        self._scheduler = scheduler
        self.session = session
        self.chunks: queue.Queue[Chunk | BaseException] = queue.Queue(maxsize=queue_chunks)
        self.closed = False
        self.work = None  # the session's current chunk generator
        self.request: Forward | None = None
        self.switch: tuple[str, str | None, int | None, Future] | None = None  # applied by the worker

    @property
    def seed(self) -> int:
        return self.session.seed

    def next_chunk(self, timeout: float | None = None) -> Chunk:
        """The next chunk, blocking until it is ready (queue.Empty after `timeout`)."""
        if self.closed:
            raise SessionClosed("session is closed")
        self._scheduler.wake()
        item = self.chunks.get(timeout=timeout)
        self._scheduler.wake()  # room in the queue: this session may run again
        if isinstance(item, BaseException):
            raise item
        return item

    def update_prompt(self, prompt: str, event_id: str | None = None) -> int:
        return self.session.update_prompt(prompt, event_id)

    def switch_prompt(self, prompt: str, event_id: str | None = None, resume_after: int | None = None) -> Future:
        """Switch prompts; the future gives the index of the first chunk under the new prompt.

        resume_after=None: at the next chunk boundary; what was generated stays queued.
        resume_after=k: the consumer has delivered chunks up to k. Chunks generated after it
        (queued, or in progress) are discarded and the session is rewound to just after k
        (StreamSession.rewind), so the new prompt applies from chunk k + 1 and no video
        made ahead under the old prompt is shown. If that boundary is no longer held, the
        switch applies at the next boundary instead."""
        prompt = check_prompt(prompt)  # bad input fails here, in the caller's thread
        future: Future = Future()
        self._scheduler.request_switch(self, (prompt, event_id, resume_after, future))
        return future

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:  # wake a consumer blocked in next_chunk()
                self.chunks.put_nowait(SessionClosed("session is closed"))
            except queue.Full:
                pass  # it has chunks to read first, so it is not blocked
            self._scheduler.wake()


class BatchScheduler:
    def __init__(self, model: "StreamModel", max_sessions: int = 8, queue_chunks: int = 2,
                 max_batch: int | None = None, rewind_chunks: int | None = None):
        """rewind_chunks: chunk boundaries each session keeps for a switch to rewind to
        (default: the queue, the chunk in progress and one the consumer may hold unsent)."""
        self.model = model
        self.max_sessions = max_sessions
        self.max_batch = max_batch or max_sessions
        self.queue_chunks = queue_chunks
        self.rewind_chunks = queue_chunks + 2 if rewind_chunks is None else rewind_chunks
        self.cache = model.new_cache(rows=max_sessions)
        self._free_rows = list(range(max_sessions))
        self._handles: list[SessionHandle] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="framecast-scheduler", daemon=True)
        self.forwards = 0  # transformer calls made (for benchmarks)
        self.rows_forwarded = 0

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> "BatchScheduler":
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    @property
    def active_sessions(self) -> int:
        with self._cv:
            return sum(not h.closed for h in self._handles)

    def open(self, prompt: str, seed: int | None = None, wait_s: float = 2.0) -> SessionHandle:
        """Admit a stream; CapacityError when every cache row is taken.

        Only the worker thread releases the rows of closed sessions, between forwards: a
        row freed here could be handed to a new session while a forward still uses it."""
        with self._cv:
            deadline = time.monotonic() + wait_s
            while not self._free_rows and any(h.closed for h in self._handles) and not self._stop:
                self._cv.notify_all()  # closed sessions waiting to be reaped: let the worker do it
                if not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                    break
            if not self._free_rows:
                raise CapacityError(f"all {self.max_sessions} stream slots are in use")
            row = self._free_rows.pop(0)
        try:
            session = StreamSession(self.model, prompt, seed, cache=self.cache, row=row,
                                    rewind_chunks=self.rewind_chunks)
        except Exception:
            with self._cv:
                self._free_rows.append(row)
            raise
        handle = SessionHandle(self, session, self.queue_chunks)
        with self._cv:
            self._handles.append(handle)
            self._cv.notify_all()
        return handle

    def request_switch(self, handle: SessionHandle, switch: tuple) -> None:
        with self._cv:
            if handle.switch is not None:  # superseded before the worker got to it
                handle.switch[3].set_exception(SessionClosed("superseded by a later prompt switch"))
            handle.switch = switch
            self._cv.notify_all()

    # --- the worker --------------------------------------------------------------------
    def _apply_switches(self) -> None:
        """Worker thread, lock held, no forward running: rewind and switch the sessions that asked."""
        for h in self._handles:
            if h.switch is None:
                continue
            (prompt, event_id, resume_after, future), h.switch = h.switch, None
            if h.closed:
                future.set_exception(SessionClosed("session is closed"))
                continue
            try:
                if resume_after is not None:
                    self._rewind(h, resume_after + 1)
                future.set_result(h.session.update_prompt(prompt, event_id))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def _rewind(self, h: SessionHandle, target: int) -> None:
        """Discard the session's chunks from `target` on (queued or in progress) and rewind it."""
        if h.work is None and h.session.chunk_index == target:
            return  # nothing was generated past the delivered boundary
        if not h.session.can_rewind(target):
            return  # not held: the switch applies at the next boundary
        if h.work is not None:
            h.work.close()
            h.work, h.request = None, None
        kept = []
        while True:
            try:
                item = h.chunks.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, Chunk) or item.index < target:
                kept.append(item)
        for item in kept:
            h.chunks.put_nowait(item)
        h.session.rewind(target)

    def _reap(self) -> None:
        """Release the rows of closed sessions (worker thread, lock held, no forward running)."""
        closed = [h for h in self._handles if h.closed]
        for h in closed:
            self._handles.remove(h)
            h.session.close()
            self._free_rows.append(h.session.row)
        if closed:
            self._cv.notify_all()  # an open() may be waiting for a row

    def _ready(self) -> list[SessionHandle]:
        return [h for h in self._handles if not h.closed and not h.chunks.full()][: self.max_batch]

    def _run(self) -> None:
        while True:
            with self._cv:
                self._reap()
                self._apply_switches()
                ready = self._ready()
                while not ready and not self._stop:
                    self._cv.wait(timeout=0.5)
                    self._reap()
                    self._apply_switches()
                    ready = self._ready()
                if self._stop:
                    return
            for h in ready:
                if h.request is None:
                    h.work = h.session.chunk_work()
                    h.request = next(h.work)
            try:
                outputs = self.model.run_forwards([h.request for h in ready])
            except Exception as exc:  # a failed forward fails its sessions, not the server
                log.exception("forward failed")
                for h in ready:
                    h.request, h.work = None, None
                    self._deliver(h, exc)
                    h.close()
                continue
            self.forwards += 1
            self.rows_forwarded += len(ready)
            for h, out in zip(ready, outputs):
                try:
                    h.request = h.work.send(out)
                except StopIteration as done:
                    h.request, h.work = None, None
                    self._deliver(h, done.value)

    def _deliver(self, handle: SessionHandle, item) -> None:
        # The queue had room when the session was picked. close() may have put its wake-up
        # since: then the session is closed and the chunk is not wanted.
        try:
            handle.chunks.put_nowait(item)
        except queue.Full:
            pass
