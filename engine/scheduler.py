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
from typing import TYPE_CHECKING

from .errors import CapacityError, SessionClosed
from .session import Chunk, Forward, StreamSession

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
                 max_batch: int | None = None):
        self.model = model
        self.max_sessions = max_sessions
        self.max_batch = max_batch or max_sessions
        self.queue_chunks = queue_chunks
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
            session = StreamSession(self.model, prompt, seed, cache=self.cache, row=row)
        except Exception:
            with self._cv:
                self._free_rows.append(row)
            raise
        handle = SessionHandle(self, session, self.queue_chunks)
        with self._cv:
            self._handles.append(handle)
            self._cv.notify_all()
        return handle

    # --- the worker --------------------------------------------------------------------
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
                ready = self._ready()
                while not ready and not self._stop:
                    self._cv.wait(timeout=0.5)
                    self._reap()
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
        # The queue had room when the session was picked and only this thread puts.
        try:
            handle.chunks.put_nowait(item)
        except queue.Full:
            time.sleep(0)  # unreachable in practice; never block the worker on one client
