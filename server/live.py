"""One live stream, whatever carries it to the viewer (a WebSocket, a WebRTC peer): the
engine stream, chunks generated ahead but not yet sent, real-time pacing, prompt
switches, pause and resume, the stream's limit, its statistics and its cleanup. A
transport (server/websocket.py, server/webrtc.py) reads the client's messages, hands them
to `handle`, and turns each chunk into media (`Transport.send_chunk`).

    producer  engine chunk -> frames at the output fps -> a small outbox
    sender    outbox -> the transport, each chunk when its time comes: the lead ahead of
              real time (pauses excluded): `stream_lead_s`, or longer where this machine
              takes longer to make the first chunk under a new prompt (`_lead`)

Live means live. A chunk leaves in pieces (`stream_piece_frames` output frames, each at
its own time), so that what the viewer has been sent ends soon after the lead. A prompt
switch (`switch`) waits for a send in progress, throws away every frame made but not yet
sent (the rest of a chunk partly sent, the outbox, the scheduler's queue, the chunk in
progress), rewinds the engine stream to just before the first chunk not wholly sent, and
generation resumes from there under the new prompt; the first chunk under it continues
the scene (re-cache) and shows from the next frame not yet sent. What the viewer still
has to watch of the old prompt is only what was sent: at most one piece plus the lead.

Pause stops both: no media after `session.paused` (sent under the same lock) until
`session.resumed`, and no new chunk is asked for; nothing is lost. Everything is counted
in output frames (`frames` / fps is stream time), which a rewind or a lower output fps
cannot skew: a chunk's frames are a function of its index.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from clients.protocol import (SessionDone, SessionPause, SessionPaused, SessionPing, SessionPong, SessionResume,
                              SessionResumed, SessionStart, SessionStats, SessionStop, SessionUpdate,
                              SessionUpdateQueued)

from .admission import Ticket
from .auth import Caller
from .encoding import kept_count, kept_frames
from .errors import ApiError
from .state import ServerState
from .validation import check_model, check_output, check_prompt, check_seconds, read_as

log = logging.getLogger("framecast.server")

# How long closing waits for the engine to let go of a stream, so that its slot is free by the
# time the client reads session.done (a client that reconnects at once is not refused); past
# it, the slot is freed when the engine's thread gets to it.
CLOSE_WAIT_S = 2.0


@dataclass
class ChunkOut:
    """A chunk on its way to the viewer, in output frames."""

    index: int  # the engine chunk it came from
    frames: np.ndarray  # uint8 [n, H, W, 3]: the frames kept at the output fps
    first_frame: int  # output frame number of frames[0]; frames[i] shows at (first_frame + i) / fps
    prompt_event_id: str | None  # set on the first chunk under a switched prompt
    epoch: int  # switches made before it was produced (a switch discards older epochs)
    latency_s: float  # asking the engine -> chunk ready
    last: bool  # the stream's limit is reached with it


class Transport(Protocol):
    async def send_message(self, message: Any) -> None:
        """One control message (a protocol model)."""

    async def send_chunk(self, chunk: ChunkOut, fps: float) -> int:
        """Encode and send a chunk's frames; returns how many media messages that took."""


class LiveStream:
    def __init__(self, state: ServerState, transport: Transport, start: SessionStart, who: Caller,
                 limit_per_caller: int, started_at: float):
        """Checks `start` against the model and the limits (ApiError); `started_at` is when
        session.start arrived (time to first frame counts from it)."""
        self.state, self.transport = state, transport
        self.settings, self.metrics, self.model = state.settings, state.metrics, state.model
        check_model(self.model, start.model)
        self.prompt = check_prompt(start.prompt, self.settings.max_prompt_chars)
        self.seed = start.seed
        self.fps = check_output(self.model, start.fps, None)
        max_seconds = check_seconds(self.model, start.max_seconds or self.settings.max_stream_seconds,
                                    self.settings.max_stream_seconds, "max_seconds")
        self.frame_limit = max(1, math.ceil(max_seconds * self.fps))
        self.who, self.limit_per_caller, self.started_at = who, limit_per_caller, started_at
        self.session_id = "sess_" + uuid.uuid4().hex[:16]
        self.send_lock = asyncio.Lock()  # one message (or one chunk's media) at a time
        self._running = asyncio.Event()  # cleared while paused
        self._outbox: asyncio.Queue[ChunkOut] = asyncio.Queue(maxsize=self.settings.queue_depth)
        self._handle = None  # the engine stream (scheduler SessionHandle)
        self._ticket = None  # the admission slot
        self._epoch = 0
        self._awaiting: tuple[int, str] | None = None  # (first chunk, event) of the last switch
        self._not_switching = asyncio.Event()  # cleared while a switch is being made
        self._not_switching.set()
        self._next_switch = asyncio.Event()  # set (and replaced) by the next switch
        self._switch_asked: dict[str, float] = {}  # event -> when its update arrived
        # Seconds the engine took to make a chunk from nothing to ready: the stream's first,
        # and the first under each new prompt (rewind, re-cache, generate).
        self._make_s: collections.deque[float] = collections.deque(maxlen=4)
        self._sent_index = -1  # last engine chunk wholly sent
        self._held: ChunkOut | None = None  # the rest of a chunk partly sent
        self._sent_frames = 0
        self._sent_messages = 0
        self._clock: float | None = None  # loop time at which output frame 0 shows
        self._paused_at: float | None = None
        self._paused_total = 0.0
        self._closed = False

    # --- life -----------------------------------------------------------------------------
    async def open(self, ticket: Ticket | None = None) -> None:
        """Take a slot and open the engine stream (ApiError: server_full, rate_limited, bad input).
        `ticket`: a slot the transport took already (WebRTC takes it when the peer connects,
        so that a full server refuses before anything is negotiated); this stream frees it."""
        from engine.errors import CapacityError, InvalidInput  # loaded with the model by now

        self._ticket = ticket or self.state.admission.admit_stream(self.who, self.limit_per_caller)
        try:
            self._handle = await self.state.streams.open(self.prompt, self.seed)
        except InvalidInput as exc:  # InvalidPrompt, InvalidSeed: the engine's own code
            raise ApiError(exc.code, str(exc)) from exc
        except CapacityError as exc:
            raise ApiError("server_full", str(exc)) from exc
        self.metrics.active_sessions.inc()
        self._running.set()

    async def run(self) -> SessionDone:
        """Produce and send until the stream's limit (what ends it otherwise cancels this)."""
        producer = asyncio.create_task(self._produce())
        try:
            return await self._send_loop()
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    def done(self, reason: str) -> SessionDone:
        """The closing message; take it under `send_lock` so that no chunk is half counted."""
        return SessionDone(reason=reason, frames=self._sent_frames, seconds=round(self._sent_frames / self.fps, 3))

    async def close(self) -> None:
        """Free the engine stream and the slot (the slot once the engine let go of its cache row)."""
        if self._closed:
            return
        self._closed = True
        if self._handle is not None:
            self.metrics.active_sessions.dec()
            self.metrics.queue_depth.dec(self._outbox.qsize())
            closing = self.state.streams.close(self._handle)
            if self._ticket is not None:
                ticket, admission = self._ticket, self.state.admission
                closing.add_done_callback(lambda _: admission.release(ticket))
            await asyncio.wait([asyncio.wrap_future(closing)], timeout=CLOSE_WAIT_S)  # released by then
        elif self._ticket is not None:
            self.state.admission.release(self._ticket)

    # --- client messages ------------------------------------------------------------------
    async def handle(self, message) -> str | None:
        """A client message after session.start; returns a reason when it ends the stream."""
        if isinstance(message, SessionPing):
            await self.send(SessionPong(ts=message.ts))
        elif isinstance(message, SessionPause):
            if self._running.is_set():
                self._running.clear()
                self._paused_at = time.monotonic()
            await self.send(SessionPaused())
        elif isinstance(message, SessionResume):
            if self._paused_at is not None:
                self._paused_total += time.monotonic() - self._paused_at
                self._paused_at = None
            self._running.set()
            await self.send(SessionResumed())
        elif isinstance(message, SessionUpdate):
            check_prompt(message.prompt, self.settings.max_prompt_chars)
            event_id = message.event_id or "evt_" + uuid.uuid4().hex[:12]
            at_frame = await self.switch(message.prompt, event_id)
            await self.send(SessionUpdateQueued(event_id=event_id, at_frame=at_frame,
                                                read_as=read_as(self.state.model, message.prompt)))
        elif isinstance(message, SessionStop):
            return "stopped"
        return None

    async def switch(self, prompt: str, event_id: str) -> int:
        """Switch prompts now: discard what was made ahead, rewind the engine stream to just
        after the last chunk sent. Returns the output frame the new prompt shows from."""
        from engine.errors import InvalidInput, SessionClosed

        self._switch_asked[event_id] = time.monotonic()
        async with self.send_lock:  # after a send in progress; nothing is sent meanwhile
            self._not_switching.clear()  # a chunk arriving now is judged once the switch is made
            try:
                self._epoch += 1
                self._next_switch.set()
                self._next_switch = asyncio.Event()
                while not self._outbox.empty():
                    self._outbox.get_nowait()
                    self.metrics.queue_depth.dec()
                held = self._held  # partly sent: made again under the new prompt, from its start
                resume_after = self._sent_index if held is None else held.index - 1
                first = await self.state.streams.switch(self._handle, prompt, event_id, resume_after)
                if held is not None and first > held.index:  # that boundary was not held: the
                    held.epoch = self._epoch  # old chunk plays out, the new prompt follows it
                else:
                    self._held = None
                self._awaiting = (first, event_id)
            except InvalidInput as exc:
                raise ApiError(exc.code, str(exc), "prompt") from exc
            except SessionClosed:
                raise ApiError("internal_error", "the stream was closed") from None
            finally:
                self._not_switching.set()
        return max(self._first_frame(first), self._sent_frames)

    # --- producing ------------------------------------------------------------------------
    def _first_frame(self, index: int) -> int:
        return kept_count(index * self.model.frames_per_chunk, self.model.fps, self.fps)

    def _accept(self, chunk, asked: float) -> ChunkOut | None:
        """The chunk as output frames, or None when it was made before a switch it must not
        survive (a chunk in flight while the switch rewound the stream)."""
        if self._awaiting is not None and chunk.index >= self._awaiting[0]:
            if chunk.prompt_event_id != self._awaiting[1]:
                return None
            self._awaiting = None
        first_frame = self._first_frame(chunk.index)
        keep = kept_frames(chunk.index * self.model.frames_per_chunk, len(chunk.frames), self.model.fps, self.fps)
        keep = keep[: max(0, self.frame_limit - first_frame)]
        # Made again after a switch rewound into a chunk partly sent: its frames the viewer
        # has (under the old prompt) are not sent twice.
        sent = min(len(keep), max(0, self._sent_frames - first_frame))
        keep, first_frame = keep[sent:], first_frame + sent
        self.metrics.frames_generated.labels("stream").inc(len(chunk.frames))
        now = time.monotonic()
        if chunk.index == 0:
            self._make_s.append(now - asked)
        elif chunk.prompt_event_id in self._switch_asked:
            self._make_s.append(now - self._switch_asked[chunk.prompt_event_id])
        return ChunkOut(chunk.index, chunk.frames[keep], first_frame, chunk.prompt_event_id, self._epoch,
                        now - asked, first_frame + len(keep) >= self.frame_limit)

    async def _produce(self) -> None:
        while True:
            await self._running.wait()
            asked = time.monotonic()
            chunk = await self.state.streams.next_chunk(self._handle)
            await self._not_switching.wait()
            out = self._accept(chunk, asked)
            if out is None:
                continue
            await self._outbox.put(out)
            self.metrics.queue_depth.inc()
            # The stream's last chunk is made; a switch may still discard it (it can be up
            # to three chunks ahead of the one sent), and then the end is made again.
            while out.last and out.epoch == self._epoch:
                await self._next_switch.wait()

    # --- sending --------------------------------------------------------------------------
    async def send(self, message) -> None:
        """A control message to the client, never inside a chunk's media."""
        async with self.send_lock:
            await self.transport.send_message(message)

    def shows_at(self, frame: int) -> float | None:
        """Loop time at which stream frame `frame` shows for the viewer (stalls and pauses
        included); None before the first chunk is sent. A transport that paces frames
        itself (WebRTC's track) sends each at this time."""
        if self._clock is None:
            return None
        return self._clock + self._paused_total + frame / self.fps

    def _lead(self) -> float | None:
        """How far ahead of the viewer chunks are sent. A switch that comes just before a
        send leaves the viewer this long to watch while the first chunk under the new
        prompt is made: `stream_lead_s`, or, where this machine took longer than that to
        make one lately, that long and a frame (a chunk at most: slower than that, the
        stream cannot keep up anyway). Longer leads make switches later, never stall them."""
        lead = self.settings.stream_lead_s
        if lead is None or not self._make_s:
            return lead
        chunk_s = self.model.frames_per_chunk / self.model.fps
        return max(lead, min(max(self._make_s) + 1 / self.fps, chunk_s))

    async def _wait_for_time(self, chunk: ChunkOut) -> None:
        """Until the chunk is due (the lead before it shows) and the stream runs, or a
        switch made it stale (the caller drops it at once: waiting for the time of a chunk
        that will never be sent would hold back the first chunk under the new prompt)."""
        while chunk.epoch == self._epoch:
            await self._running.wait()
            delay = self._delay(chunk)
            if delay is None:
                return
            if delay <= 0:
                late = -delay - self._lead()
                if late > 1 / self.fps:
                    # Late: the viewer waited for it (a stall), and shows it and all that
                    # follows that much later. The clock follows, or the server would run
                    # ahead of the viewer by every stall, and a switch would wait behind it.
                    self._clock += late
                return
            try:  # then check again: a pause may have begun meanwhile
                await asyncio.wait_for(self._next_switch.wait(), delay)
            except TimeoutError:
                pass

    def _delay(self, chunk: ChunkOut) -> float | None:
        """Seconds until the chunk is due (<= 0: due); None when nothing paces it."""
        lead, shows_at = self._lead(), self.shows_at(chunk.first_frame)
        if shows_at is None or lead is None:
            return None
        return shows_at - lead - asyncio.get_running_loop().time()

    def _split(self, chunk: ChunkOut) -> tuple[ChunkOut, ChunkOut | None]:
        """The piece of `chunk` to send now and the rest (None: the piece is all of it)."""
        n = self.settings.stream_piece_frames
        if n is None or len(chunk.frames) <= n:
            return chunk, None
        return (dataclasses.replace(chunk, frames=chunk.frames[:n], last=False),
                dataclasses.replace(chunk, frames=chunk.frames[n:], first_frame=chunk.first_frame + n,
                                    prompt_event_id=None))

    async def _send_loop(self) -> SessionDone:
        loop = asyncio.get_running_loop()
        last_sent, stats_start, stats_frames, latencies = None, loop.time(), 0, []
        chunk: ChunkOut | None = None
        while True:
            if chunk is None:
                chunk = await self._outbox.get()
                self.metrics.queue_depth.dec()
            await self._wait_for_time(chunk)
            async with self.send_lock:
                if chunk.epoch != self._epoch:
                    chunk = None  # made before a switch, and never sent
                    continue
                if not self._running.is_set():
                    continue  # paused while it waited for the lock: wait again, nothing lost
                if (self._delay(chunk) or 0) > 0:
                    continue  # woken by a switch that kept it (the rest of a chunk): not yet
                piece, rest = self._split(chunk)
                self._sent_messages += await self.transport.send_chunk(piece, self.fps)
                frames = len(piece.frames)
                self._sent_frames, self._held = piece.first_frame + frames, rest
                if rest is None:
                    self._sent_index = chunk.index
                now = loop.time()
                if self._clock is None and frames:
                    self._clock = now - piece.first_frame / self.fps
                    self.metrics.time_to_first_frame.observe(time.monotonic() - self.started_at)
                if piece.prompt_event_id in self._switch_asked:
                    asked = self._switch_asked.pop(piece.prompt_event_id)
                    self.metrics.switch_latency.observe(time.monotonic() - asked)
                if last_sent is not None and frames:
                    for _ in range(frames):
                        self.metrics.frame_interval.observe((now - last_sent) / frames)
                last_sent = now
                if piece.last:
                    return self.done("max_seconds")
            stats_frames += frames
            latencies.append(piece.latency_s)
            chunk = rest
            if now - stats_start >= self.settings.stats_interval_s:
                await self.send(SessionStats(fps=round(stats_frames / (now - stats_start), 3),
                                              latency_ms=round(1000 * sum(latencies) / len(latencies), 3),
                                              frames=self._sent_frames, chunks=self._sent_messages))
                stats_start, stats_frames, latencies = now, 0, []


# --- what every transport reads from its client ------------------------------------------------

async def receive_start(receive, send_message, deadline: float, within: str) -> tuple[SessionStart, float]:
    """The client's session.start (pings answered meanwhile) and when it came; `receive()`
    gives the transport's next parsed client message. A start that does not come before
    `deadline` (monotonic) fails with start_timeout, `within` saying what was waited for."""
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ApiError("start_timeout", f"no session.start {within}") from None
        if isinstance(message, SessionStart):
            return message, time.monotonic()
        if isinstance(message, SessionPing):
            await send_message(SessionPong(ts=message.ts))
            continue
        raise ApiError("not_started", f"send session.start first, not {message.type}")


async def read_controls(receive, live: LiveStream) -> str:
    """The client's control messages, handled by its stream, until one ends it (its reason)."""
    while True:
        message = await receive()
        if isinstance(message, SessionStart):
            raise ApiError("already_started", f"this connection already streams {live.session_id}")
        if (reason := await live.handle(message)) is not None:
            return reason
