"""Media messages -> RGB frames ([H, W, 3] uint8 numpy arrays).

fMP4: the init segment configures a PyAV codec context (its avcC is the decoder's
extradata) and each fragment's samples are decoded as they arrive, so a frame is
available as soon as its chunk is, with no demuxer probing ahead. JPEG: one image
per message through Pillow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from clients.framecast_client.errors import ProtocolError
from clients.framecast_client.mp4 import TrackInfo, parse_fragment, parse_init
from clients.protocol import VideoChunk


@dataclass
class Frame:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    index: int  # frame number in the session, from 0
    pts: float  # seconds of stream time
    chunk_index: int  # the video.chunk it arrived in
    prompt_event_id: str | None  # the prompt update this frame was generated under (None: the first prompt)
    received_at: float  # time.monotonic() when its media message arrived


@dataclass
class _Origin:
    chunk: VideoChunk
    event_id: str | None
    received_at: float


class Fmp4Decoder:
    def __init__(self):
        self.track: TrackInfo | None = None
        self._ctx = None
        self._origins: dict[int, _Origin] = {}  # sample pts (track units) -> chunk it came in
        self._frames_out = 0

    def feed(self, chunk: VideoChunk, data: bytes, event_id: str | None, received_at: float) -> list[Frame]:
        if chunk.init:
            self._open(data)
            return []
        if self._ctx is None:
            raise ProtocolError("fMP4 fragment arrived before the init segment")
        import av

        frames = []
        for fragment in parse_fragment(data, self.track):
            for sample in fragment.samples:
                self._origins[sample.pts] = _Origin(chunk, event_id, received_at)
                packet = av.Packet(sample.data)
                packet.pts, packet.dts = sample.pts, sample.decode_time
                frames.extend(self._decode(packet))
        return frames

    def flush(self) -> list[Frame]:
        """Frames a decoder with reordering delay still holds at the end of the stream."""
        return self._decode(None) if self._ctx is not None else []

    def _open(self, init: bytes) -> None:
        import av

        self.track = parse_init(init)
        self._ctx = av.CodecContext.create(self.track.decoder_name, "r")
        if self.track.codec_config:
            self._ctx.extradata = self.track.codec_config
        self._origins.clear()

    def _decode(self, packet) -> list[Frame]:
        import av

        try:
            decoded = self._ctx.decode(packet)
        except av.error.FFmpegError as exc:
            raise ProtocolError(f"cannot decode fMP4 sample: {exc}") from exc
        frames = []
        for frame in decoded:
            origin = self._origins.pop(frame.pts, None)
            if origin is None:
                raise ProtocolError(f"decoder produced a frame with unknown pts {frame.pts}")
            frames.append(Frame(frame.to_ndarray(format="rgb24"), self._frames_out,
                                frame.pts / self.track.timescale, origin.chunk.index,
                                origin.event_id, origin.received_at))
            self._frames_out += 1
        return frames


class JpegDecoder:
    def __init__(self):
        self._frames_out = 0

    def feed(self, chunk: VideoChunk, data: bytes, event_id: str | None, received_at: float) -> list[Frame]:
        from PIL import Image, UnidentifiedImageError

        try:
            image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ProtocolError(f"binary message {chunk.index} is not a JPEG: {exc}") from exc
        frame = Frame(image, self._frames_out, chunk.pts, chunk.index, event_id, received_at)
        self._frames_out += 1
        return [frame]

    def flush(self) -> list[Frame]:
        return []


def decoder_for(media_format: str) -> Fmp4Decoder | JpegDecoder:
    return Fmp4Decoder() if media_format == "fmp4" else JpegDecoder()
