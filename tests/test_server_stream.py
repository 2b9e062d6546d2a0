"""Live streams end to end: a real uvicorn on loopback, a real WebSocket client, the real
tiny-random model, ffprobe on the received fMP4 stream."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import websockets
from PIL import Image

from clients.protocol import VideoChunk, parse_server_message
from tests.server_fixtures import (Received, ffprobe, live_server, one_session, receive_all, run, server,  # noqa: F401
                                   stalled_client, tiny_model)

START = {"type": "session.start", "prompt": "a red ball bouncing", "seed": 3}


def test_fmp4_stream_probes_as_h264_with_every_frame(server, tmp_path):
    got = run(one_session(server.ws_url, {**START, "format": "fmp4", "max_seconds": 2.0}))
    for message in got.messages:
        parse_server_message(json.dumps(message))  # every message is a valid protocol message
    started = got.of_type("session.started")[0]
    assert (started["width"], started["height"]) == (64, 64) and started["codec"].startswith("avc1.")
    assert started["read_as"] is None  # tiny-random reads prompts as written
    init_meta, init = got.media[0]
    assert init_meta["init"] and init_meta["index"] == 0 and init_meta["frames"] == 0
    assert init[4:8] == b"ftyp"
    fragments = got.media[1:]
    assert [m["index"] for m, _ in fragments] == list(range(1, len(fragments) + 1))
    assert all(data[4:8] == b"moof" for _, data in fragments)  # one moof+mdat per piece sent
    assert [m["frames"] for m, _ in fragments] == [4] * 8  # 2 s at 16 fps, in pieces of 4 frames
    assert [m["pts"] for m, _ in fragments] == [i * 4 / 16 for i in range(len(fragments))]
    done = got.of_type("session.done")[0]
    assert done["reason"] == "max_seconds" and done["frames"] == 32 and done["seconds"] == 2.0
    assert got.close_code == 1000

    path = tmp_path / "stream.mp4"
    path.write_bytes(b"".join(data for _, data in got.media))
    facts = ffprobe(path)
    assert facts["codec_name"] == "h264" and int(facts["nb_read_frames"]) == 32
    assert (facts["width"], facts["height"]) == (64, 64) and facts["avg_frame_rate"] == "16/1"


def test_jpeg_stream_sends_one_decodable_frame_per_message(server):
    got = run(one_session(server.ws_url, {**START, "format": "jpeg", "max_seconds": 1.0}))
    assert len(got.media) == 16
    assert [m["index"] for m, _ in got.media] == list(range(16))
    for meta, data in got.media:
        assert meta["frames"] == 1
        assert Image.open(io.BytesIO(data)).size == (64, 64)
    assert got.of_type("session.done")[0]["frames"] == 16


def test_lower_fps_drops_frames_evenly_and_times_them(server, tmp_path):
    got = run(one_session(server.ws_url, {**START, "fps": 8, "max_seconds": 2.0}))
    assert got.of_type("session.started")[0]["fps"] == 8
    assert sum(m["frames"] for m, _ in got.media) == 16
    path = tmp_path / "eight.mp4"
    path.write_bytes(b"".join(data for _, data in got.media))
    facts = ffprobe(path)
    assert int(facts["nb_read_frames"]) == 16 and facts["avg_frame_rate"] == "8/1"


def test_same_seed_streams_the_same_video(server):
    first = run(one_session(server.ws_url, {**START, "format": "jpeg", "max_seconds": 1.0}))
    second = run(one_session(server.ws_url, {**START, "format": "jpeg", "max_seconds": 1.0}))
    other = run(one_session(server.ws_url, {**START, "seed": 4, "format": "jpeg", "max_seconds": 1.0}))
    assert [d for _, d in first.media] == [d for _, d in second.media]
    assert [d for _, d in first.media] != [d for _, d in other.media]


async def _drain(ws, got: Received, quiet_s: float) -> None:
    """Read until nothing arrives for `quiet_s` seconds."""
    try:
        await receive_all(ws, got, timeout=quiet_s, until=lambda r: False)
    except TimeoutError:
        pass


async def _update_pause_resume_ping(url: str) -> Received:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "format": "fmp4", "max_seconds": 4.0}))
        got = await receive_all(ws, until=lambda r: len(r.media) >= 3)  # init + 2 fragments
        await ws.send(json.dumps({"type": "session.update", "prompt": "a blue square", "event_id": "evt-blue"}))
        await ws.send(json.dumps({"type": "session.ping", "ts": 12.5}))
        await ws.send(json.dumps({"type": "session.pause"}))
        await receive_all(ws, got, until=lambda r: r.of_type("session.paused"))
        await _drain(ws, got, 1.5)  # paused: nothing may come now
        await ws.send(json.dumps({"type": "session.resume"}))
        return await receive_all(ws, got)


def test_update_pause_resume_and_ping(server):
    got = run(_update_pause_resume_ping(server.ws_url))
    assert got.of_type("session.pong")[0]["ts"] == 12.5
    queued = got.of_type("session.update.queued")[0]
    assert queued["event_id"] == "evt-blue"
    carrying = [m for m, _ in got.media if m["prompt_event_id"] == "evt-blue"]
    assert len(carrying) == 1, "exactly one chunk names the event it took effect in"
    assert carrying[0]["frame"] == queued["at_frame"]
    kinds = [m["type"] for m in got.messages]
    paused, resumed = kinds.index("session.paused"), kinds.index("session.resumed")
    assert "video.chunk" not in kinds[paused:resumed], "media was sent while paused"
    assert sum(m["frames"] for m, _ in got.media) == 64  # pausing loses no frames
    assert got.of_type("session.done")[0]["reason"] == "max_seconds"


async def _stop_early(url: str) -> Received:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "format": "jpeg"}))
        got = await receive_all(ws, until=lambda r: len(r.media) >= 5)
        await ws.send(json.dumps({"type": "session.stop"}))
        return await receive_all(ws, got)


def test_stop_ends_with_done_and_normal_close(server):
    got = run(_stop_early(server.ws_url))
    done = got.of_type("session.done")[0]
    assert done["reason"] == "stopped"
    assert done["frames"] == len(got.media)  # counts what was delivered
    assert got.close_code == 1000


def test_stats_arrive_during_a_stream(tiny_model, tmp_path):
    with live_server(tmp_path, tiny_model, stream_lead_s=0.0, stats_interval_s=0.3) as paced:
        started = time.monotonic()
        got = run(one_session(paced.ws_url, {**START, "max_seconds": 3.0}))
        elapsed = time.monotonic() - started
    stats = got.of_type("session.stats")
    assert stats, "no session.stats in a 3 s stream with a 0.3 s stats interval"
    assert all(s["fps"] > 0 and s["latency_ms"] > 0 for s in stats)
    # Paced to real time: 3 s of video takes at least 2 s to deliver. The last chunk shows at
    # 2.5 s and goes out the lead before: stream_lead_s, or up to a chunk (0.5 s) where the
    # machine takes that long to make a chunk (LiveStream._lead).
    assert elapsed >= 2.0


async def _pause_midway(url: str) -> tuple[list[float], float]:
    """Arrival times of each fragment, and when the stream was resumed after a 1.5 s pause."""
    arrivals: list[float] = []
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "max_seconds": 3.0}))
        got = await receive_all(ws, until=lambda r: len(r.media) >= 3)  # init + 2 pieces
        arrivals += [time.monotonic()] * (len(got.media) - 1)
        await ws.send(json.dumps({"type": "session.pause"}))
        await receive_all(ws, got, until=lambda r: r.of_type("session.paused"))
        await asyncio.sleep(1.5)
        await ws.send(json.dumps({"type": "session.resume"}))
        resumed = time.monotonic()
        seen = len(got.media)
        while True:
            got = await receive_all(ws, got, until=lambda r: len(r.media) > seen or r.of_type("session.done"))
            if len(got.media) == seen:
                return arrivals, resumed
            arrivals += [time.monotonic()] * (len(got.media) - seen)
            seen = len(got.media)


def test_pacing_follows_the_stream_clock_with_pauses_left_out(tiny_model, tmp_path):
    """After a pause the stream picks up where it stopped: chunks keep coming at real-time
    pace (a clock counting the pause would find them all overdue and send a burst), and
    the first comes without a second wait (a clock counting it twice)."""
    with live_server(tmp_path, tiny_model, stream_lead_s=0.1) as paced:
        arrivals, resumed = run(_pause_midway(paced.ws_url))
    after = [t for t in arrivals if t >= resumed]
    chunk_s = tiny_model.frames_per_chunk / tiny_model.fps  # 0.5 s
    piece_s = 4 / tiny_model.fps  # a chunk leaves in pieces of 4 frames (stream_piece_frames)
    assert len(after) >= 3, arrivals
    assert after[0] - resumed < chunk_s + 0.3, "the stream waited longer than its clock says"
    spans = [b - a for a, b in zip(after, after[1:])]
    assert min(spans) > 0.6 * piece_s, f"a burst after the pause: {spans}"


async def _disconnect_midway(url: str) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "format": "jpeg"}))
        await receive_all(ws, until=lambda r: len(r.media) >= 3)
    # leaving the block closes the connection while the stream is running


def test_disconnect_frees_the_session(server):
    run(_disconnect_midway(server.ws_url))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.state.admission.in_use:
        time.sleep(0.05)
    assert server.state.admission.in_use == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert "framecast_active_sessions 0.0" in metrics
    assert "framecast_stream_queue_chunks 0.0" in metrics


def metric(text: str, name: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_client_that_stops_reading_stops_its_generation(server):
    """Pacing by consumption: once the socket buffers of a stalled reader are full, its
    bounded queue fills and its stream generates nothing more (memory never grows)."""
    def sample() -> tuple[float, float]:
        text = httpx.get(server.url + "/metrics").text
        return (metric(text, 'framecast_frames_generated_total{kind="stream"}'),
                metric(text, "framecast_stream_queue_chunks"))

    sock = stalled_client(server.settings.port, {**START, "format": "jpeg"})
    try:
        previous, deadline = (-1.0, 0.0), time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1.0)
            current = sample()
            if current == previous:
                break
            previous = current
        stalled, queued = previous
        time.sleep(1.0)
        assert sample() == (stalled, queued), "generation went on for a client that reads nothing"
        assert queued == server.settings.queue_depth
        # ... and it slows only itself: another stream runs to its end meanwhile.
        other = run(one_session(server.ws_url, {**START, "max_seconds": 2.0}, timeout=30))
        assert other.of_type("session.done")[0]["frames"] == 32
    finally:
        sock.close()


def test_chunk_metadata_is_a_protocol_message(server):
    got = run(one_session(server.ws_url, {**START, "max_seconds": 0.5}))
    assert len(got.media) == 3  # the init segment and two fragments: 0.5 s is one chunk, two pieces
    for meta, data in got.media:
        assert VideoChunk.model_validate(meta).bytes == len(data)


def test_metrics_record_streams(server):
    run(one_session(server.ws_url, {**START, "max_seconds": 1.0}))
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "framecast_time_to_first_frame_seconds_count") >= 1
    assert metric(text, "framecast_frame_interval_seconds_count") >= 8  # every frame after the first chunk
    assert metric(text, 'framecast_frames_generated_total{kind="stream"}') >= 16
    assert metric(text, "framecast_ready") == 1


async def _switch_near_the_end(url: str) -> Received:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "format": "jpeg", "max_seconds": 1.5}))
        got = await receive_all(ws, until=lambda r: len(r.media) >= 9)  # chunk 1 is being sent
        await ws.send(json.dumps({"type": "session.update", "prompt": "a blue square", "event_id": "evt-end"}))
        return await receive_all(ws, got, timeout=20)


def test_a_switch_after_the_last_chunk_was_made_still_ends_the_stream(tiny_model, tmp_path):
    """Paced, the producer runs up to three chunks ahead of the one sent: here it has made
    the stream's last chunk when the switch discards it, and must make the end again."""
    with live_server(tmp_path, tiny_model, stream_lead_s=0.35) as paced:
        got = run(_switch_near_the_end(paced.ws_url))
    queued = got.of_type("session.update.queued")[0]
    assert [m["frame"] for m, _ in got.media] == list(range(24))
    assert 8 < queued["at_frame"] <= 16  # after the last piece sent, within chunk 1 or at its end
    assert [m for m, _ in got.media if m["prompt_event_id"] == "evt-end"][0]["frame"] == queued["at_frame"]
    assert got.of_type("session.done")[0]["frames"] == 24


async def _pause_switch_resume(url: str) -> Received:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "format": "jpeg", "max_seconds": 2.0}))
        got = await receive_all(ws, until=lambda r: len(r.media) >= 9)  # a piece of chunk 1 is out
        await ws.send(json.dumps({"type": "session.pause"}))
        got = await receive_all(ws, got, until=lambda r: r.of_type("session.paused"))
        sent = len(got.media)
        await ws.send(json.dumps({"type": "session.update", "prompt": "a blue square", "event_id": "evt-mid"}))
        got = await receive_all(ws, got, until=lambda r: r.of_type("session.update.queued"))
        got.sent_before_switch = sent
        await ws.send(json.dumps({"type": "session.resume"}))
        return await receive_all(ws, got, timeout=20)


def test_a_switch_within_a_chunk_shows_from_the_next_frame_not_sent(tiny_model, tmp_path):
    """Chunks (8 frames here) leave in pieces (4): a switch rewinds into the chunk partly
    sent, makes it again under the new prompt, and sends only its frames the viewer does not
    have, so the new prompt shows from the next frame, not from the next chunk."""
    with live_server(tmp_path, tiny_model, stream_lead_s=0.35, stream_piece_frames=4) as paced:
        got = run(_pause_switch_resume(paced.ws_url))
    queued = got.of_type("session.update.queued")[0]
    assert got.sent_before_switch == 12, "pieces of 4 frames: 0-3, 4-7, 8-11 were out when paused"
    assert queued["at_frame"] == 12
    assert [m["frame"] for m, _ in got.media] == list(range(32)), "no frame lost or sent twice"
    carrying = [m for m, _ in got.media if m["prompt_event_id"] == "evt-mid"]
    assert [m["frame"] for m in carrying] == [12], "the remade chunk 1 carries the event, from frame 12"
    assert got.of_type("session.done")[0]["frames"] == 32


def test_whole_chunks_switch_at_the_next_chunk_boundary(tiny_model, tmp_path):
    """stream_piece_frames None sends whole chunks: the same switch waits for chunk 1 to end."""
    with live_server(tmp_path, tiny_model, stream_lead_s=0.35, stream_piece_frames=None) as paced:
        got = run(_pause_switch_resume(paced.ws_url))
    assert got.sent_before_switch == 16
    assert got.of_type("session.update.queued")[0]["at_frame"] == 16
    assert [m["frame"] for m, _ in got.media] == list(range(32))


async def _start_then_switch(url: str, first: str, second: str) -> Received:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "prompt": first, "format": "jpeg", "max_seconds": 2.0}))
        got = await receive_all(ws, until=lambda r: len(r.media) >= 2)
        await ws.send(json.dumps({"type": "session.update", "prompt": second, "event_id": "evt-2"}))
        got = await receive_all(ws, got, until=lambda r: r.of_type("session.update.queued"))
        await ws.send(json.dumps({"type": "session.stop"}))
        return await receive_all(ws, got)


def test_a_rewriting_model_says_what_it_reads(tiny_model, tmp_path, monkeypatch):
    """A model whose config rewrites prompts (the Shapes default's `prompt_rewrite`) reads its
    canonical caption: session.started, session.update.queued and the clip job say which
    (`read_as`); a prompt it reads as written gets null, as every prompt does on a model
    that does not rewrite (the other tests' server)."""
    from collections import OrderedDict

    from engine.model import read_prompt

    monkeypatch.setattr(tiny_model, "config", tiny_model.config.model_copy(update={"prompt_rewrite": "shapes"}))
    monkeypatch.setattr(tiny_model, "_contexts", OrderedDict())  # contexts of the rewritten captions stay here
    first, second, foreign = "a crimson ball drifting slowly to the left", "a yellow triangle sliding down", "a corgi"
    expected = read_prompt(tiny_model.config, first)
    assert expected != first and "red circle" in expected
    with live_server(tmp_path, tiny_model) as rewriting:
        got = run(_start_then_switch(rewriting.ws_url, first, second))
        with rewriting.client() as http:
            job = http.post("/v1/videos", json={"prompt": second, "seconds": 1, "seed": 5}).json()
            kept = http.get(f"/v1/videos/{job['id']}").json()
            plain = http.post("/v1/videos", json={"prompt": foreign, "seconds": 1, "seed": 5}).json()
    assert got.of_type("session.started")[0]["read_as"] == expected
    queued = got.of_type("session.update.queued")[0]
    assert queued["read_as"] == read_prompt(tiny_model.config, second) and "yellow triangle moves down" in queued["read_as"]
    assert job["prompt"] == second and job["read_as"] == queued["read_as"] and kept["read_as"] == job["read_as"]
    assert plain["read_as"] is None
