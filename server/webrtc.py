"""WebRTC: one `WebRTCStream` per peer connection carries one live stream (server/live.py)
as a video track and a data channel.

    POST /v1/realtime/webrtc   SDP offer -> answer (WHEP-style, routes/webrtc.py); the slot
                               is taken here, so a full server refuses before negotiating
    data channel               the JSON control messages of clients/protocol.py, both ways:
                               session.start (within start_timeout_s of the POST), update,
                               pause, ...; the server's replies, and a `video.chunk` (no
                               binary after it) for each run of frames on the track
    video track (FrameTrack)   the stream's frames, each at its time (frame by frame at the
                               stream's fps), encoded by aiortc (H.264 or VP8)

Whatever ends it (stop, the limit, an error, DELETE, a peer that closed, failed or went
silent) ends the live stream, frees its slot at once and closes the peer connection.

The track's clock is the live stream's (LiveStream.shows_at): track time is stream time
(frame / fps) plus the time the stream stood still (paused, or waiting for a chunk that
came late). RTP timestamps are track time at 90 kHz, so the receiver's jitter buffer
sees frames arrive on their timestamps; a frame the sender gets to late (a slow encode)
leaves at once with its own timestamp, and the jitter buffer absorbs it. A client
ties a decoded frame to its stream frame with the `video.chunk` of its run: `pts` is the
run's first frame in track time (RTP timestamp minus the first frame's), `frame` its
stream frame; a run is a chunk's frames played without a break (a pause mid-chunk starts
a new run, with a new video.chunk).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from aiortc import sdp
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription)
from aiortc.mediastreams import MediaStreamError

from clients.protocol import (Error, SessionDone, SessionPaused, SessionResumed,
                              SessionStart, SessionStarted, VideoChunk)

from .admission import Ticket
from .auth import Caller
from .errors import ApiError
from .live import ChunkOut, LiveStream, read_controls, receive_start
from .state import ServerState
from .validation import read_as
from .websocket import parse_client_message

log = logging.getLogger("framecast.server")

RTP_CLOCK = 90_000
TIME_BASE = Fraction(1, RTP_CLOCK)
SESSION_PATH = "/v1/realtime/webrtc/{session_id}"
FINISH_WAIT_S = 2.0  # after the last message: for it to leave, then for the peer to hang up
CHANNEL_BUFFER_MAX = 1 << 20  # control messages queued to a peer that takes none: it is gone
PEER_CHECK_S = 0.5
CODEC_MIME = {"h264": "video/H264", "vp8": "video/VP8"}
# The track plays in real time whatever the server's pacing: with stream_lead_s None
# (benchmarks) nothing else would bound what waits on it.
TRACK_AHEAD_S = 1.0


class PeerGone(Exception):
    pass


class _Stopped(Exception):
    """DELETE or shutdown: the session ends as a stop (with this session.done reason)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Frame:
    number: int  # stream frame
    image: np.ndarray  # uint8 [H, W, 3]
    chunk: int  # engine chunk it came from
    first: bool  # the first frame of its chunk
    event_id: str | None  # the chunk's prompt event (on its first frame)


class FrameTrack(MediaStreamTrack):
    """The stream's frames for aiortc's sender: `recv` hands each one over when it shows on
    the live stream's clock (LiveStream.shows_at: stalls and pauses included), a late one
    at once. `on_run(VideoChunk)` is called as a run of frames starts (before its first)."""

    kind = "video"

    def __init__(self, on_run):
        super().__init__()
        self.fps = 0.0  # set by start()
        self._shows_at = lambda frame: None
        self._on_run = on_run
        self._queue: collections.deque[_Frame] = collections.deque()
        self._have = asyncio.Event()  # set while something is queued
        self._running = asyncio.Event()  # cleared while the stream is paused
        self._running.set()
        self._origin: float | None = None  # loop time of track time 0
        self._last: _Frame | None = None
        self._run_offset = 0.0  # track time - stream time of the current run: the time stood still
        self._runs = 0
        self.released = 0  # frames handed to the encoder
        self.released_at = 0.0  # loop time of the last one
        self._given = 0  # frames put
        self._taken = asyncio.Event()  # set as a frame leaves
        self._sent_all = asyncio.Event()  # every frame put is out (encoded and sent)
        self._sent_all.set()

    def start(self, fps: float, shows_at) -> None:
        """`shows_at(frame)`: loop time the frame shows at, None before the clock starts."""
        self.fps, self._shows_at = fps, shows_at

    def put(self, chunk: ChunkOut) -> None:
        for n, image in enumerate(chunk.frames):
            self._queue.append(_Frame(chunk.first_frame + n, image, chunk.index, n == 0,
                                      chunk.prompt_event_id if n == 0 else None))
        self._given += len(chunk.frames)
        if self._queue:
            self._have.set()
            self._sent_all.clear()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def discard(self) -> None:
        """Drop what is queued (a stop: the viewer asked for no more)."""
        self._queue.clear()
        self._have.clear()
        self._sent_all.set()

    async def room(self, seconds: float) -> None:
        """Until less than `seconds` of video waits on the track."""
        while len(self._queue) >= seconds * self.fps:
            self._taken.clear()
            await self._taken.wait()

    async def played_out(self) -> None:
        """Until every frame put has been sent."""
        await self._sent_all.wait()

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        if not self._queue:
            self._sent_all.set()  # aiortc asks for a frame once it sent the one before
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            await self._running.wait()
            if not self._queue:
                self._have.clear()
                await self._have.wait()
                continue
            item, now = self._queue[0], loop.time()
            due = self._shows_at(item.number)
            if due is None:
                due = now
            if due - now > 0.001:
                await asyncio.sleep(due - now)
                continue  # and look again: a pause may have begun meanwhile
            break
        self._queue.popleft()
        self._taken.set()
        if not self._queue:
            self._have.clear()
        if self._origin is None:
            self._origin = due - item.number / self.fps
        track_time = due - self._origin
        offset = track_time - item.number / self.fps
        if (item.first or self._last is None or self._last.number != item.number - 1
                or abs(offset - self._run_offset) > 1e-4):
            frames = 1 + sum(1 for _ in _same_chunk(self._queue, item.chunk))
            self._on_run(VideoChunk(index=self._runs, frames=frames, bytes=0, pts=round(track_time, 6),
                                    frame=item.number, prompt_event_id=item.event_id))
            self._runs += 1
            self._run_offset = offset
        self._last = item
        self.released += 1
        self.released_at = now
        frame = av.VideoFrame.from_ndarray(item.image, format="rgb24")
        frame.pts, frame.time_base = round(track_time * RTP_CLOCK), TIME_BASE
        return frame


def _same_chunk(queue, chunk: int):
    for item in queue:
        if item.chunk != chunk:
            return
        yield item


def without_mdns_candidates(sdp: str) -> str:
    """The offer without its mDNS host candidates (`<uuid>.local`, what browsers send for
    their host addresses). aioice would try to resolve each over multicast DNS, which
    answers only on the browser's own LAN segment, and waits 1 s for it otherwise before
    answering. Nothing is lost: the browser's connectivity checks reach the server's
    candidates from the answer, and the server learns its address from them (peer
    reflexive)."""
    lines = sdp.splitlines(keepends=True)
    kept = [line for line in lines if not (line.startswith("a=candidate:") and len(line.split()) > 4
                                           and line.split()[4].lower().endswith(".local"))]
    return "".join(kept)


def ice_servers(settings) -> list[RTCIceServer]:
    return [RTCIceServer(urls=s.url_list, username=s.username, credential=s.credential)
            for s in settings.webrtc_ice_servers]


def check_offer(sdp: str) -> None:
    """What the server needs of an offer, said plainly (aiortc's own errors on a bad SDP are
    terse): a video section it may send on, and a data channel for the control messages."""
    lines = [line.strip() for line in sdp.splitlines()]
    if not lines or lines[0] != "v=0":
        raise ApiError("invalid_sdp", "the body is not an SDP offer (it must start with v=0)", "sdp")
    media = [line.split()[0][2:] for line in lines if line.startswith("m=") and line.split()]
    if "video" not in media:
        raise ApiError("invalid_sdp", "the offer has no video section: add a recvonly video transceiver", "sdp")
    if "application" not in media:
        raise ApiError("invalid_sdp", "the offer has no data channel: create one before the offer "
                       "(the control messages travel on it)", "sdp")
    for attribute, what in (("a=fingerprint:", "DTLS fingerprint"), ("a=ice-ufrag:", "ICE username fragment"),
                            ("a=ice-pwd:", "ICE password")):
        if not any(line.startswith(attribute) for line in lines):
            raise ApiError("invalid_sdp", f"the offer has no {what} ({attribute[:-1]})", "sdp")


class WebRTCStream:
    """One peer connection, from the offer to its close. `negotiate` answers the offer and
    starts `serve` in a task; `stop` (DELETE) and `close` end it from outside."""

    def __init__(self, state: ServerState, who: Caller, key: str | None, ticket: Ticket, limit: int):
        self.state, self.settings = state, state.settings
        self.who, self.key, self.limit = who, key, limit
        self._ticket: Ticket | None = ticket  # handed to the LiveStream once it opens
        self.id = "rtc_" + secrets.token_hex(12)
        self.created_at = time.monotonic()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(self.settings)))
        self.track = FrameTrack(self._send_run)
        self.sender: RTCRtpSender | None = None
        self.codec: str | None = None
        self.channel = None
        self.live: LiveStream | None = None
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._gone = asyncio.Event()  # the peer closed, failed or went silent
        self._gone_why = ""
        self._stop_asked = asyncio.Event()  # DELETE, shutdown
        self._stop_reason = "stopped"
        self._tasks: list[asyncio.Task] = []
        self._task: asyncio.Task | None = None
        self._closed = False

        @self.pc.on("datachannel")
        def on_datachannel(channel) -> None:
            if self.channel is not None:  # one control channel per session; others are ignored
                return
            self.channel = channel
            channel.on("message", self._inbox.put_nowait)
            channel.on("close", lambda: self._peer_gone("the data channel closed"))

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                self._peer_gone(f"the connection {self.pc.connectionState}")

    # --- signalling -----------------------------------------------------------------------
    async def negotiate(self, offer_sdp: str) -> str:
        """The SDP answer (ApiError invalid_sdp). Candidates are gathered before answering:
        the answer carries them all (no trickle)."""
        check_offer(offer_sdp)
        offer_sdp = without_mdns_candidates(offer_sdp)
        self.sender = self.pc.addTransceiver(self.track, direction="sendonly").sender
        transceiver = next(t for t in self.pc.getTransceivers() if t.sender is self.sender)
        preferred = CODEC_MIME[self.settings.webrtc_codec]
        codecs = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(sorted(codecs, key=lambda c: c.mimeType != preferred))
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:  # aiortc raises what its parser meets: ValueError, KeyError, ...
            raise ApiError("invalid_sdp", f"the offer could not be negotiated: {str(exc)[:200] or type(exc).__name__}",
                           "sdp") from None
        if transceiver.mid is None or transceiver.currentDirection not in ("sendonly", "sendrecv"):
            raise ApiError("invalid_sdp", "the offer's video section does not receive video (make it recvonly)",
                           "sdp")
        answer = self.pc.localDescription.sdp
        video = next(m for m in sdp.SessionDescription.parse(answer).media if m.rtp.muxId == transceiver.mid)
        self.codec = video.rtp.codecs[0].mimeType if video.rtp.codecs else None
        return answer

    def start(self) -> None:
        self._task = asyncio.create_task(self.serve(), name=f"framecast-webrtc-{self.id}")

    def stop(self, reason: str = "stopped") -> None:
        """End the session as a stop (DELETE; "shutdown" when the server stops)."""
        self._stop_reason = reason
        self._stop_asked.set()

    # --- the whole life of a session --------------------------------------------------------
    async def serve(self) -> None:
        last: Error | str | None = None
        try:
            last = await self._serve()
        except ApiError as exc:
            self.state.metrics.stream_errors.labels(exc.code).inc()
            last = Error(error=exc.detail())
        except _Stopped as exc:
            last = exc.reason
        except PeerGone:
            log.info("%s: peer gone (%s)", self.live.session_id if self.live else self.id, self._gone_why)
        except Exception:
            log.exception("webrtc stream failed")
            self.state.metrics.stream_errors.labels("internal_error").inc()
            last = Error(error=ApiError("internal_error", "the stream failed").detail())
        finally:
            await self._finish(last)

    async def _serve(self) -> str:
        start, received_at = await self._receive_start()
        if start.format not in (None, "webrtc"):
            raise ApiError("invalid_request", f"format {start.format} travels over the WebSocket "
                           "(/v1/realtime/video); this session is WebRTC", "format")
        self.live = LiveStream(self.state, self, start, self.who, self.limit, received_at)
        ticket, self._ticket = self._ticket, None
        await self.live.open(ticket)
        self.track.start(self.live.fps, self.live.shows_at)
        model = self.state.model
        await self.live.send(SessionStarted(
            session_id=self.live.session_id, width=model.width, height=model.height, fps=self.live.fps,
            format="webrtc", model=model.name, codec=self.codec, read_as=read_as(model, start.prompt)))
        log.info("%s started (webrtc %s, %.3g fps, key %s)", self.live.session_id, self.codec, self.live.fps,
                 "yes" if self.key else "none")
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._unless_gone(self.live.run())),
                       asyncio.create_task(self._watch_peer())]
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        outcome = done.pop().result()  # raises what ended it
        if isinstance(outcome, SessionDone):  # the limit: what was sent plays out first
            lead = self.settings.stream_lead_s or 0.0
            await self._unless_gone(asyncio.wait_for(self.track.played_out(), lead + 10.0))
            return outcome.reason
        return outcome

    async def _finish(self, last: Error | str | None) -> None:
        """Free the slot first; then the last message (session.done for a reason, or the
        error), and close the peer connection once it left (or the peer hung up)."""
        await self._cleanup()
        if isinstance(last, str):
            frames = self.track.released
            fps = self.live.fps if self.live is not None else 1.0
            last = SessionDone(reason=last, frames=frames, seconds=round(frames / fps, 3))
        if last is not None and not self._gone.is_set():
            try:
                self._send_text(last.model_dump_json())
                deadline = time.monotonic() + FINISH_WAIT_S
                while self.channel.bufferedAmount and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                await asyncio.wait_for(self._gone.wait(), FINISH_WAIT_S)  # the client hangs up
            except (PeerGone, TimeoutError):
                pass
        await self.close()

    async def _cleanup(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.track.discard()
        if self.live is not None:
            await self.live.close()
        if self._ticket is not None:  # taken at the POST, never handed to a stream
            self.state.admission.release(self._ticket)
            self._ticket = None

    async def close(self) -> None:
        """Close the peer connection and forget the session (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.state.webrtc_peers.pop(self.id, None)
        if self._task is not None and self._task is not asyncio.current_task() and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._cleanup()
        self.track.stop()
        await self.pc.close()

    # --- the peer ---------------------------------------------------------------------------
    def _peer_gone(self, why: str) -> None:
        if not self._gone.is_set():
            self._gone_why = why
            self._gone.set()

    async def _unless_gone(self, waiting):
        """Await `waiting`; or raise PeerGone as soon as the peer is gone, _Stopped as soon
        as a stop is asked for."""
        task = asyncio.ensure_future(waiting)
        ends = [asyncio.ensure_future(self._gone.wait()), asyncio.ensure_future(self._stop_asked.wait())]
        try:
            await asyncio.wait([task, *ends], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in ends:
                end.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.done() and not task.cancelled():
            return task.result()
        if self._gone.is_set():
            raise PeerGone
        raise _Stopped(self._stop_reason)

    async def _watch_peer(self) -> None:
        """Returns never: raises PeerGone once the peer closed, failed, or sent no RTCP report
        for webrtc_peer_timeout_s while video was flowing (a receiver reports about every
        second; one that stops is gone without a goodbye)."""
        timeout = self.settings.webrtc_peer_timeout_s
        loop = asyncio.get_running_loop()
        heard_at, last_report = loop.time(), None
        while not self._gone.is_set():
            try:
                await asyncio.wait_for(self._gone.wait(), PEER_CHECK_S)
                break
            except TimeoutError:
                pass
            report = None
            for stats in (await self.sender.getStats()).values():
                if stats.type == "remote-inbound-rtp":
                    report = (stats.timestamp, stats.packetsReceived)
            # Reports are due only while video flows (not before it, nor while paused).
            flowing = self.track.released and loop.time() - self.track.released_at < 1.0
            if report != last_report or not flowing:
                heard_at, last_report = loop.time(), report
            elif loop.time() - heard_at > timeout:
                self._peer_gone(f"no RTCP report for {timeout:g} s")
        raise PeerGone

    # --- receiving --------------------------------------------------------------------------
    async def _receive(self):
        message = await self._unless_gone(self._inbox.get())
        if isinstance(message, bytes):
            raise ApiError("binary_not_allowed", "the data channel carries JSON text messages only")
        return parse_client_message(message)

    async def _receive_start(self) -> tuple[SessionStart, float]:
        timeout = self.settings.start_timeout_s
        return await receive_start(self._receive, self.send_message, self.created_at + timeout,
                                   f"on the data channel within {timeout:g} s of the offer")

    async def _read(self) -> str:
        return await read_controls(self._receive, self.live)

    # --- sending (the LiveStream's Transport) ---------------------------------------------
    def _send_text(self, text: str) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open" or self._gone.is_set():
            raise PeerGone
        if channel.bufferedAmount > CHANNEL_BUFFER_MAX:
            self._peer_gone("it takes no control messages")
            raise PeerGone
        channel.send(text)

    def _send_run(self, meta: VideoChunk) -> None:
        try:
            self._send_text(meta.model_dump_json())
        except PeerGone:
            pass  # the session is ending; the track is told so

    async def send_message(self, message) -> None:
        if isinstance(message, SessionPaused):
            self.track.pause()  # no frame leaves after session.paused ...
        self._send_text(message.model_dump_json())
        if isinstance(message, SessionResumed):
            self.track.resume()  # ... until session.resumed

    async def send_chunk(self, chunk: ChunkOut, fps: float) -> int:
        """Queue the chunk's frames on the track (they leave one by one at their time; its
        video.chunk goes as the first one does). One media message per chunk."""
        if self._gone.is_set():
            raise PeerGone
        if not len(chunk.frames):
            return 0
        await self._unless_gone(self.track.room(TRACK_AHEAD_S))
        self.track.put(chunk)
        return 1


async def close_all(state: ServerState) -> None:
    """At shutdown: end every WebRTC session (session.done "shutdown") and close its peer."""
    peers = list(state.webrtc_peers.values())
    for peer in peers:
        peer.stop("shutdown")
    tasks = [peer._task for peer in peers if peer._task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=2 * FINISH_WAIT_S)
    await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
