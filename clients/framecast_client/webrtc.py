"""One live streaming session over WebRTC: `FramecastClient.open_stream(..., format="webrtc")`.

Needs aiortc, an optional extra (`pip install 'framecast[webrtc]'`); the rest of the client
imports without it. The offer (a recvonly video section and a data channel) is POSTed to
/v1/realtime/webrtc; the data channel then carries the same JSON messages as the WebSocket,
read by `Stream`'s own reader, and the frames come decoded off the video track.

Frames are tied to stream frames through the `video.chunk` runs (clients/protocol.py): a
frame at track time t belongs to the last run that starts at or before t. aiortc gives a
track's frames timestamps from its first packet on, which is the stream's frame 0.

Live, not paced by the reader: a caller slower than the stream loses the oldest frames
(`frames_dropped`), where a WebSocket stream would slow the server down.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time
from typing import AsyncIterator
from urllib.parse import unquote

import httpx
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.exceptions import ConnectionClosed

from clients.framecast_client.decode import Frame
from clients.framecast_client.errors import ProtocolError
from clients.framecast_client.stream import _END, MediaChunk, Stream
from clients.protocol import WEBRTC_PATH, SessionStart, SessionStarted, VideoChunk

SDP = "application/sdp"
HANG_UP_WAIT_S = 1.0  # after session.done, for frames still on their way
_CLOSED = object()


class DataChannelSocket:
    """The data channel as the socket `Stream` reads: recv / send / close."""

    def __init__(self, pc: RTCPeerConnection, channel):
        self.pc, self.channel = pc, channel
        self._inbox: asyncio.Queue = asyncio.Queue()
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", lambda: self._inbox.put_nowait(_CLOSED))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._inbox.put_nowait(_CLOSED)

    async def recv(self) -> str | bytes:
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later recv ends too
            raise ConnectionClosed(None, None)
        return item

    async def send(self, text: str) -> None:
        if self.channel.readyState != "open":
            raise ConnectionClosed(None, None)
        self.channel.send(text)

    async def close(self) -> None:
        await self.pc.close()


class WebRTCStream(Stream):
    """A `Stream` whose frames come off a WebRTC video track: use `frames()` (there are no
    media messages to read with `media()`)."""

    _media_follows = False

    def __init__(self, socket: DataChannelSocket, track, start: SessionStart, started: SessionStarted,
                 start_sent_at: float, location: str, max_buffered: int = 32):
        super().__init__(socket, start, started, start_sent_at, max_buffered)
        self.location = location  # the session's URL path (DELETE ends it)
        self.frames_dropped = 0
        self._fps = started.fps
        self._last_frame_at = 0.0
        self._runs: list[VideoChunk] = []  # in track time order
        self._events: list[tuple[int, str]] = []  # (first stream frame, prompt event), in order
        self._unplaced: collections.deque = collections.deque()  # (track time, image, received_at)
        self._frames = asyncio.create_task(self._read_track(track), name=f"framecast-track-{started.session_id}")

    # -- frames off the track ---------------------------------------------------------------
    async def _read_track(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            received_at = self._last_frame_at = time.monotonic()
            image = await asyncio.to_thread(frame.to_ndarray, format="rgb24")
            self._unplaced.append((float(frame.pts * frame.time_base), image, received_at))
            self._place()

    def _on_run(self, meta: VideoChunk) -> None:
        self._runs.append(meta)
        if meta.prompt_event_id is not None:
            self._events.append((meta.frame, meta.prompt_event_id))
        self._place()

    def _place(self, final: bool = False) -> None:
        """Frames whose run is known (or that waited for it too long) into the buffer."""
        half = 0.5 / self._fps
        while self._unplaced:
            t, image, received_at = self._unplaced[0]
            starts = [run.pts for run in self._runs]
            i = bisect.bisect_right(starts, t + half) - 1
            known = i >= 0 and (i + 1 < len(self._runs) or t < self._runs[i].pts + self._runs[i].frames / self._fps
                                - half)
            if not known and not final and len(self._unplaced) < self._fps:
                return  # its video.chunk is still on its way
            self._unplaced.popleft()
            if i < 0:
                continue  # before any run: nothing to tie it to
            run = self._runs[i]
            self._deliver(run, run.frame + round((t - run.pts) * self._fps), image, received_at)

    def _deliver(self, run: VideoChunk, number: int, image, received_at: float) -> None:
        j = bisect.bisect_right([frame for frame, _ in self._events], number) - 1
        event_id = self._events[j][1] if j >= 0 else None
        if event_id is not None and event_id not in self.prompt_events:
            self.prompt_events[event_id] = number
            self.prompt_event_received[event_id] = received_at
            for waiter in self._applied_waiters.pop(event_id, []):
                if not waiter.done():
                    waiter.set_result(number)
        if self.first_media_at is None:
            self.first_media_at = received_at
        self.chunks_received += 1
        self.bytes_received += image.nbytes
        frame = Frame(image, number, number / self._fps, run.index, event_id, received_at)
        end = self._buffer.pop() if self._buffer and self._buffer[-1] is _END else None
        self._buffer.append(frame)
        while len(self._buffer) > self._max_buffered:  # live: the oldest frame goes
            self._buffer.popleft()
            self.frames_dropped += 1
        if end is not None:
            self._buffer.append(end)
        self._have_media.set()

    # -- hooks of Stream ----------------------------------------------------------------------
    async def _wait_for_room(self) -> None:
        return  # the control channel is always read; frames are dropped instead

    def _on_done(self) -> None:
        asyncio.get_running_loop().create_task(self._hang_up_when_played())

    async def _hang_up_when_played(self) -> None:
        """The server waits for us to hang up after session.done: once its frames are in, or
        none came for a while (aiortc's receiver hands a frame over only once the next one
        arrives, so a stream's very last frame never does)."""
        deadline = time.monotonic() + HANG_UP_WAIT_S
        while time.monotonic() < deadline and self._received_frames() < self.done.frames:
            if time.monotonic() - self._last_frame_at > 4 / self._fps:
                break
            await asyncio.sleep(0.02)
        self._place(final=True)
        await self._ws.close()

    def _received_frames(self) -> int:
        return self.chunks_received + len(self._unplaced)

    # -- consuming ------------------------------------------------------------------------------
    async def media(self) -> AsyncIterator[MediaChunk]:
        raise ProtocolError("a WebRTC stream has no media messages: read frames()")
        yield  # pragma: no cover  (an async generator)

    async def frames(self) -> AsyncIterator[Frame]:
        """Decoded RGB frames ([H, W, 3] uint8) in order, `index` their stream frame."""
        while (item := await self.receive()) is not None:
            yield item

    async def close(self) -> None:
        self._frames.cancel()
        await super().close()


def _ice_servers(response: httpx.Response) -> list[RTCIceServer]:
    """RTCIceServers from WHEP Link headers: <url>; rel="ice-server"; username=..; credential=.."""
    servers = []
    for link in response.headers.get_list("link"):
        for part in link.split(","):
            fields = [f.strip() for f in part.split(";")]
            if not fields[0].startswith("<") or 'rel="ice-server"' not in fields[1:]:
                continue
            params = {name: unquote(value.strip('"')) for name, value in
                      (f.split("=", 1) for f in fields[1:] if "=" in f)}
            servers.append(RTCIceServer(urls=fields[0][1:-1], username=params.get("username"),
                                        credential=params.get("credential")))
    return servers


async def open_webrtc_stream(http: httpx.AsyncClient, start: SessionStart, timeout: float,
                             max_buffered: int = 32) -> WebRTCStream:
    """Negotiate, send session.start on the data channel, return once session.started came.
    `http`: the client's HTTP client (base URL and key). Errors as the WebSocket path's."""
    from clients.framecast_client.client import _call_raw, _receive_started

    options = await _call_raw(http, "OPTIONS", WEBRTC_PATH, allow=(405,))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=_ice_servers(options)))
    try:
        video = pc.addTransceiver("video", direction="recvonly")
        channel = pc.createDataChannel("framecast")
        socket = DataChannelSocket(pc, channel)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await _call_raw(http, "POST", WEBRTC_PATH, content=pc.localDescription.sdp,
                                 headers={"Content-Type": SDP})
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.text, type="answer"))
        try:
            await asyncio.wait_for(opened.wait(), timeout)
        except asyncio.TimeoutError:
            raise ProtocolError(f"the WebRTC connection did not open within {timeout:g}s (ICE: "
                                f"{pc.iceConnectionState})") from None
        sent_at = time.monotonic()
        await socket.send(start.model_dump_json(exclude_none=True))
        started = await _receive_started(socket, timeout)
    except BaseException:
        await pc.close()
        raise
    return WebRTCStream(socket, video.receiver.track, start, started, sent_at,
                        answer.headers.get("location", ""), max_buffered=max_buffered)
