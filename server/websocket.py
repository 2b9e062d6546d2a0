"""WebSocket /v1/realtime/video: one `WebSocketStream` per connection carries one live stream
(server/live.py) as JSON control messages and binary media (fMP4 fragments or JPEG frames).

    reader   client messages -> LiveStream.handle (bad input: an `error` and a close code)
    stream   LiveStream.run: chunks at their time -> send_chunk (encoded here, in order)

Whatever ends it (stop, the limit, an error, a disconnect, a client that reads nothing)
cancels both and closes the engine stream in `finally`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from clients.protocol import (CLIENT_MESSAGE_TYPES, MAX_MESSAGE_BYTES, SUBPROTOCOL, Error,
                              SessionStart, SessionStarted, VideoChunk, client_message_adapter)

from .auth import caller, websocket_key
from .encoding import Fmp4StreamEncoder, JpegEncoder
from .errors import ApiError, from_validation_error
from .live import ChunkOut, LiveStream, read_controls, receive_start
from .state import ServerState
from .validation import read_as

log = logging.getLogger("framecast.server")
FINISH_WAIT_S = 5.0  # how long a closing message waits for a media send in progress


class _Disconnected(Exception):
    pass


def parse_client_message(text: str):
    """One client JSON text message -> a protocol model, or ApiError saying what is wrong
    (shared by every transport that carries the JSON control messages)."""
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


class WebSocketStream:
    def __init__(self, websocket: WebSocket, state: ServerState):
        self.ws = websocket
        self.state = state
        self.settings = state.settings
        self.live: LiveStream | None = None
        self.encoder: Fmp4StreamEncoder | JpegEncoder | None = None
        self._fmp4_fragments = 0  # fmp4: media messages sent (the init segment is 0)
        self._tasks: list[asyncio.Task] = []

    # --- the whole life of a connection -------------------------------------------------
    async def serve(self) -> None:
        offered = self.ws.scope.get("subprotocols", [])
        await self.ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        try:
            reason = await self._serve()
        except ApiError as exc:
            self.state.metrics.stream_errors.labels(exc.code).inc()
            if exc.code == "stalled":
                log.warning("%s: %s", self.live.session_id if self.live else "stream", exc.message)
            await self._finish(Error(error=exc.detail()), exc.close_code)
        except (_Disconnected, WebSocketDisconnect):
            pass
        except Exception:
            log.exception("stream failed")
            self.state.metrics.stream_errors.labels("internal_error").inc()
            await self._finish(Error(error=ApiError("internal_error", "the stream failed").detail()), 1011)
        else:
            await self._finish(reason, 1000)
        finally:
            await self._cleanup()

    async def _serve(self) -> str:
        key = websocket_key(self.ws, self.settings.api_keys)
        who = caller(key, self.ws.client.host if self.ws.client else None)
        self.state.require_ready()
        start, received_at = await self._receive_start()
        if start.format == "webrtc":
            raise ApiError("invalid_request", "format webrtc is negotiated over HTTP: POST the SDP offer to "
                           "/v1/realtime/webrtc", "format")
        limit = self.settings.sessions_per_key if key is not None else self.settings.sessions_per_address
        self.live = LiveStream(self.state, self, start, who, limit, received_at)
        await self.live.open()
        model = self.state.model
        fmt = start.format or "fmp4"
        self.encoder = Fmp4StreamEncoder(model.width, model.height, self.live.fps) if fmt == "fmp4" else JpegEncoder()
        await self.live.send(SessionStarted(
            session_id=self.live.session_id, width=model.width, height=model.height, fps=self.live.fps, format=fmt,
            model=model.name, codec=self.encoder.codec_string if fmt == "fmp4" else None,
            read_as=read_as(model, start.prompt)))
        log.info("%s started (%s, %.3g fps, key %s)", self.live.session_id, fmt, self.live.fps,
                 "yes" if key else "none")
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self.live.run())]
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        outcome = done.pop().result()  # raises what ended it: ApiError, disconnect, a failure
        return outcome if isinstance(outcome, str) else outcome.reason

    async def _finish(self, last: Error | str, close_code: int) -> None:
        """Send a last message (`session.done` for a reason, or the error) after any media
        being sent, and close. The slot is freed first, and each send is bounded: a client
        that reads nothing may never take the goodbye, and must not hold its slot meanwhile."""
        lock = self.live.send_lock if self.live is not None else asyncio.Lock()
        try:
            await asyncio.wait_for(lock.acquire(), FINISH_WAIT_S)
            message = self.live.done(last) if isinstance(last, str) else last
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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.live is not None:
            await self.live.close()

    # --- receiving -----------------------------------------------------------------------
    async def _receive(self):
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise _Disconnected
        if message.get("bytes") is not None:
            raise ApiError("binary_not_allowed", "clients send JSON text messages only")
        return parse_client_message(message.get("text") or "")

    async def _receive_start(self) -> tuple[SessionStart, float]:
        timeout = self.settings.start_timeout_s
        return await receive_start(self._receive, self.send_message, time.monotonic() + timeout,
                                   f"within {timeout:g} s")

    async def _read(self) -> str:
        return await read_controls(self._receive, self.live)

    # --- sending (the LiveStream's Transport) ------------------------------------------------
    async def _unless_stalled(self, sending) -> None:
        """A send waits only while the socket buffers are full, i.e. while the client reads
        nothing; one that waits stall_timeout_s ends the stream, so that its slot goes to
        someone who watches (pacing by consumption would otherwise hold it for good)."""
        try:
            await asyncio.wait_for(sending, self.settings.stall_timeout_s)
        except TimeoutError:
            raise ApiError("stalled", f"the client read nothing for {self.settings.stall_timeout_s:g} s; "
                           "the stream is closed to free its slot") from None

    async def send_message(self, message) -> None:
        await self._unless_stalled(self.ws.send_text(message.model_dump_json()))

    async def send_chunk(self, chunk: ChunkOut, fps: float) -> int:
        """fmp4: the init segment before the first fragment, then one fragment per call (a
        piece of a chunk); jpeg: one message per frame. Encoded here, at send time, so that
        the H.264 stream holds exactly the frames sent, in order (a switch discards frames
        never encoded)."""
        if not len(chunk.frames):
            return 0
        media = await asyncio.to_thread(self._encode, chunk, fps)
        for meta, data in media:
            await self._unless_stalled(self.ws.send_text(meta.model_dump_json()))
            await self._unless_stalled(self.ws.send_bytes(data))
        return len(media)

    def _encode(self, chunk: ChunkOut, fps: float) -> list[tuple[VideoChunk, bytes]]:
        pts = chunk.first_frame / fps
        if isinstance(self.encoder, JpegEncoder):
            return [(VideoChunk(index=chunk.first_frame + n, frames=1, bytes=len(data), pts=pts + n / fps,
                                frame=chunk.first_frame + n, prompt_event_id=chunk.prompt_event_id if n == 0 else None),
                     data)
                    for n, data in enumerate(self.encoder.encode(frame) for frame in chunk.frames)]
        out = []
        if self._fmp4_fragments == 0:
            init = self.encoder.init_segment
            out.append((VideoChunk(index=0, frames=0, bytes=len(init), pts=0.0, init=True), init))
        data = self.encoder.encode(list(chunk.frames))
        self._fmp4_fragments += 1
        out.append((VideoChunk(index=self._fmp4_fragments, frames=len(chunk.frames), bytes=len(data), pts=pts,
                               frame=chunk.first_frame, prompt_event_id=chunk.prompt_event_id), data))
        return out
