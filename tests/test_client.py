"""The Python client against a real `framecast serve --model tiny-random` on loopback:
frames, prompt switches, pause/resume, clip jobs, the sync wrapper, and every failure a
user can meet (server down, wrong key, full, connection dropped)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from clients.framecast_client import (ConnectionLost, FramecastClient, FramecastClientSync, JobFailed,
                                      ServerFull, ServerUnavailable, Unauthorized)
from tests.client_fixtures import DroppingProxy, closed_port, ffprobe, shared_server

KEY = "test-key-7f3a"


@pytest.fixture
def server():
    return shared_server()


@pytest.fixture
def guarded_server():
    """One stream at a time, API key required."""
    return shared_server(FRAMECAST_API_KEYS=KEY, FRAMECAST_MAX_SESSIONS="1")


async def collect(url, seconds: float, fmt: str, seed: int = 7, switch_after: int | None = None,
                  stop_after: int | None = None, **kw):
    """Frames of one stream. With `switch_after`, switches the prompt after that many frames
    and stops the stream 8 frames after the switch shows up (however deep the server's
    buffers are); with `stop_after`, stops after that many. Reads on until session.done."""
    async with FramecastClient(url, **kw) as client:
        async with client.stream("a red ball rolling", seed=seed, format=fmt, max_seconds=seconds) as stream:
            frames, switch, stopping = [], None, False
            async for frame in stream.frames():
                frames.append(frame)
                if switch_after is not None and len(frames) == switch_after:
                    switch = await stream.switch_prompt("a blue square sliding left")
                switched = switch and sum(f.prompt_event_id == switch.event_id for f in frames) >= 8
                if not stopping and (switched or len(frames) == stop_after):
                    stopping = True
                    await stream.stop()  # what was sent before session.done is still read
            return stream, frames, switch


def test_stream_frames_then_switch_prompt_fmp4(server):
    stream, frames, switch = asyncio.run(collect(server.url, 30.0, "fmp4", switch_after=8))
    started = stream.started
    assert started.format == "fmp4" and started.codec.startswith("avc1.")
    assert stream.done is not None and stream.done.reason == "stopped"
    assert len(frames) == stream.done.frames
    assert {f.image.shape for f in frames} == {(started.height, started.width, 3)}
    assert all(f.image.dtype == np.uint8 for f in frames)
    np.testing.assert_allclose([f.pts for f in frames], np.arange(len(frames)) / started.fps, atol=1e-3)
    assert max(float(f.image.std()) for f in frames) > 5  # generated pictures, not a flat fill
    assert stream.first_media_at - stream.start_sent_at > 0
    # The switch was queued, took effect at a later chunk, and every frame from there on says so.
    assert switch.queued.event_id == switch.event_id
    applied = stream.prompt_events[switch.event_id]
    under_new = [f.prompt_event_id == switch.event_id for f in frames]
    first_new = under_new.index(True)
    assert first_new == applied == switch.queued.at_frame  # the frame the server said, counted in frames
    assert not any(under_new[:first_new]) and all(under_new[first_new:])
    assert first_new >= 8  # nothing generated before the update was sent can carry it
    # Same seed without the switch: identical video up to the switch, different after it.
    _, unswitched, _ = asyncio.run(collect(server.url, 30.0, "fmp4", stop_after=len(frames)))
    assert len(unswitched) >= len(frames)
    before = [np.array_equal(a.image, b.image) for a, b in zip(frames[:first_new], unswitched)]
    after = [np.array_equal(a.image, b.image) for a, b in zip(frames[first_new:], unswitched[first_new:])]
    assert all(before) and not any(after)


def test_stream_ends_by_its_own_limit(server):
    stream, frames, _ = asyncio.run(collect(server.url, 1.5, "fmp4"))
    assert stream.done.reason == "max_seconds"
    assert len(frames) == stream.done.frames == round(1.5 * stream.started.fps)


def test_jpeg_stream_shows_the_same_video_as_fmp4(server):
    """Same seed, two wire formats: both decode to (nearly) the same pictures."""
    _, mp4_frames, _ = asyncio.run(collect(server.url, 1.0, "fmp4", seed=11))
    jpeg_stream, jpeg_frames, _ = asyncio.run(collect(server.url, 1.0, "jpeg", seed=11))
    assert jpeg_stream.started.codec is None
    assert len(jpeg_frames) == len(mp4_frames) == round(jpeg_stream.started.fps)
    a = np.stack([f.image for f in mp4_frames]).astype(np.int16)
    b = np.stack([f.image for f in jpeg_frames]).astype(np.int16)
    same = np.abs(a - b).mean(axis=(1, 2, 3))  # both lossy: H.264 and JPEG errors add up
    assert same.max() < 12, same
    # ...and not because every picture looks alike: another seed is far further away.
    _, other, _ = asyncio.run(collect(server.url, 1.0, "jpeg", seed=12))
    assert np.abs(np.stack([f.image for f in other]).astype(np.int16) - b).mean() > 4 * same.mean()


def test_pause_stops_media_and_resume_restarts_it(server):
    async def scenario():
        async with FramecastClient(server.url) as client:
            async with client.stream("a red ball", format="jpeg", max_seconds=30) as stream:
                assert await stream.receive() is not None
                rtt = await stream.ping()
                await stream.pause()
                await _drain(stream, 3.0)  # what was queued or in flight before the pause still arrives
                assert await _drain(stream, 1.5) == 0, "media kept coming while paused"
                await stream.resume()
                after = await _drain(stream, 3.0)
                done = await stream.stop()
                return rtt, after, done

    rtt, after, done = asyncio.run(scenario())
    assert 0 < rtt < 5
    assert after > 0
    assert done is not None and done.reason == "stopped"


async def _drain(stream, seconds: float) -> int:
    """Media messages received within `seconds`."""
    count, deadline = 0, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            assert await asyncio.wait_for(stream.receive(), left) is not None
            count += 1
        except asyncio.TimeoutError:
            break
    return count


def test_video_job_with_progress_and_download(server, tmp_path):
    seen = []

    async def scenario():
        async with FramecastClient(server.url) as client:
            job = await client.generate_video("a red ball", tmp_path / "clip.mp4", seconds=1.0, seed=3,
                                              progress=lambda j: seen.append((j.status, j.progress)),
                                              poll_interval=0.1, timeout=120)
            listed = await client.list_videos()
            deleted = await client.delete_video(job.id)
            return job, listed, deleted

    job, listed, deleted = asyncio.run(scenario())
    assert job.status == "completed" and seen[-1] == ("completed", 100)
    progress = [p for _, p in seen]
    assert progress == sorted(progress)
    assert job.id in {j.id for j in listed.data} and deleted.deleted
    stream = ffprobe(tmp_path / "clip.mp4")["streams"][0]
    assert stream["codec_name"] == "h264"
    assert int(stream["nb_read_frames"]) == round(float(job.seconds) * job.fps)


def test_sync_wrapper_streams_and_lists_models(server):
    with FramecastClientSync(server.url) as client:
        models = client.list_models()
        with client.stream("a red ball", format="fmp4", max_seconds=1.0) as stream:
            frames = list(stream.frames())
            assert stream.done.reason == "max_seconds"
    assert "tiny-random" in {m.id for m in models.data}
    assert len(frames) == round(stream.started.fps)


def test_server_down_is_server_unavailable():
    url = f"http://127.0.0.1:{closed_port()}"

    async def scenario():
        async with FramecastClient(url, connect_timeout=5) as client:
            with pytest.raises(ServerUnavailable, match="refused"):
                await client.open_stream("a red ball")
            with pytest.raises(ServerUnavailable, match="refused"):
                await client.create_video("a red ball")

    asyncio.run(scenario())


def test_api_key_required_then_accepted(guarded_server):
    async def scenario():
        for key in (None, "wrong-key"):
            async with FramecastClient(guarded_server.url, api_key=key or "") as client:
                with pytest.raises(Unauthorized):
                    await client.open_stream("a red ball")
                with pytest.raises(Unauthorized):
                    await client.create_video("a red ball", seconds=1)
        async with FramecastClient(guarded_server.url, api_key=KEY) as client:
            stream = await _open_when_free(client, format="jpeg", max_seconds=0.5)
            frames = [f async for f in stream.frames()]
            await stream.close()
            return frames

    assert len(asyncio.run(scenario())) > 0


def test_second_stream_on_a_full_server_is_refused(guarded_server):
    async def scenario():
        async with FramecastClient(guarded_server.url, api_key=KEY) as client:
            first = await _open_when_free(client, format="jpeg", max_seconds=30)
            try:
                with pytest.raises(ServerFull) as refused:
                    await client.open_stream("another", format="jpeg")
            finally:
                await first.stop()
            return refused.value

    refused = asyncio.run(scenario())
    assert refused.code == "server_full"


async def _open_when_free(client, **options):
    """The slot of a stream closed by an earlier test frees once the engine lets go of it."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return await client.open_stream("a red ball", **options)
        except ServerFull:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_connection_dropped_mid_stream_raises_connection_lost(server):
    with DroppingProxy(server.port) as proxy:
        async def scenario():
            async with FramecastClient(proxy.url) as client:
                async with client.stream("a red ball", format="fmp4", max_seconds=30) as stream:
                    received = 0
                    with pytest.raises(ConnectionLost) as lost:
                        async for _ in stream.frames():
                            received += 1
                            if received == 4:
                                proxy.drop_all()
                    return received, lost.value

        received, lost = asyncio.run(scenario())
    assert 4 <= received < 30 * 16
    assert "dropped" in lost.message or "closed" in lost.message

