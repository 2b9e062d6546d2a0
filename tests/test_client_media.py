"""Client media handling without a server: fMP4 parsing and decoding (against the
server's own encoder and against libavformat's muxer), recordings that join two
sessions, JPEG recordings, addresses and exit codes."""

from __future__ import annotations

import io
import re
import time

import av
import numpy as np
import pytest

from clients.framecast_client.config import resolve_endpoint
from clients.framecast_client.decode import Fmp4Decoder, JpegDecoder
from clients.framecast_client.errors import ExitCode, InvalidAddress, ProtocolError
from clients.framecast_client.mp4 import iter_boxes, parse_fragment, parse_init, shift_fragment
from clients.framecast_client.record import Fmp4Recorder, IncompatibleSession, JpegRecorder
from clients.framecast_client.stream import MediaChunk
from clients.protocol import VideoChunk
from tests.client_fixtures import ffprobe, moving_square

CHUNK = 4


def server_segments(frames: np.ndarray, fps: float = 16.0) -> tuple[bytes, list[bytes], str]:
    """The server's streaming encoder: init segment, one fragment per CHUNK frames, codec string."""
    from server.encoding import Fmp4StreamEncoder

    encoder = Fmp4StreamEncoder(frames.shape[2], frames.shape[1], fps, keyframe_every=2 * CHUNK)
    fragments = [encoder.encode(list(frames[i:i + CHUNK])) for i in range(0, len(frames), CHUNK)]
    return encoder.init_segment, fragments, encoder.codec_string


def libav_segments(frames: np.ndarray, fps: int = 16) -> tuple[bytes, list[bytes]]:
    """libavformat's own fragmented mp4 (other tfhd/trun flag choices than the server's)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4",
                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"g": str(CHUNK), "bf": "0", "sc_threshold": "0", "tune": "zerolatency"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    data = buf.getvalue()
    boxes = list(iter_boxes(data))
    init = b"".join(data[b.start:b.end] for b in boxes if b.type in (b"ftyp", b"moov"))
    fragments, moof = [], b""
    for box in boxes:
        if box.type == b"moof":
            moof = data[box.start:box.end]
        elif box.type == b"mdat":
            fragments.append(moof + data[box.start:box.end])
    return init, fragments


def media(index: int, data: bytes, frames: int, pts: float, init: bool = False) -> MediaChunk:
    return MediaChunk(VideoChunk(index=index, frames=frames, bytes=len(data), pts=pts, init=init), data, None,
                      time.monotonic())


def decode_all(init: bytes, fragments: list[bytes]) -> list:
    decoder = Fmp4Decoder()
    assert decoder.feed(media(0, init, 0, 0.0, True).meta, init, None, 0.0) == []
    frames = []
    for i, fragment in enumerate(fragments, start=1):
        got = decoder.feed(media(i, fragment, CHUNK, 0.0).meta, fragment, f"evt{i}", 0.0)
        # Low-latency H.264 holds nothing back: a fragment's frames come out with it.
        assert [f.chunk_index for f in got] == [i] * CHUNK
        frames += got
    return frames + decoder.flush()


@pytest.mark.parametrize("source", ["server_encoder", "libavformat"])
def test_fmp4_fragments_decode_to_the_frames_encoded(source):
    frames = moving_square(12)
    if source == "server_encoder":
        init, fragments, _ = server_segments(frames)
    else:
        init, fragments = libav_segments(frames)
    decoded = decode_all(init, fragments)
    assert [f.index for f in decoded] == list(range(12))
    np.testing.assert_allclose([f.pts for f in decoded], np.arange(12) / 16, atol=1e-3)
    images = np.stack([f.image for f in decoded]).astype(np.int16)
    assert images.shape == frames.shape
    # Lossy, but each decoded frame must be much closer to its own source than to its neighbour.
    own = np.abs(images - frames).mean(axis=(1, 2, 3))
    shifted = np.abs(images[1:] - frames[:-1]).mean(axis=(1, 2, 3))
    assert own.max() < 6, own
    assert (own[1:] * 2 < shifted).all()


def test_codec_string_from_init_matches_the_encoder():
    init, _, codec = server_segments(moving_square(4))
    track = parse_init(init)
    assert track.codec_string == codec
    assert (track.width, track.height, track.timescale) == (64, 48, 90000)


def test_fragment_before_init_and_truncated_boxes_are_protocol_errors():
    init, fragments, _ = server_segments(moving_square(4))
    with pytest.raises(ProtocolError, match="before the init"):
        Fmp4Decoder().feed(media(1, fragments[0], CHUNK, 0.0).meta, fragments[0], None, 0.0)
    with pytest.raises(ProtocolError, match="past the end"):
        parse_fragment(fragments[0][:-10], parse_init(init))
    with pytest.raises(ProtocolError, match="malformed"):
        parse_init(init[:-10])
    with pytest.raises(ProtocolError, match="not a JPEG"):
        JpegDecoder().feed(media(0, b"nope", 1, 0.0).meta, b"nope", None, 0.0)


def test_shift_fragment_moves_decode_time_and_sequence():
    init, fragments, _ = server_segments(moving_square(8))
    track = parse_init(init)
    original = parse_fragment(fragments[1], track)[0]
    shifted = parse_fragment(shift_fragment(fragments[1], 90000, 7), track)[0]
    assert shifted.sequence == original.sequence + 7
    assert [s.decode_time for s in shifted.samples] == [s.decode_time + 90000 for s in original.samples]
    assert [s.data for s in shifted.samples] == [s.data for s in original.samples]


def test_recording_joins_two_sessions_into_one_timeline(tmp_path):
    """A reconnect starts a new session at t=0; the file must still play straight through."""
    first_frames, second_frames = moving_square(8), moving_square(8)[::-1].copy()
    path = tmp_path / "joined.mp4"
    recorder = Fmp4Recorder(path)
    for frames in (first_frames, second_frames):
        init, fragments, _ = server_segments(frames)
        recorder.new_session()
        recorder.add(media(0, init, 0, 0.0, True))
        for i, fragment in enumerate(fragments, start=1):
            recorder.add(media(i, fragment, CHUNK, (i - 1) * CHUNK / 16))
    recorder.close()
    facts = ffprobe(path)
    assert int(facts["streams"][0]["nb_read_frames"]) == 16
    assert float(facts["format"]["duration"]) == pytest.approx(1.0, abs=0.07)
    with av.open(str(path)) as container:
        decoded = [f for f in container.decode(video=0)]
    pts = [f.time for f in decoded]
    assert pts == sorted(pts) and len(set(pts)) == 16
    # The second half is the second session's pictures, in order.
    tail = np.stack([f.to_ndarray(format="rgb24") for f in decoded[8:]]).astype(np.int16)
    assert np.abs(tail - second_frames).mean() < 6


def test_recording_refuses_a_session_with_other_encoder_settings(tmp_path):
    recorder = Fmp4Recorder(tmp_path / "x.mp4")
    recorder.add(media(0, server_segments(moving_square(4))[0], 0, 0.0, True))
    other = server_segments(moving_square(4, height=32, width=32))[0]
    recorder.new_session()
    with pytest.raises(IncompatibleSession):
        recorder.add(media(0, other, 0, 0.0, True))
    recorder.close()


def test_jpeg_recording_encodes_a_playable_mp4(tmp_path):
    from PIL import Image

    frames = moving_square(10, height=47, width=63)  # odd sizes: yuv420p needs even ones
    decoder, recorder = JpegDecoder(), JpegRecorder(tmp_path / "j.mp4", fps=16)
    for i, frame in enumerate(frames):
        jpeg = io.BytesIO()
        Image.fromarray(frame).save(jpeg, format="JPEG", quality=90)
        for decoded in decoder.feed(media(i, jpeg.getvalue(), 1, i / 16).meta, jpeg.getvalue(), None, 0.0):
            recorder.add_frame(decoded.image, decoded.pts)
    recorder.close()
    facts = ffprobe(tmp_path / "j.mp4")
    stream = facts["streams"][0]
    assert float(facts["format"]["duration"]) == pytest.approx(10 / 16, abs=0.01)
    assert stream["codec_name"] in ("h264", "mpeg4")
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (62, 46, 10)


def test_endpoint_from_arguments_and_environment(monkeypatch):
    monkeypatch.setenv("FRAMECAST_URL", "https://video.example:8443/prefix/")
    monkeypatch.setenv("FRAMECAST_API_KEY", "env-key")
    endpoint = resolve_endpoint()
    assert endpoint.http_url == "https://video.example:8443/prefix"
    assert endpoint.realtime_url == "wss://video.example:8443/prefix/v1/realtime/video"
    assert endpoint.headers() == {"Authorization": "Bearer env-key"}
    explicit = resolve_endpoint("ws://127.0.0.1:9/v1/realtime/video", api_key="")
    assert (explicit.http_url, explicit.api_key) == ("http://127.0.0.1:9", None)
    assert resolve_endpoint("localhost:8000").http_url == "http://localhost:8000"
    with pytest.raises(InvalidAddress):
        resolve_endpoint("ftp://host")


def test_exit_code_table_in_help_matches_the_codes():
    """The help text is written out by hand (registration must stay import-light)."""
    from clients.commands import EXIT_CODES

    documented = dict(re.findall(r"^\s+(\d+)\s+(.+)$", EXIT_CODES, re.M))
    expected = {ExitCode.OK: "ok", ExitCode.ERROR: "request refused", ExitCode.USAGE: "usage error",
                ExitCode.UNAVAILABLE: "server unreachable", ExitCode.UNAUTHORIZED: "unauthorized",
                ExitCode.SERVER_FULL: "server full", ExitCode.CONNECTION_LOST: "connection lost",
                ExitCode.JOB_FAILED: "video job failed", ExitCode.PROTOCOL: "protocol error",
                ExitCode.INTERRUPTED: "interrupted"}
    assert len(documented) == len(expected)
    for code, text in expected.items():
        assert documented.get(str(code), "").startswith(text), (code, documented)
