"""The web viewer in a real headless Chromium against a real server on loopback.

Debian's chromium driven by Playwright (the system browser: `playwright install` is never
needed). For each wire format the page starts a stream from its own controls, the picture
advances, a screenshot shows a generated frame, a prompt switch shows up, a recording
downloads; the page's own clocks give the glass-to-glass latency figures, printed and
written to runs/browser_latency.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

from tests.client_fixtures import RUNS, ffprobe, shared_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

CHROMIUM = os.environ.get("FRAMECAST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "test-key-7f3a"
FIGURES: dict[str, dict] = {}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")


@pytest.fixture
def browser_page(tmp_path):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            accept_downloads=True, viewport={"width": 1000, "height": 800})
        page = context.pages[0] if context.pages else context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield page, errors
        finally:
            context.close()


def stats(page) -> dict:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.framecastStats))")


def stage_pixels(page, path) -> np.ndarray:
    """Screenshot of the video area only (the overlay is hidden for it) as [H, W, 3]."""
    from PIL import Image

    page.evaluate("() => document.getElementById('overlay').style.visibility = 'hidden'")
    page.locator("#stage").screenshot(path=str(path))
    page.evaluate("() => document.getElementById('overlay').style.visibility = ''")
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float32)


@pytest.mark.parametrize("requested", ["fmp4", "jpeg"])
def test_viewer_streams_switches_prompt_and_records(browser_page, requested):
    page, errors = browser_page
    server = shared_server()
    RUNS.mkdir(exist_ok=True)
    page.goto(server.url + "/")
    h264 = page.evaluate("() => MediaSource.isTypeSupported('video/mp4; codecs=\"avc1.42E01E\"')")

    page.fill("#prompt", "a red ball rolling across the floor")
    page.click("summary")  # open the options
    page.fill("#seed", "3")
    page.select_option("#format", requested)
    page.click("#start")
    page.wait_for_function("() => window.framecastStats.framesPainted >= 16", timeout=60_000)
    s = stats(page)
    if requested == "fmp4" and not h264:
        # This Chromium lacks H.264: the page must have fallen back to JPEG and still play.
        assert s["format"] == "jpeg" and s["fallbackReason"], s
        print(f"\nfmp4 requested but H.264 is unsupported in this Chromium; JPEG fallback used: "
              f"{s['fallbackReason']}")
    else:
        assert s["format"] == requested, s
    assert s["state"] == "live" and s["errors"] == [], s
    format_used = s["format"]
    if format_used == "fmp4":
        assert s["codec"].startswith("avc1.") and s["codec"] == s["serverCodec"], s
        t0 = page.evaluate("() => document.getElementById('video').currentTime")
        time.sleep(1.0)
        t1 = page.evaluate("() => document.getElementById('video').currentTime")
        assert t1 > t0 + 0.3, f"video did not advance: {t0} -> {t1}"
    painted = s["framesPainted"]
    time.sleep(0.5)
    assert stats(page)["framesPainted"] > painted  # still painting

    # The screenshot shows a generated frame: structure, not one flat colour.
    pixels = stage_pixels(page, RUNS / f"viewer-{format_used}.png")
    bright = pixels[pixels.max(axis=2) > 8]  # the letterbox around the picture is black
    assert bright.shape[0] > 0.2 * pixels.shape[0] * pixels.shape[1], "the picture area is blank"
    assert bright.std() > 20, bright.std()
    if requested == "fmp4":
        page.screenshot(path=str(RUNS / "viewer.png"))

    # Record about a second, then download the file the page offers.
    page.click("#record")
    time.sleep(1.5)
    with page.expect_download(timeout=30_000) as download_info:
        page.click("#record")
    recording = RUNS / f"viewer-recording.{'mp4' if format_used == 'fmp4' else 'webm'}"
    download_info.value.save_as(str(recording))
    facts = ffprobe(recording)
    assert int(facts["streams"][0]["nb_read_frames"]) > 0

    # Switch the prompt while the video plays; wait for a painted frame generated under it.
    page.fill("#prompt", "a blue square sliding left")
    page.click("#switch")
    page.wait_for_function("() => window.framecastStats.lastPromptSwitchFirstFrameAt !== null", timeout=60_000)
    s = stats(page)
    switch = s["promptSwitches"][0]
    assert switch["queuedAt"] is not None and switch["atFrame"] is not None, switch
    assert switch["firstChunkIndex"] is not None and switch["firstFrameAt"] > switch["sentAt"], switch

    page.click("#stop")
    page.wait_for_function("() => ['done', 'closed'].includes(window.framecastStats.state)", timeout=30_000)
    assert errors == [], errors
    s = stats(page)
    figures = {
        "requested_format": requested, "format": format_used, "h264_supported": h264, "codec": s["codec"],
        "first_frame_ms": round(s["firstFrameLatencyMs"], 1),
        "prompt_switch_to_first_frame_ms": round(switch["latencyMs"], 1),
        "prompt_switch_queued_ms": round(switch["queuedAt"] - switch["sentAt"], 1),
        # of the switch latency: until its first chunk arrived (server) / until painted (browser)
        "prompt_switch_to_first_chunk_ms": round(switch["firstChunkAt"] - switch["sentAt"], 1),
        "prompt_switch_chunk_to_paint_ms": round(switch["firstFrameAt"] - switch["firstChunkAt"], 1),
        "first_chunk_to_first_paint_ms": round(s["firstFrameAt"] - s["firstChunkAt"], 1),
        "server_latency_ms": s["serverLatencyMs"], "frames_painted": s["framesPainted"],
        "frames_received": s["framesReceived"], "live_edge_jumps": s["liveEdgeJumps"],
        "frames_dropped": s["framesDropped"], "recording_frames": int(facts["streams"][0]["nb_read_frames"]),
    }
    FIGURES[requested] = figures
    print(f"\nbrowser {requested}: first frame {figures['first_frame_ms']} ms after session.start, "
          f"prompt switch -> first frame under it {figures['prompt_switch_to_first_frame_ms']} ms "
          f"(queued after {figures['prompt_switch_queued_ms']} ms, its first chunk arrived after "
          f"{figures['prompt_switch_to_first_chunk_ms']} ms); {json.dumps(figures)}")
    out = RUNS / "browser_latency.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **FIGURES}, indent=2) + "\n")


def test_viewer_sends_the_api_key_from_the_query(browser_page):
    page, errors = browser_page
    server = shared_server(FRAMECAST_API_KEYS=KEY, FRAMECAST_MAX_SESSIONS="1")
    page.goto(f"{server.url}/?prompt=a+red+ball&format=jpeg")
    page.click("#start")
    page.wait_for_function("() => ['error', 'closed'].includes(window.framecastStats.state)", timeout=30_000)
    assert "API key" in page.inner_text("#message")
    assert stats(page)["errors"][0]["code"] == "unauthorized"

    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{server.url}/?prompt=a+red+ball&format=jpeg&api_key={KEY}&autostart=1&max_seconds=1")
    page.wait_for_function("() => window.framecastStats.state === 'done' && window.framecastStats.framesPainted > 0",
                           timeout=60_000)
    assert errors == []
    # The key went as a WebSocket subprotocol: not in the socket's URL, and no longer in the
    # page's; the server logged no key.
    assert sockets and all("api_key" not in url for url in sockets)
    assert "api_key" not in page.url
    assert KEY not in server.log()


def test_viewer_falls_back_to_jpeg_where_h264_cannot_play(browser_page):
    """A browser without H.264 in MSE (simulated: isTypeSupported says no to avc1): fMP4 is
    asked for, the init segment's codec is refused, and the page restarts in JPEG and plays."""
    page, errors = browser_page
    server = shared_server()
    page.add_init_script("""{
        const supported = MediaSource.isTypeSupported.bind(MediaSource);
        MediaSource.isTypeSupported = (type) => !/avc1|avc3/.test(type) && supported(type);
    }""")
    page.goto(f"{server.url}/?prompt=a+red+ball&format=fmp4&autostart=1&max_seconds=2")
    page.wait_for_function("() => window.framecastStats.framesPainted >= 8", timeout=60_000)
    s = stats(page)
    assert s["format"] == "jpeg" and "cannot play video/mp4" in s["fallbackReason"], s
    assert not s["mseSupported"]
    assert "Using JPEG" in page.inner_text("#message")
    assert errors == []
    # With format "auto" such a browser goes straight to JPEG.
    page.goto(f"{server.url}/?prompt=a+red+ball&autostart=1&max_seconds=1")
    page.wait_for_function("() => window.framecastStats.framesPainted > 0", timeout=60_000)
    assert stats(page)["format"] == "jpeg" and stats(page)["fallbackReason"] is None
