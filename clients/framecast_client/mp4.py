"""Just enough ISO-BMFF (fragmented MP4) parsing for a streaming client.

The server sends an init segment (ftyp + moov) and then one `moof`+`mdat` fragment
per chunk. To decode each fragment as it arrives, with no demuxer thread waiting on
a pipe and no probing delay, we read the codec configuration out of the init
segment and the sample table out of each fragment, and hand the samples straight to
a decoder. The same parser patches fragment timestamps so recordings from two
sessions (after a reconnect) join into one timeline.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator

from clients.framecast_client.errors import ProtocolError

# VisualSampleEntry fields before its child boxes (ISO 14496-12 §12.1.3).
_VISUAL_SAMPLE_ENTRY_HEADER = 78
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf"}


@dataclass
class Box:
    type: bytes
    start: int  # offset of the box header in the buffer
    header: int  # 8 or 16
    end: int

    @property
    def payload(self) -> int:
        return self.start + self.header


def iter_boxes(buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None) -> Iterator[Box]:
    end = len(buf) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ProtocolError(f"malformed MP4 box {kind!r} at {pos}: size {size}")
        yield Box(kind, pos, header, pos + size)
        pos += size


def find_path(buf, path: list[bytes], start: int = 0, end: int | None = None) -> list[Box]:
    """All boxes at `path` (e.g. [b"moov", b"trak"]) under the given range."""
    found: list[Box] = []
    for box in iter_boxes(buf, start, end):
        if box.type != path[0]:
            continue
        if len(path) == 1:
            found.append(box)
        else:
            found.extend(find_path(buf, path[1:], box.payload, box.end))
    return found


@dataclass
class TrackInfo:
    codec_tag: str  # sample entry type: "avc1", "hev1", ...
    codec_config: bytes  # payload of avcC / hvcC: the decoder's extradata
    timescale: int
    width: int
    height: int
    default_duration: int = 0
    default_size: int = 0

    @property
    def codec_string(self) -> str | None:
        """RFC 6381 codec for MSE, e.g. avc1.42E01E (profile, constraints, level)."""
        if self.codec_tag in ("avc1", "avc3") and len(self.codec_config) >= 4:
            return f"{self.codec_tag}.{self.codec_config[1:4].hex().upper()}"
        return None

    @property
    def decoder_name(self) -> str:
        names = {"avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc", "av01": "av1", "vp09": "vp9"}
        if self.codec_tag not in names:
            raise ProtocolError(f"unsupported codec in init segment: {self.codec_tag!r}")
        return names[self.codec_tag]


def parse_init(buf: bytes) -> TrackInfo:
    """Codec, timescale and size of the (single) video track of an init segment."""
    traks = find_path(buf, [b"moov", b"trak"])
    if not traks:
        raise ProtocolError("init segment has no moov/trak")
    trak = traks[0]
    mdhd = find_path(buf, [b"mdia", b"mdhd"], trak.payload, trak.end)
    stsd = find_path(buf, [b"mdia", b"minf", b"stbl", b"stsd"], trak.payload, trak.end)
    if not mdhd or not stsd:
        raise ProtocolError("init segment lacks mdhd or stsd")
    version = buf[mdhd[0].payload]
    # mdhd: version/flags, then creation/modification times (4 or 8 bytes each), timescale.
    timescale = struct.unpack_from(">I", buf, mdhd[0].payload + (20 if version == 1 else 12))[0]
    entries = list(iter_boxes(buf, stsd[0].payload + 8, stsd[0].end))  # skip version/flags, count
    if not entries:
        raise ProtocolError("init segment has an empty stsd")
    entry = entries[0]
    width, height = struct.unpack_from(">HH", buf, entry.payload + 24)
    config = b""
    for child in iter_boxes(buf, entry.payload + _VISUAL_SAMPLE_ENTRY_HEADER, entry.end):
        if child.type in (b"avcC", b"hvcC", b"av1C", b"vpcC"):
            config = bytes(buf[child.payload:child.end])
    track = TrackInfo(entry.type.decode("latin-1"), config, timescale, width, height)
    trex = find_path(buf, [b"moov", b"mvex", b"trex"])
    if trex:  # version/flags, track_ID, sample_description_index, duration, size, flags
        track.default_duration, track.default_size = struct.unpack_from(">II", buf, trex[0].payload + 12)
    return track


@dataclass
class Sample:
    data: bytes
    decode_time: int  # in track timescale units
    composition_offset: int
    duration: int
    is_sync: bool

    @property
    def pts(self) -> int:
        return self.decode_time + self.composition_offset


@dataclass
class Fragment:
    sequence: int
    base_decode_time: int
    samples: list[Sample] = field(default_factory=list)


def parse_fragment(buf: bytes, track: TrackInfo) -> list[Fragment]:
    """Samples of every moof/mdat pair in one media message (usually exactly one)."""
    fragments = []
    for moof in (b for b in iter_boxes(buf) if b.type == b"moof"):
        mfhd = find_path(buf, [b"mfhd"], moof.payload, moof.end)
        sequence = struct.unpack_from(">I", buf, mfhd[0].payload + 4)[0] if mfhd else 0
        for traf in find_path(buf, [b"traf"], moof.payload, moof.end):
            fragments.append(_parse_traf(buf, moof, traf, track, sequence))
    if not fragments:
        raise ProtocolError("media fragment has no moof box")
    return fragments


def _parse_traf(buf, moof: Box, traf: Box, track: TrackInfo, sequence: int) -> Fragment:
    tfhd = find_path(buf, [b"tfhd"], traf.payload, traf.end)[0]
    flags = struct.unpack_from(">I", buf, tfhd.payload)[0] & 0xFFFFFF
    pos = tfhd.payload + 8  # version/flags, track_ID
    base_offset = moof.start  # default-base-is-moof, and the rule when no base is given
    if flags & 0x1:
        base_offset = struct.unpack_from(">Q", buf, pos)[0]
        pos += 8
    if flags & 0x2:
        pos += 4
    duration, size = track.default_duration, track.default_size
    if flags & 0x8:
        duration = struct.unpack_from(">I", buf, pos)[0]
        pos += 4
    if flags & 0x10:
        size = struct.unpack_from(">I", buf, pos)[0]
        pos += 4
    tfdt = find_path(buf, [b"tfdt"], traf.payload, traf.end)
    decode_time = 0
    if tfdt:
        v = buf[tfdt[0].payload]
        fmt = ">Q" if v == 1 else ">I"
        decode_time = struct.unpack_from(fmt, buf, tfdt[0].payload + 4)[0]
    fragment = Fragment(sequence, decode_time)
    for trun in find_path(buf, [b"trun"], traf.payload, traf.end):
        decode_time = _parse_trun(buf, trun, base_offset, duration, size, decode_time, fragment.samples)
    return fragment


def _parse_trun(buf, trun: Box, base_offset: int, default_duration: int, default_size: int,
                decode_time: int, out: list[Sample]) -> int:
    version_flags, count = struct.unpack_from(">II", buf, trun.payload)
    version, flags = version_flags >> 24, version_flags & 0xFFFFFF
    pos = trun.payload + 8
    data_pos = base_offset
    if flags & 0x1:
        data_pos = base_offset + struct.unpack_from(">i", buf, pos)[0]
        pos += 4
    first_flags = None
    if flags & 0x4:
        first_flags = struct.unpack_from(">I", buf, pos)[0]
        pos += 4
    for i in range(count):
        duration, size, sample_flags, cto = default_duration, default_size, None, 0
        if flags & 0x100:
            duration = struct.unpack_from(">I", buf, pos)[0]
            pos += 4
        if flags & 0x200:
            size = struct.unpack_from(">I", buf, pos)[0]
            pos += 4
        if flags & 0x400:
            sample_flags = struct.unpack_from(">I", buf, pos)[0]
            pos += 4
        if flags & 0x800:
            cto = struct.unpack_from(">i" if version else ">I", buf, pos)[0]
            pos += 4
        if i == 0 and first_flags is not None:
            sample_flags = first_flags
        if data_pos + size > len(buf):
            raise ProtocolError("trun points past the end of the fragment")
        # sample_is_non_sync_sample is bit 16 of the sample flags.
        is_sync = sample_flags is None or not (sample_flags >> 16) & 1
        out.append(Sample(bytes(buf[data_pos:data_pos + size]), decode_time, cto, duration, is_sync))
        data_pos += size
        decode_time += duration
    return decode_time


def shift_fragment(buf: bytes, time_offset: int, sequence_offset: int) -> bytes:
    """Copy of a fragment with tfdt and mfhd moved on, to append it after another session."""
    out = bytearray(buf)
    for moof in (b for b in iter_boxes(out) if b.type == b"moof"):
        for mfhd in find_path(out, [b"mfhd"], moof.payload, moof.end):
            seq = struct.unpack_from(">I", out, mfhd.payload + 4)[0]
            struct.pack_into(">I", out, mfhd.payload + 4, seq + sequence_offset)
        for tfdt in find_path(out, [b"traf", b"tfdt"], moof.payload, moof.end):
            if out[tfdt.payload] == 1:
                t = struct.unpack_from(">Q", out, tfdt.payload + 4)[0]
                struct.pack_into(">Q", out, tfdt.payload + 4, t + time_offset)
            else:
                t = struct.unpack_from(">I", out, tfdt.payload + 4)[0] + time_offset
                if t >= 2**32:
                    raise ProtocolError("recording too long to join sessions with a 32-bit tfdt")
                struct.pack_into(">I", out, tfdt.payload + 4, t)
    return bytes(out)
