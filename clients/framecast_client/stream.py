"""One live streaming session over WebSocket `/v1/realtime/video`.

A reader task owns the socket's receive side: media (a `video.chunk` JSON and the
binary message after it) goes into a bounded buffer that the caller drains through
`media()` or `frames()`; replies to control messages resolve futures. When the
buffer is full the reader stops reading, so TCP back-pressure reaches the server and
generation slows to the caller's pace (the protocol's flow control) — except while
a control reply is awaited, so `await switch_prompt()` inside a frame loop cannot
deadlock behind unread media.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

import pydantic
from websockets.exceptions import ConnectionClosed

from clients.framecast_client.decode import Frame, decoder_for
from clients.framecast_client.errors import (ConnectionLost, FramecastError, ProtocolError, ServerFull,
                                             Unauthorized, error_for_code)
from clients.protocol import (CloseCode, Error, SessionDone, SessionPause, SessionPaused, SessionPing,
                              SessionPong, SessionResume, SessionResumed, SessionStart, SessionStarted,
                              SessionStats, SessionStop, SessionUpdate, SessionUpdateQueued, VideoChunk,
                              parse_server_message)

REPLY_TIMEOUT_S = 10.0


@dataclass
class MediaChunk:
    """One media message as it came: fmp4 init/fragment bytes or one JPEG."""

    meta: VideoChunk
    data: bytes
    prompt_event_id: str | None  # prompt update in force for this chunk (None: the first prompt)
    received_at: float  # time.monotonic()


@dataclass
class PromptSwitch:
    event_id: str
    prompt: str
    sent_at: float  # time.monotonic()
    queued: SessionUpdateQueued  # the server's acknowledgement (at_frame: the first frame under it)


_END = object()


class Stream:
    """Use through `FramecastClient.stream()` / `open_stream()`; close with `stop()` or `close()`."""

    def __init__(self, ws, start: SessionStart, started: SessionStarted, start_sent_at: float,
                 max_buffered: int = 32):
        self.request = start
        self.started = started
        self.start_sent_at = start_sent_at
        self.first_media_at: float | None = None  # first fragment/JPEG carrying frames
        self.stats: SessionStats | None = None
        self.done: SessionDone | None = None
        self.prompt_events: dict[str, int] = {}  # event_id -> first stream frame generated under it
        self.prompt_event_received: dict[str, float] = {}  # event_id -> time.monotonic() its first media came
        self.chunks_received = 0
        self.bytes_received = 0
        self._ws = ws
        self._max_buffered = max_buffered
        self._buffer: collections.deque = collections.deque()
        self._have_media = asyncio.Event()
        self._room = asyncio.Event()
        self._error: FramecastError | None = None
        self._stopping = False
        self._current_event: str | None = None
        self._queued_waiters: dict[str, asyncio.Future] = {}
        self._applied_waiters: dict[str, list[asyncio.Future]] = collections.defaultdict(list)
        self._reply_waiters: dict[type, collections.deque] = collections.defaultdict(collections.deque)
        self._reader = asyncio.create_task(self._read_loop(), name=f"framecast-reader-{started.session_id}")

    # -- reading ------------------------------------------------------------------

    async def _read_loop(self) -> None:
        pending: VideoChunk | None = None
        try:
            while True:
                await self._wait_for_room()
                message = await self._ws.recv()
                if isinstance(message, bytes):
                    if pending is None:
                        raise ProtocolError("binary message without a video.chunk before it")
                    if len(message) != pending.bytes:
                        raise ProtocolError(f"video.chunk {pending.index} announced {pending.bytes} bytes, "
                                            f"got {len(message)}")
                    self._on_media(pending, message)
                    pending = None
                    continue
                if pending is not None:
                    raise ProtocolError(f"expected the binary message of video.chunk {pending.index}")
                try:
                    parsed = parse_server_message(message)
                except pydantic.ValidationError as exc:
                    raise ProtocolError(f"unexpected server message: {message[:200]!r}") from exc
                if isinstance(parsed, VideoChunk):
                    pending = parsed
                elif isinstance(parsed, SessionUpdateQueued):
                    waiter = self._queued_waiters.pop(parsed.event_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(parsed)
                elif isinstance(parsed, SessionStats):
                    self.stats = parsed
                elif isinstance(parsed, (SessionPaused, SessionResumed, SessionPong)):
                    waiters = self._reply_waiters[type(parsed)]
                    if waiters:
                        waiters.popleft().set_result(parsed)
                elif isinstance(parsed, SessionDone):
                    self.done = parsed
                elif isinstance(parsed, Error):
                    raise error_for_code(parsed.error.code, parsed.error.message)
                else:
                    raise ProtocolError(f"unexpected {parsed.type} during a session")
        except ConnectionClosed as exc:
            if self.done is None and not self._stopping:
                self._error = _closed_error(exc)
        except FramecastError as exc:
            self._error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an OS error: surface it, never hang the caller
            self._error = ConnectionLost(f"stream reader failed: {exc!r}")
        finally:
            self._finish()

    def _on_media(self, meta: VideoChunk, data: bytes) -> None:
        now = time.monotonic()
        if meta.prompt_event_id is not None and meta.prompt_event_id != self._current_event:
            self._current_event = meta.prompt_event_id
            self.prompt_events.setdefault(meta.prompt_event_id, meta.frame)
            self.prompt_event_received.setdefault(meta.prompt_event_id, now)
            for waiter in self._applied_waiters.pop(meta.prompt_event_id, []):
                if not waiter.done():
                    waiter.set_result(meta.frame)
        if meta.frames > 0 and self.first_media_at is None:
            self.first_media_at = now
        self.chunks_received += 1
        self.bytes_received += len(data)
        self._buffer.append(MediaChunk(meta, data, self._current_event, now))
        self._have_media.set()

    async def _wait_for_room(self) -> None:
        while len(self._buffer) >= self._max_buffered and not self._awaiting_reply():
            self._room.clear()
            await self._room.wait()

    def _awaiting_reply(self) -> bool:
        return self._stopping or bool(self._queued_waiters) or any(self._reply_waiters.values())

    def _finish(self) -> None:
        error = self._error or (None if self.done or self._stopping else
                                ConnectionLost("stream ended without session.done"))
        self._error = error
        for waiter in self._all_waiters():
            if not waiter.done():
                waiter.set_exception(error or ConnectionLost("stream ended"))
                waiter.exception()  # mark retrieved: nobody may be awaiting it any more
        self._buffer.append(_END)
        self._have_media.set()

    def _all_waiters(self):
        yield from self._queued_waiters.values()
        for lst in self._applied_waiters.values():
            yield from lst
        for dq in self._reply_waiters.values():
            yield from dq

    # -- consuming ----------------------------------------------------------------

    async def receive(self) -> MediaChunk | None:
        """The next media message; None once the session is done. Safe to cancel
        (e.g. under asyncio.wait_for): nothing is taken from the buffer until it returns."""
        while not self._buffer:
            self._have_media.clear()
            await self._have_media.wait()
        item = self._buffer[0]
        if item is _END:  # left in place: later calls end at once too
            if self._error is not None:
                raise self._error
            return None
        self._buffer.popleft()
        self._room.set()
        return item

    async def media(self) -> AsyncIterator[MediaChunk]:
        """Raw media in order; ends after session.done, raises if the stream failed."""
        while (item := await self.receive()) is not None:
            yield item

    async def frames(self) -> AsyncIterator[Frame]:
        """Decoded RGB frames ([H, W, 3] uint8) in order."""
        decoder = decoder_for(self.started.format)
        async for item in self.media():
            # Off the event loop: a chunk of large frames takes milliseconds to decode, and
            # the reader (control replies, stats) should not wait on it.
            frames = await asyncio.to_thread(decoder.feed, item.meta, item.data, item.prompt_event_id,
                                             item.received_at)
            for frame in frames:
                yield frame
        for frame in decoder.flush():
            yield frame

    # -- control ------------------------------------------------------------------

    async def switch_prompt(self, prompt: str, event_id: str | None = None,
                            timeout: float = REPLY_TIMEOUT_S) -> PromptSwitch:
        """Send session.update; returns once the server has made the switch (`queued.at_frame`:
        the first stream frame under the new prompt)."""
        event_id = event_id or f"evt_{uuid.uuid4().hex[:12]}"
        waiter = asyncio.get_running_loop().create_future()
        self._queued_waiters[event_id] = waiter
        self._room.set()
        sent_at = time.monotonic()
        await self._send(SessionUpdate(prompt=prompt, event_id=event_id))
        queued = await self._await_reply(waiter, "session.update.queued", timeout)
        return PromptSwitch(event_id, prompt, sent_at, queued)

    async def wait_applied(self, event_id: str, timeout: float | None = None) -> int:
        """Stream frame number of the first frame generated under prompt update `event_id`."""
        if event_id in self.prompt_events:
            return self.prompt_events[event_id]
        waiter = asyncio.get_running_loop().create_future()
        self._applied_waiters[event_id].append(waiter)
        return await asyncio.wait_for(waiter, timeout)

    async def pause(self, timeout: float = REPLY_TIMEOUT_S) -> None:
        await self._request(SessionPause(), SessionPaused, timeout)

    async def resume(self, timeout: float = REPLY_TIMEOUT_S) -> None:
        await self._request(SessionResume(), SessionResumed, timeout)

    async def ping(self, timeout: float = REPLY_TIMEOUT_S) -> float:
        """Round trip through the server's message loop, in seconds."""
        sent = time.monotonic()
        await self._request(SessionPing(ts=time.time()), SessionPong, timeout)
        return time.monotonic() - sent

    async def stop(self, timeout: float = REPLY_TIMEOUT_S) -> SessionDone | None:
        """Ask the server to end the session and wait for it to close; media stays readable."""
        if not self._reader.done():
            self._stopping = True
            self._room.set()
            try:
                await self._send(SessionStop())
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
            except (ConnectionLost, asyncio.TimeoutError):
                pass  # we were leaving anyway
        await self.close()
        return self.done

    async def close(self) -> None:
        """Drop the connection now (no session.stop)."""
        self._stopping = True
        await self._ws.close()
        if not self._reader.done():
            self._reader.cancel()
            try:
                await self._reader  # its `finally` marks the end of the media
            except asyncio.CancelledError:
                pass

    @property
    def error(self) -> FramecastError | None:
        return self._error

    @property
    def latency_ms(self) -> float | None:
        """Server-reported latency (from session.stats), when it has sent one."""
        return self.stats.latency_ms if self.stats else None

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _request(self, message, reply_type: type, timeout: float):
        waiter = asyncio.get_running_loop().create_future()
        self._reply_waiters[reply_type].append(waiter)
        self._room.set()
        await self._send(message)
        return await self._await_reply(waiter, reply_type.model_fields["type"].default, timeout)

    async def _await_reply(self, waiter: asyncio.Future, what: str, timeout: float):
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise ProtocolError(f"no {what} from the server within {timeout:g}s") from None
        finally:
            for key, value in list(self._queued_waiters.items()):
                if value is waiter:
                    del self._queued_waiters[key]
            for dq in self._reply_waiters.values():
                if waiter in dq:
                    dq.remove(waiter)

    async def _send(self, message) -> None:
        if self._reader.done() and self._error is not None:
            raise self._error
        try:
            await self._ws.send(message.model_dump_json(exclude_none=True))
        except ConnectionClosed as exc:
            raise self._error or _closed_error(exc) from None


def _closed_error(exc: ConnectionClosed) -> FramecastError:
    """Exception for a socket that closed under us, from its close code."""
    frame = exc.rcvd
    code = frame.code if frame is not None else None
    reason = frame.reason if frame is not None else ""
    if code == CloseCode.TRY_AGAIN_LATER:
        return ServerFull(reason or "server full", "server_full")
    if code in (CloseCode.UNAUTHORIZED,):
        return Unauthorized(reason or "unauthorized", "unauthorized")
    if code == CloseCode.GOING_AWAY:
        return ConnectionLost(f"server is shutting down{': ' + reason if reason else ''}", "shutting_down", code)
    if code is None:
        return ConnectionLost("connection dropped (no close frame: server gone or network lost)")
    return ConnectionLost(f"connection closed with code {code}{': ' + reason if reason else ''}",
                          close_code=code)
