"""Video encoders: a streaming fragmented-MP4 (H.264) encoder for live sessions, a JPEG
frame encoder, a whole-MP4 encoder for clip jobs and their JPEG thumbnail.

The streaming encoder drives libx264 through PyAV's codec context and writes the MP4
boxes itself. libavformat's mp4 muxer only closes a fragment when the *next* packet
arrives (PyAV cannot send it the flush that would close it early), which would hold
every chunk's last frame back by a whole chunk; writing `moof`+`mdat` ourselves gives
exactly one self-contained fragment per piece sent, the moment it is encoded, in the
layout Media Source Extensions play (ISO/IEC 14496-12 fragments, default-base-is-moof).
"""

from __future__ import annotations

import io
import struct
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import av.codec.context
import numpy as np
from PIL import Image

TIMESCALE = 90_000  # MPEG ticks per second: whole ticks per frame at 16/24/25/30/60 fps

# Sample flags (ISO/IEC 14496-12 8.8.3.1): a sync sample depends on nothing; any other
# sample depends on others and is not a sync sample.
SYNC_SAMPLE = 0x02000000
NON_SYNC_SAMPLE = 0x01010000

NAL_SPS, NAL_PPS, NAL_AUD = 7, 8, 9
IDENTITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (3- or 4-byte start codes), without start codes.

    Emulation prevention guarantees 00 00 01 never occurs inside a NAL unit, so a C-speed
    `find` is a correct splitter.
    """
    nals = []
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        nxt = data.find(b"\x00\x00\x01", pos + 3)
        # The zero before a 4-byte start code belongs to the start code, not the NAL.
        nal = data[pos + 3 :] if nxt < 0 else data[pos + 3 : nxt].rstrip(b"\x00")
        if nal:
            nals.append(nal)
        pos = nxt
    return nals


def _rational_fps(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class Fmp4StreamEncoder:
    """H.264 in fragmented MP4: `init_segment` once, then `encode(frames)` -> one fragment.

    Low latency: zerolatency tune (no lookahead, no frame delay, no B-frames), so each
    frame in gives its packet out at once; baseline profile so every MSE decoder takes it.
    """

    def __init__(self, width: int, height: int, fps: float, keyframe_every: int | None = None):
        self.width, self.height, self.fps = width, height, fps
        self.sample_duration = round(TIMESCALE / fps)
        rate = _rational_fps(fps)
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base, ctx.framerate = 1 / rate, rate
        ctx.gop_size = keyframe_every or max(1, round(2 * fps))  # a keyframe every ~2 s
        ctx.max_b_frames = 0
        # One thread per stream: concurrency comes from many streams, and sliced threads
        # on small frames cost more in synchronisation than they save.
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "threads": "1"}
        # Parameter sets go into extradata (the avcC box), not in front of keyframes.
        ctx.flags |= av.codec.context.Flags.global_header
        ctx.open()
        self._ctx = ctx
        params = split_annexb(bytes(ctx.extradata or b""))
        self._sps = [n for n in params if n[0] & 0x1F == NAL_SPS]
        self._pps = [n for n in params if n[0] & 0x1F == NAL_PPS]
        if not self._sps or not self._pps:
            raise RuntimeError("libx264 gave no SPS/PPS in extradata")
        self._frames = 0  # frames encoded so far (decode time of the next one)
        self._sequence = 0  # fragments written so far
        self.init_segment = self._init_segment()

    @property
    def codec_string(self) -> str:
        """RFC 6381 codecs parameter for MediaSource.addSourceBuffer."""
        sps = self._sps[0]
        return f"avc1.{sps[1]:02X}{sps[2]:02X}{sps[3]:02X}"

    # --- init segment: ftyp + moov with an empty sample table and mvex ---------------
    def _init_segment(self) -> bytes:
        sps = self._sps[0]
        avcc = _box(b"avcC", bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE0 | len(self._sps)]),
                    *(struct.pack(">H", len(s)) + s for s in self._sps), bytes([len(self._pps)]),
                    *(struct.pack(">H", len(p)) + p for p in self._pps))
        avc1 = _box(b"avc1", bytes(6), struct.pack(">H", 1), bytes(16),
                    struct.pack(">HHIIIH", self.width, self.height, 0x480000, 0x480000, 0, 1),
                    bytes(32), struct.pack(">Hh", 0x18, -1), avcc)
        empty_table = struct.pack(">I", 0)
        stbl = _box(b"stbl", _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
                    _full_box(b"stts", 0, 0, empty_table), _full_box(b"stsc", 0, 0, empty_table),
                    _full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)), _full_box(b"stco", 0, 0, empty_table))
        dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
        minf = _box(b"minf", _full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
        mdia = _box(b"mdia",
                    _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, 0, 0x55C4, 0)),  # 'und'
                    _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"Framecast video\x00"), minf)
        tkhd = _full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(8),
                         struct.pack(">hhhH", 0, 0, 0, 0), IDENTITY_MATRIX,
                         struct.pack(">II", self.width << 16, self.height << 16))
        mvhd = _full_box(b"mvhd", 0, 0, struct.pack(">IIIIIH", 0, 0, TIMESCALE, 0, 0x10000, 0x100), bytes(10),
                         IDENTITY_MATRIX, bytes(24), struct.pack(">I", 2))
        mvex = _box(b"mvex", _full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
        ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1iso6mp41")
        return ftyp + _box(b"moov", mvhd, _box(b"trak", tkhd, mdia), mvex)

    # --- one fragment per call ----------------------------------------------------------
    def encode(self, frames: Sequence[np.ndarray]) -> bytes:
        """frames: uint8 [H, W, 3] RGB each (views are fine) -> moof + mdat."""
        samples: list[tuple[bytes, bool]] = []
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = self._frames + len(samples)
            for packet in self._ctx.encode(video_frame):
                samples.append((self._sample(bytes(packet)), packet.is_keyframe))
        if len(samples) != len(frames):  # zerolatency gives one packet per frame, at once
            raise RuntimeError(f"encoder returned {len(samples)} packets for {len(frames)} frames")
        return self._fragment(samples)

    @staticmethod
    def _sample(annexb: bytes) -> bytes:
        """Annex B access unit -> 4-byte length-prefixed NAL units, parameter sets dropped."""
        return b"".join(struct.pack(">I", len(nal)) + nal for nal in split_annexb(annexb)
                        if nal[0] & 0x1F not in (NAL_SPS, NAL_PPS, NAL_AUD))

    def _fragment(self, samples: list[tuple[bytes, bool]]) -> bytes:
        self._sequence += 1
        entries = b"".join(struct.pack(">III", self.sample_duration, len(data),
                                       SYNC_SAMPLE if key else NON_SYNC_SAMPLE) for data, key in samples)
        # trun flags: data-offset, per-sample duration, size and flags.
        trun_size = 8 + 4 + 8 + len(entries)
        tfhd = _full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1))  # default-base-is-moof
        tfdt = _full_box(b"tfdt", 1, 0, struct.pack(">Q", self._frames * self.sample_duration))
        moof_size = 8 + 16 + 8 + len(tfhd) + len(tfdt) + trun_size
        trun = _full_box(b"trun", 0, 0x000701, struct.pack(">Ii", len(samples), moof_size + 8), entries)
        moof = _box(b"moof", _full_box(b"mfhd", 0, 0, struct.pack(">I", self._sequence)),
                    _box(b"traf", tfhd, tfdt, trun))
        assert len(moof) == moof_size
        self._frames += len(samples)
        return moof + _box(b"mdat", *(data for data, _ in samples))


class JpegEncoder:
    def __init__(self, quality: int = 85):
        self.quality = quality

    def encode(self, frame: np.ndarray) -> bytes:
        """uint8 [H, W, 3] RGB -> one JPEG image."""
        out = io.BytesIO()
        Image.fromarray(frame).save(out, format="JPEG", quality=self.quality)
        return out.getvalue()


def encode_mp4(frames: np.ndarray | Sequence[np.ndarray], fps: float, crf: int = 20) -> bytes:
    """A whole clip (uint8 [T, H, W, 3]) -> a progressive-download MP4 (moov first)."""
    if len(frames) == 0:
        raise ValueError("no frames to encode")
    height, width = frames[0].shape[:2]
    # faststart rewrites the file to move moov first, which needs a real file by name.
    with tempfile.TemporaryDirectory(prefix="framecast-mp4-") as tmp:
        path = Path(tmp) / "clip.mp4"
        with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=_rational_fps(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "veryfast", "crf": str(crf)}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
        return path.read_bytes()


def mp4_thumbnail(data: bytes, quality: int = 85) -> bytes:
    """The first frame of an MP4 as a JPEG (decoded on demand: clips are short, and the
    job store keeps one file per job)."""
    with av.open(io.BytesIO(data), "r") as container:
        for frame in container.decode(video=0):
            return JpegEncoder(quality).encode(frame.to_ndarray(format="rgb24"))
    raise ValueError("the MP4 holds no video frame")


def kept_frames(first: int, count: int, source_fps: float, target_fps: float) -> list[int]:
    """Offsets (within a run of `count` frames starting at stream frame `first`) of the frames
    to keep so that source_fps video plays at target_fps <= source_fps: frame g is kept when
    it is the first to reach a new output slot, floor(g * r) > floor((g - 1) * r), r = target/source."""
    ratio = _rational_fps(target_fps) / _rational_fps(source_fps)
    if ratio >= 1:
        return list(range(count))
    return [g - first for g in range(first, first + count) if (g * ratio).__floor__() > ((g - 1) * ratio).__floor__()]


def kept_count(n: int, source_fps: float, target_fps: float) -> int:
    """How many of the first `n` stream frames `kept_frames` keeps: one per output slot
    reached, floor((n - 1) * r) + 1."""
    ratio = _rational_fps(target_fps) / _rational_fps(source_fps)
    if n <= 0 or ratio >= 1:
        return max(n, 0)
    return ((n - 1) * ratio).__floor__() + 1
