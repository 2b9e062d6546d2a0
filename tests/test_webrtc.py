"""WebRTC end to end: a real uvicorn on loopback, the real tiny-random model, and a real
aiortc peer (the Python client's WebRTC option, or a bare RTCPeerConnection for what the
client would never send). Signalling errors, the data channel's control messages, frames
tied to stream frames and prompt events, and every way a session ends freeing its slot."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from pathlib import Path

import httpx
import numpy as np
import pytest

from clients.framecast_client import FramecastClient, ServerFull, Unauthorized
from tests.server_fixtures import live_server, run, tiny_model  # noqa: F401

aiortc = pytest.importorskip("aiortc", reason="aiortc is not installed (pip install -e '.[webrtc]')")

KEY, OTHER_KEY = "rtc-key-51", "rtc-key-52"
REPO = Path(__file__).resolve().parents[1]
START = {"type": "session.start", "prompt": "a red ball bouncing", "seed": 3}
# WebRTC plays in real time whatever the pacing; a lead keeps the server's side as deployed.
PACED = dict(stream_lead_s=0.35, webrtc_peer_timeout_s=3.0)  # receivers report every 0.5-1.5 s


@pytest.fixture(scope="module")
def rtc_server(tiny_model, tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("rtc"), tiny_model, **PACED) as running:
        yield running


def wait_until_free(server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (server.state.admission.in_use or server.state.webrtc_peers):
        time.sleep(0.05)
    assert server.state.admission.in_use == 0 and not server.state.webrtc_peers


async def offer_sdp() -> tuple[object, str]:
    """A bare aiortc peer's offer: a recvonly video section and a data channel."""
    pc = aiortc.RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("framecast")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def collect(url: str, seconds: float, switch_at: int | None = None, seed: int = 3, **kw):
    async with FramecastClient(url, **kw) as client:
        async with client.stream("a red ball bouncing", seed=seed, format="webrtc", max_seconds=seconds) as stream:
            frames, switch = [], None
            async for frame in stream.frames():
                frames.append(frame)
                if switch_at is not None and frame.index == switch_at:
                    switch = await stream.switch_prompt("a blue square sliding left")
            return stream, frames, switch


def test_python_client_receives_frames_and_a_switch(rtc_server):
    stream, frames, switch = run(collect(rtc_server.url, 2.0, switch_at=6))
    started = stream.started
    assert started.format == "webrtc" and started.codec in ("video/H264", "video/VP8")
    assert stream.done.reason == "max_seconds" and stream.done.frames == 32
    # aiortc's receiver hands a frame over when the next one arrives: the very last never does.
    assert len(frames) >= 31 and stream.frames_dropped == 0
    assert [f.index for f in frames] == list(range(len(frames)))  # tied to stream frames, in order
    assert {f.image.shape for f in frames} == {(64, 64, 3)}
    assert max(float(f.image.std()) for f in frames) > 5  # generated pictures, not a flat fill
    # The switch: the frame the server named is the first under the new prompt, and all after it.
    at = switch.queued.at_frame
    assert at > 6 and stream.prompt_events[switch.event_id] == at
    assert [f.prompt_event_id == switch.event_id for f in frames] == [f.index >= at for f in frames]
    wait_until_free(rtc_server)


def test_webrtc_shows_the_same_video_as_jpeg(rtc_server):
    """Same seed over the WebSocket (JPEG) and over WebRTC (H.264): the same pictures, frame
    for frame, so the frames are tied to the right stream frames."""
    from tests.test_client import collect as collect_ws

    _, rtc, _ = run(collect(rtc_server.url, 1.0, seed=11))
    _, jpeg, _ = run(collect_ws(rtc_server.url, 1.0, "jpeg", seed=11))
    a = np.stack([f.image for f in rtc]).astype(np.int16)
    b = np.stack([f.image for f in jpeg[: len(rtc)]]).astype(np.int16)
    same = np.abs(a - b).mean(axis=(1, 2, 3))
    shifted = np.abs(a[1:] - b[:-1]).mean(axis=(1, 2, 3))  # one frame off
    assert same.max() < 12 and same.mean() < 0.5 * shifted.mean(), (same, shifted)


def test_pause_resume_ping_and_stop_over_the_data_channel(rtc_server):
    async def scenario():
        async with FramecastClient(rtc_server.url) as client:
            async with client.stream("a red ball", format="webrtc", max_seconds=30) as stream:
                first = await stream.receive()
                rtt = await stream.ping()
                await stream.pause()
                await _drain(stream, 0.5)  # decoded before the pause took effect
                paused = await _drain(stream, 1.2)
                await stream.resume()
                after = await _drain(stream, 1.0)
                done = await stream.stop()
                return first, rtt, paused, after, done

    first, rtt, paused, after, done = run(scenario())
    assert first.index == 0 and 0 < rtt < 5
    assert paused == [] and after, (paused, after)
    assert done.reason == "stopped" and done.frames >= after[-1].index
    wait_until_free(rtc_server)


async def _drain(stream, seconds: float) -> list:
    frames, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(await asyncio.wait_for(stream.receive(), left))
        except asyncio.TimeoutError:
            break
    return frames


def test_signalling_errors_are_clear(rtc_server):
    async def scenario():
        pc, sdp = await offer_sdp()
        await pc.close()
        return sdp

    sdp = run(scenario())
    url = rtc_server.url + "/v1/realtime/webrtc"
    bad = httpx.post(url, content="hello", headers={"Content-Type": "application/sdp"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_sdp"
    assert "v=0" in bad.json()["error"]["message"]
    no_channel = sdp.split("m=application")[0]
    refused = httpx.post(url, content=no_channel, headers={"Content-Type": "application/sdp"})
    assert refused.status_code == 400 and "data channel" in refused.json()["error"]["message"]
    garbled = sdp.replace("a=fingerprint", "a=fingerprunt")
    refused = httpx.post(url, content=garbled, headers={"Content-Type": "application/sdp"})
    assert refused.status_code == 400 and "fingerprint" in refused.json()["error"]["message"]
    send_only = sdp.replace("a=recvonly", "a=sendonly")
    refused = httpx.post(url, content=send_only, headers={"Content-Type": "application/sdp"})
    assert refused.status_code == 400 and "recvonly" in refused.json()["error"]["message"]
    wrong_type = httpx.post(url, content=sdp, headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    not_an_offer = httpx.post(url, json={"type": "answer", "sdp": sdp})
    assert not_an_offer.status_code == 400 and not_an_offer.json()["error"]["param"] == "type"
    assert httpx.delete(url + "/rtc_nosuchsession").status_code == 404
    wait_until_free(rtc_server)  # no refused offer kept a slot


def test_json_offer_delete_and_start_timeout(tiny_model, tmp_path):
    async def scenario(server):
        pc, sdp = await offer_sdp()
        async with httpx.AsyncClient(base_url=server.url) as http:
            answer = await http.post("/v1/realtime/webrtc", json={"type": "offer", "sdp": sdp})
            assert answer.status_code == 201 and answer.json()["type"] == "answer"
            assert answer.headers["location"] == answer.json()["location"]
            assert server.state.admission.in_use == 1  # the slot is taken at the offer
            deleted = await http.delete(answer.headers["location"])
            assert deleted.status_code == 200 and deleted.json()["deleted"]
        await pc.close()
        # An offer whose peer never sends session.start: its slot is freed after start_timeout_s.
        pc, sdp = await offer_sdp()
        async with httpx.AsyncClient(base_url=server.url) as http:
            answer = await http.post("/v1/realtime/webrtc", content=sdp, headers={"Content-Type": "application/sdp"})
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(answer.text, "answer"))
        await asyncio.sleep(server.settings.start_timeout_s + 1.0)
        await pc.close()

    with live_server(tmp_path, tiny_model, start_timeout_s=1.0, **PACED) as server:
        run(scenario(server))
        wait_until_free(server)
        metrics = httpx.get(server.url + "/metrics").text
        assert 'framecast_stream_errors_total{code="start_timeout"} 1.0' in metrics


def test_missing_key_and_full_server_refuse_before_negotiating(tiny_model, tmp_path):
    async def scenario(server):
        pc, sdp = await offer_sdp()
        await pc.close()
        url = server.url + "/v1/realtime/webrtc"
        async with httpx.AsyncClient() as http:
            missing = await http.post(url, content=sdp, headers={"Content-Type": "application/sdp"})
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
            wrong = await http.post(url, content="not even sdp", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401  # the key is checked before the body is read
        async with FramecastClient(server.url, api_key=KEY) as client:
            async with client.stream("a red ball", format="webrtc", max_seconds=30) as held:
                await held.receive()
                with pytest.raises(ServerFull):
                    await client.open_stream("a blue square", format="webrtc")
                # Another caller's key cannot end it: to them it does not exist.
                other = await client._http.delete(held.location, headers={"Authorization": f"Bearer {OTHER_KEY}"})
                assert other.status_code == 404
        with pytest.raises(Unauthorized):
            async with FramecastClient(server.url, api_key="wrong") as client:
                await client.open_stream("a red ball", format="webrtc")

    with live_server(tmp_path, tiny_model, api_keys=[KEY, OTHER_KEY], max_sessions=1, **PACED) as server:
        run(scenario(server))
        wait_until_free(server)


PEER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from clients.framecast_client import FramecastClient

    async def main():
        async with FramecastClient(sys.argv[1]) as client:
            stream = await client.open_stream("a red ball", format="webrtc", max_seconds=60)
            await stream.receive()
            print("receiving", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
""")


def test_a_peer_that_vanishes_frees_its_slot(rtc_server):
    """A client killed mid-stream says no goodbye: no DTLS close, no data channel close. Its
    RTCP reports stop, and the server ends the stream after webrtc_peer_timeout_s."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", PEER_SCRIPT, rtc_server.url], stdout=subprocess.PIPE, env=env,
                            cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == b"receiving"
        assert rtc_server.state.admission.in_use == 1
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until_free(rtc_server, timeout=15)
        freed_after = time.monotonic() - killed_at
    finally:
        proc.kill()
    print(f"\nvanished peer: slot freed {freed_after:.1f} s after the kill "
          f"(webrtc_peer_timeout_s {rtc_server.settings.webrtc_peer_timeout_s:g})")
    metrics = httpx.get(rtc_server.url + "/metrics").text
    assert "framecast_active_sessions 0.0" in metrics


def test_options_lists_the_ice_servers(tiny_model, tmp_path):
    servers = [{"urls": "stun:stun.example.org:3478"},
               {"urls": ["turn:turn.example.org:3478?transport=udp"], "username": "u 1", "credential": "p;2"}]
    with live_server(tmp_path, tiny_model, webrtc_ice_servers=servers) as server:
        response = httpx.options(server.url + "/v1/realtime/webrtc")
    assert response.status_code == 204 and "application/sdp" in response.headers["accept-post"]
    from clients.framecast_client.webrtc import _ice_servers

    parsed = _ice_servers(response)
    assert [(s.urls, s.username, s.credential) for s in parsed] == [
        ("stun:stun.example.org:3478", None, None), ("turn:turn.example.org:3478?transport=udp", "u 1", "p;2")]
    print(json.dumps(response.headers.get_list("link")))
