"""One live stream over one WebSocket: a small class that owns its bounded queue, its
tasks and its cleanup.

    reader    client messages: update / pause / resume / stop / ping (bad input -> error)
    producer  engine chunk -> encoded media (on a worker thread) -> bounded queue
    sender    queue -> `video.chunk` JSON + one binary message each, paced to real time

Pause stops both: no media is sent after `session.paused` (what was generated waits in
the queue) and no new chunk is asked for; resume carries on with nothing lost.

The queue is the flow control: when a client reads slowly its sends wait, its queue fills,
its producer stops asking for chunks, and only its own stream slows down. Whatever ends
the stream (stop, limit, error, disconnect) cancels all three and closes the engine stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from clients.protocol import (CLIENT_MESSAGE_TYPES, MAX_MESSAGE_BYTES, Error, SessionDone, SessionPause,
                              SessionPaused, SessionPing, SessionPong, SessionResume, SessionResumed,
                              SessionStart, SessionStarted, SessionStats, SessionStop, SessionUpdate,
                              SUBPROTOCOL, SessionUpdateQueued, VideoChunk, client_message_adapter)

from .auth import caller, websocket_key
from .encoding import Fmp4StreamEncoder, JpegEncoder, kept_count, kept_frames
from .errors import ApiError, from_validation_error
from .generation import GenerationStream
from .state import ServerState
from .validation import check_model, check_output, check_prompt, check_seconds

log = logging.getLogger("framecast.server")
FINISH_WAIT_S = 5.0  # how long a closing message waits for a media send in progress


class _Disconnected(Exception):
    pass


@dataclass
class _Media:
    meta: VideoChunk
    data: bytes


@dataclass
class _Batch:
    media: list[_Media]
    latency_s: float  # asking the engine for the chunk -> its media encoded


@dataclass
class _Done:
    reason: str


@dataclass
class _Counters:
    """Written by the producer's worker thread, one chunk at a time."""

    model_frames: int = 0  # engine frames seen (decimation runs on this clock)
    frames: int = 0  # frames put out
    messages: int = 0  # media messages put out
    pending_event: str | None = None  # a prompt event whose chunk was decimated away


class StreamConnection:
    def __init__(self, websocket: WebSocket, state: ServerState):
        self.ws = websocket
        self.state = state
        self.settings = state.settings
        self.metrics = state.metrics
        self.queue: asyncio.Queue[_Batch | _Done] = asyncio.Queue(maxsize=self.settings.queue_depth)
        self._send_lock = asyncio.Lock()
        self._running = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._ticket = None
        self._stream: GenerationStream | None = None
        self._counted = False
        self._counters = _Counters()
        self._paused_at: float | None = None
        self._paused_total = 0.0
        self._sent_frames = 0
        self._cleaned = False

    # --- the whole life of a connection -------------------------------------------------
    async def serve(self) -> None:
        offered = self.ws.scope.get("subprotocols", [])
        await self.ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        try:
            outcome = await self._serve()
        except ApiError as exc:
            self.metrics.stream_errors.labels(exc.code).inc()
            if exc.code == "stalled":
                log.warning("%s: %s", getattr(self, "session_id", "stream"), exc.message)
            await self._finish(Error(error=exc.detail()), exc.close_code)
        except (_Disconnected, WebSocketDisconnect):
            pass
        except Exception:
            log.exception("stream failed")
            self.metrics.stream_errors.labels("internal_error").inc()
            await self._finish(Error(error=ApiError("internal_error", "the stream failed").detail()), 1011)
        else:
            if outcome is not None:
                await self._finish(outcome, 1000)
        finally:
            await self._cleanup()

    async def _serve(self) -> SessionDone | None:
        key = websocket_key(self.ws, self.settings.api_keys)
        who = caller(key, self.ws.client.host if self.ws.client else None)
        self.state.require_ready()
        self._started_at = time.monotonic()
        start = await self._receive_start()
        self._start_received = time.monotonic()
        model = self.state.model
        check_model(model, start.model)
        check_prompt(start.prompt, self.settings.max_prompt_chars)
        self.fps = check_output(model, start.fps, None)
        max_seconds = check_seconds(model, start.max_seconds or self.settings.max_stream_seconds,
                                    self.settings.max_stream_seconds, "max_seconds")
        self.frame_limit = max(1, math.ceil(max_seconds * self.fps))
        limit = self.settings.sessions_per_key if key is not None else self.settings.sessions_per_address
        self._ticket = self.state.admission.admit_stream(who, limit)
        self._stream = await self._open(start)
        self._fmp4 = Fmp4StreamEncoder(model.width, model.height, self.fps) if start.format == "fmp4" else None
        self._jpeg = JpegEncoder() if start.format == "jpeg" else None
        self.metrics.active_sessions.inc()
        self._counted = True
        self.session_id = "sess_" + uuid.uuid4().hex[:16]
        await self._send(SessionStarted(session_id=self.session_id, width=model.width, height=model.height,
                                        fps=self.fps, format=start.format, model=model.name,
                                        codec=self._fmp4.codec_string if self._fmp4 else None))
        log.info("%s started (%s, %.3g fps, key %s)", self.session_id, start.format, self.fps,
                 "yes" if key else "none")
        self._running.set()
        self._tasks = [asyncio.create_task(coro) for coro in (self._read(), self._produce(), self._deliver())]
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()  # raises what ended it: ApiError, disconnect, a failure

    async def _open(self, start: SessionStart) -> GenerationStream:
        from engine.errors import CapacityError, InvalidInput  # loaded with the model by now

        try:
            return await self.state.generator.open(start.prompt, start.seed)
        except InvalidInput as exc:  # InvalidPrompt, InvalidSeed: the engine's own code
            raise ApiError(exc.code, str(exc)) from exc
        except CapacityError as exc:
            raise ApiError("server_full", str(exc)) from exc

    async def _finish(self, message, close_code: int) -> None:
        """Send a last message (after any media pair being sent) and close. The slot is
        freed first, and each send is bounded: a client that reads nothing may never take
        the goodbye, and must not hold its slot while the server waits for it to."""
        try:
            await asyncio.wait_for(self._send_lock.acquire(), FINISH_WAIT_S)
        except TimeoutError:
            message = None  # a client that reads nothing gets just the close
        await self._cleanup()
        try:
            if message is not None:
                await asyncio.wait_for(self.ws.send_text(message.model_dump_json()), FINISH_WAIT_S)
            await asyncio.wait_for(self.ws.close(close_code), FINISH_WAIT_S)
        except Exception:  # the client is gone, or reads nothing (TimeoutError)
            pass

    async def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self.queue.empty():
            if isinstance(self.queue.get_nowait(), _Batch):
                self.metrics.queue_depth.dec()
        if self._counted:
            self.metrics.active_sessions.dec()
        ticket, admission = self._ticket, self.state.admission
        if self._stream is not None:
            # The slot is free only once the engine let go of the stream's cache row.
            closing = self._stream.close()
            if ticket is not None:
                closing.add_done_callback(lambda _: admission.release(ticket))
        elif ticket is not None:
            admission.release(ticket)

    # --- receiving -----------------------------------------------------------------------
    async def _receive(self):
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise _Disconnected
        if message.get("bytes") is not None:
            raise ApiError("binary_not_allowed", "clients send JSON text messages only")
        text = message.get("text") or ""
        if len(text) > MAX_MESSAGE_BYTES or len(text.encode()) > MAX_MESSAGE_BYTES:
            raise ApiError("message_too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
        try:
            data = json.loads(text)
        except ValueError:
            raise ApiError("invalid_json", "the message is not valid JSON") from None
        except RecursionError:  # e.g. "[" * 30000: deeper than the parser goes
            raise ApiError("invalid_json", "the message nests too deeply to be parsed") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise ApiError("invalid_message", "a message is a JSON object with a string `type`")
        if data["type"] not in CLIENT_MESSAGE_TYPES:
            raise ApiError("unknown_message_type", f"unknown message type {data['type'][:64]!r}; expected one "
                           f"of {', '.join(CLIENT_MESSAGE_TYPES)}", "type")
        try:
            return client_message_adapter.validate_python(data)
        except ValidationError as exc:
            raise from_validation_error(exc, "invalid_message", tag=data["type"]) from None

    async def _receive_start(self) -> SessionStart:
        deadline = self._started_at + self.settings.start_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(self._receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ApiError("start_timeout", f"no session.start within {self.settings.start_timeout_s:g} s") from None
            if isinstance(message, SessionStart):
                return message
            if isinstance(message, SessionPing):
                await self._send(SessionPong(ts=message.ts))
                continue
            raise ApiError("not_started", f"send session.start first, not {message.type}")

    async def _read(self) -> SessionDone:
        while True:
            message = await self._receive()
            if isinstance(message, SessionStart):
                raise ApiError("already_started", f"this connection already streams {self.session_id}")
            if isinstance(message, SessionPing):
                await self._send(SessionPong(ts=message.ts))
            elif isinstance(message, SessionPause):
                if self._running.is_set():
                    self._running.clear()
                    self._paused_at = time.monotonic()
                await self._send(SessionPaused())
            elif isinstance(message, SessionResume):
                if self._paused_at is not None:
                    self._paused_total += time.monotonic() - self._paused_at
                    self._paused_at = None
                self._running.set()
                await self._send(SessionResumed())
            elif isinstance(message, SessionUpdate):
                check_prompt(message.prompt, self.settings.max_prompt_chars)
                event_id = message.event_id or "evt_" + uuid.uuid4().hex[:12]
                from engine.errors import InvalidInput

                try:
                    engine_chunk = await self._stream.update_prompt(message.prompt, event_id)
                except InvalidInput as exc:
                    raise ApiError(exc.code, str(exc), "prompt") from exc
                await self._send(SessionUpdateQueued(event_id=event_id, at_chunk=self._message_index(engine_chunk)))
            elif isinstance(message, SessionStop):
                return self._done("stopped")

    def _message_index(self, engine_chunk: int) -> int:
        """The `video.chunk` index that will carry the first frame of an engine chunk: fmp4
        fragments count from 1 (the init segment is 0), jpeg messages count frames."""
        if self._fmp4 is not None:
            return engine_chunk + 1
        model = self.state.model
        return kept_count(engine_chunk * model.frames_per_chunk, model.fps, self.fps)

    def _done(self, reason: str) -> SessionDone:
        frames = self._sent_frames
        return SessionDone(reason=reason, frames=frames, seconds=round(frames / self.fps, 3))

    # --- producing --------------------------------------------------------------------------
    def _encode(self, chunk) -> list[_Media]:
        """Worker thread: one engine chunk -> the media messages it becomes."""
        c = self._counters
        frames = chunk.frames  # [T, H, W, 3]
        keep = kept_frames(c.model_frames, len(frames), self.state.model.fps, self.fps)
        c.model_frames += len(frames)
        keep = keep[: self.frame_limit - c.frames]
        self.metrics.frames_generated.labels("stream").inc(len(frames))
        event = chunk.prompt_event_id or c.pending_event
        if not keep:
            c.pending_event = event
            return []
        c.pending_event = None
        pts = c.frames / self.fps
        out: list[_Media] = []
        if self._fmp4 is not None:
            if c.messages == 0:
                init = self._fmp4.init_segment
                out.append(_Media(VideoChunk(index=0, frames=0, bytes=len(init), pts=0.0, init=True), init))
            data = self._fmp4.encode([frames[i] for i in keep])
            out.append(_Media(VideoChunk(index=len(out) + c.messages, frames=len(keep), bytes=len(data), pts=pts,
                                         prompt_event_id=event), data))
        else:
            for n, i in enumerate(keep):
                data = self._jpeg.encode(frames[i])
                out.append(_Media(VideoChunk(index=c.frames + n, frames=1, bytes=len(data), pts=pts + n / self.fps,
                                             prompt_event_id=event if n == 0 else None), data))
        c.messages += len(out)
        c.frames += len(keep)
        return out

    async def _produce(self) -> None:
        while self._counters.frames < self.frame_limit:
            await self._running.wait()
            asked = time.monotonic()
            media = await self._stream.produce(self._encode)
            if media:
                await self.queue.put(_Batch(media, time.monotonic() - asked))
                self.metrics.queue_depth.inc()
        await self.queue.put(_Done("max_seconds"))
        await asyncio.Event().wait()  # the sender ends the stream once the queue is drained

    # --- sending ------------------------------------------------------------------------------
    async def _send(self, message) -> None:
        async with self._send_lock:
            await self._unless_stalled(self.ws.send_text(message.model_dump_json()))

    async def _unless_stalled(self, sending) -> None:
        """A send waits only while the socket buffers are full, i.e. while the client reads
        nothing; one that waits stall_timeout_s ends the stream, so that its slot goes to
        someone who watches (pacing by consumption would otherwise hold it for good)."""
        try:
            await asyncio.wait_for(sending, self.settings.stall_timeout_s)
        except TimeoutError:
            raise ApiError("stalled", f"the client read nothing for {self.settings.stall_timeout_s:g} s; "
                           "the stream is closed to free its slot") from None

    async def _send_media(self, media: _Media, clock: float | None, lead: float | None) -> None:
        """One metadata + binary pair, never while paused: once `session.paused` is out
        (sent under the same lock) no media follows it until `session.resumed`."""
        loop = asyncio.get_running_loop()
        while True:
            await self._running.wait()
            if lead is not None and clock is not None:
                # Never more than `lead` seconds ahead of real time (pauses excluded).
                delay = clock + self._paused_total + media.meta.pts - lead - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue  # a pause may have begun meanwhile
            async with self._send_lock:
                if not self._running.is_set():
                    continue
                await self._unless_stalled(self.ws.send_text(media.meta.model_dump_json()))
                await self._unless_stalled(self.ws.send_bytes(media.data))
                return

    async def _deliver(self) -> SessionDone:
        loop = asyncio.get_running_loop()
        lead = self.settings.stream_lead_s
        clock = None  # loop time at which stream time 0 was shown
        last_sent = None
        sent_messages = 0
        window_start, window_frames, window_latency = loop.time(), 0, []
        while True:
            item = await self.queue.get()
            if isinstance(item, _Done):
                return self._done(item.reason)
            self.metrics.queue_depth.dec()
            frames = 0
            for media in item.media:
                await self._send_media(media, clock, lead)
                frames += media.meta.frames
                if clock is None and media.meta.frames:
                    clock = loop.time() - media.meta.pts
                    self.metrics.time_to_first_frame.observe(time.monotonic() - self._start_received)
            now = loop.time()
            if last_sent is not None and frames:
                interval = (now - last_sent) / frames
                for _ in range(frames):
                    self.metrics.frame_interval.observe(interval)
            last_sent = now
            self._sent_frames += frames
            sent_messages += len(item.media)
            window_frames += frames
            window_latency.append(item.latency_s)
            if now - window_start >= self.settings.stats_interval_s:
                await self._send(SessionStats(fps=round(window_frames / (now - window_start), 3),
                                              latency_ms=round(1000 * sum(window_latency) / len(window_latency), 3),
                                              frames=self._sent_frames, chunks=sent_messages))
                window_start, window_frames, window_latency = now, 0, []
