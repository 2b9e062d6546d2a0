"""Write a live stream to an MP4 file, across reconnects.

fMP4: the init segment followed by the fragments is itself a playable MP4, so the
bytes are written as they come (exact, no re-encode). After a reconnect the new
session starts its timeline at zero again; if its codec setup matches, its fragments
are appended with their decode times and sequence numbers moved past the first
session's, so the file stays one continuous video.
JPEG: frames are encoded to H.264 with PyAV (a browser-playable file).
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction

from clients.framecast_client.errors import FramecastError, ProtocolError
from clients.framecast_client.mp4 import TrackInfo, parse_fragment, parse_init, shift_fragment
from clients.framecast_client.stream import MediaChunk


class IncompatibleSession(FramecastError):
    """A reconnected session's encoder setup differs, so it cannot join the same file."""


class Fmp4Recorder:
    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._tmp = self.path + ".part"
        self._out = open(self._tmp, "wb")
        self._track: TrackInfo | None = None
        self._time_offset = 0  # track units added to this session's tfdt
        self._sequence_offset = 0
        self._end_time = 0  # decode time just after the last written sample
        self._last_sequence = 0
        self._needs_init = True  # next media must be an init segment
        self.frames = 0

    def new_session(self) -> None:
        self._needs_init = True

    def add(self, media: MediaChunk) -> None:
        if media.meta.init:
            self._add_init(media.data)
            return
        if self._needs_init:
            raise ProtocolError("a session's media began without an fMP4 init segment")
        data = media.data
        if self._time_offset or self._sequence_offset:
            data = shift_fragment(data, self._time_offset, self._sequence_offset)
        for fragment in parse_fragment(data, self._track):
            self._last_sequence = max(self._last_sequence, fragment.sequence)
            for sample in fragment.samples:
                self._end_time = max(self._end_time, sample.decode_time + sample.duration)
                self.frames += 1
        self._out.write(data)
        self._out.flush()  # a crash mid-stream still leaves the fragments so far on disk

    def _add_init(self, data: bytes) -> None:
        track = parse_init(data)
        if self._track is None:
            self._track = track
            self._out.write(data)
        elif (track.codec_config, track.timescale, track.width, track.height) != (
                self._track.codec_config, self._track.timescale, self._track.width, self._track.height):
            raise IncompatibleSession("the reconnected session uses a different encoder setup")
        else:
            self._time_offset, self._sequence_offset = self._end_time, self._last_sequence
        self._needs_init = False

    def close(self) -> None:
        self._out.close()
        if self._track is None:
            os.remove(self._tmp)  # nothing was received: leave no empty file behind
            return
        os.replace(self._tmp, self.path)


class JpegRecorder:
    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = os.fspath(path)
        self._tmp = self.path + ".part"
        self._fps = Fraction(fps).limit_denominator(1000)
        self._container = None
        self._stream = None
        self._pts_offset = 0.0  # seconds added to this session's pts
        self._session_start: float | None = None
        self._end = 0.0
        self.frames = 0

    def new_session(self) -> None:
        self._pts_offset = self._end
        self._session_start = None

    def add_frame(self, image, pts: float) -> None:  # image: [H, W, 3] uint8
        import av

        if self._container is None:
            self._open(image.shape[1], image.shape[0])
        if self._session_start is None:
            self._session_start = pts
        t = self._pts_offset + pts - self._session_start
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame = frame.reformat(width=self._stream.width, height=self._stream.height, format="yuv420p")
        frame.pts = max(round(t / self._stream.time_base), self._last_pts + 1)
        self._last_pts = frame.pts
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._end = t + 1 / float(self._fps)
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        import av

        self._container = av.open(self._tmp, "w", format="mp4")
        self._stream = self._container.add_stream(_h264_encoder(), rate=self._fps)
        # yuv420p needs even sizes.
        self._stream.width, self._stream.height = width - width % 2, height - height % 2
        self._stream.pix_fmt = "yuv420p"
        # Frames carry their stream pts (jitter and gaps kept), in 90 kHz ticks.
        self._stream.time_base = self._stream.codec_context.time_base = Fraction(1, 90000)
        self._last_pts = -1

    def close(self) -> None:
        if self._container is None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._tmp)
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)


def _h264_encoder() -> str:
    import av

    for name in ("libx264", "h264", "mpeg4"):  # mpeg4: a PyAV build without any H.264 encoder
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):
            continue
    raise FramecastError("PyAV has no video encoder to write MP4 with")
