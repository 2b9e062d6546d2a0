"""Glass to glass in Chromium, per transport, side by side: WebRTC, fMP4 and JPEG.

    python bench/glass_to_glass.py                        # the embedded default model
    python bench/glass_to_glass.py --model tiny-random --rounds 2 --switches 4
    python bench/glass_to_glass.py --lead 0.25            # another stream_lead_s
    python bench/glass_to_glass.py --piece-frames 0       # whole chunks at a time (before pieces)

One server (its own process, default settings but for --lead and --piece-frames) and one headless Chromium
(the viewer at /, as a user opens it). Each round plays one session per transport, in a
rotating order so that a load drifting on a shared machine spreads over all three; each
session starts, lets the picture settle, switches prompts --switches times at random
moments (uniform 1-2 s apart, so switches fall anywhere within a chunk), then stops.
Measured by the page's own clocks (window.framecastStats):

  * time to first frame: session.start sent -> first frame painted (and, apart, the
    connection setup before it: WebSocket open, or OPTIONS + offer + ICE + DTLS + SCTP);
  * switch to screen: session.update sent -> first painted frame generated under it;
  * frame interval: between painted frames after the first second (p50, p95, max), and
    the longest gap around each switch (a stall there shows up here);

and by the server's own counters: CPU time of the server process per second of stream,
by thread: the event loop (WebSocket sends, aiortc's RTP/SRTP/SCTP, pacing), Python worker
threads (encoding: fMP4/JPEG in asyncio.to_thread, aiortc's encoder in the loop's
executor), the engine's scheduler thread, and native threads (ONNX Runtime/torch pools,
libx264's own). The engine's share is the same work for every transport; the rest is
what the transport costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPTS = ["a blue square sliding left", "a red ball bouncing on a blue floor"]
TRANSPORTS = ("webrtc", "fmp4", "jpeg")
CPU_SAMPLE_S = 0.25


# --- the server, in its own process, with a CPU sampler -------------------------------------

def cpu_by_thread_kind() -> dict[str, float]:
    """CPU seconds of this process: in all, and by kind of thread."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    kinds = {"loop": 0.0, "workers": 0.0, "scheduler": 0.0, "native": 0.0}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        name = names.get(int(tid))
        kind = ("native" if name is None else "loop" if name == "MainThread"
                else "scheduler" if name == "framecast-scheduler" else "workers")
        kinds[kind] += cpu
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    kinds["total"] = (int(fields[11]) + int(fields[12])) / tick  # threads that ended included
    return kinds


def sample_cpu(path: Path) -> None:
    while True:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cpu_by_thread_kind()))
        tmp.replace(path)
        time.sleep(CPU_SAMPLE_S)


def serve(settings_json: str, cpu_path: str) -> None:
    import uvicorn

    from server.app import bind_socket, create_app, uvicorn_config
    from server.settings import Settings

    threading.Thread(target=sample_cpu, args=(Path(cpu_path),), daemon=True, name="cpu-sampler").start()
    settings = Settings.model_validate_json(settings_json)
    sock = bind_socket(settings)
    uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level="warning")).run(sockets=[sock])


class Server:
    def __init__(self, model: str | None, data_dir: Path, lead: float | None, piece_frames: int | None):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        settings = dict(host="127.0.0.1", port=self.port, data_dir=str(data_dir), job_workers=0,
                        log_level="warning", max_stream_seconds=3600)
        if model:
            settings["model"] = model
        if lead is not None:
            settings["stream_lead_s"] = lead
        if piece_frames is not None:
            settings["stream_piece_frames"] = piece_frames or None
        self.cpu_path = data_dir / "server-cpu.json"
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(settings), str(self.cpu_path)],
                                     cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 600) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited during startup")
            try:
                ready = httpx.get(self.url + "/readyz", timeout=5)
                if ready.status_code == 200:
                    return ready.json()
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server was not ready in time")

    def cpu(self) -> dict[str, float]:
        time.sleep(CPU_SAMPLE_S * 1.5)  # a fresh sample
        return json.loads(self.cpu_path.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- one session in the browser ----------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def play(page, server: Server, transport: str, switches: int, seed: int, rng: random.Random) -> dict:
    stats = lambda: page.evaluate("() => JSON.parse(JSON.stringify(window.framecastStats))")  # noqa: E731
    page.goto(f"{server.url}/?prompt=a+red+ball+bouncing+on+a+blue+floor&format={transport}&seed={seed}"
              "&autostart=1&max_seconds=600")
    page.wait_for_function("() => window.framecastStats.framesPainted > 0", timeout=60_000)
    first = stats()
    assert first["format"] == transport, (transport, first["format"], first["fallbackReason"], first["errors"])
    cpu_start, wall_start = server.cpu(), time.monotonic()
    time.sleep(1.5)
    for n in range(switches):
        time.sleep(rng.uniform(1.0, 2.0))
        event = page.evaluate("(p) => window.framecast.switchPrompt(p)", PROMPTS[n % 2])
        page.wait_for_function("(e) => window.framecastStats.promptSwitches.find((s) => s.event_id === e)"
                               "?.firstFrameAt != null", arg=event, timeout=15_000)
    time.sleep(1.0)
    cpu_end, wall_end = server.cpu(), time.monotonic()
    s = stats()
    page.evaluate("() => window.framecast.stop()")
    page.wait_for_function("() => ['done', 'closed'].includes(window.framecastStats.state)", timeout=15_000)

    paints = s["paints"]
    intervals = [(t1 - t0) / n1 for (t0, _), (t1, n1) in zip(paints, paints[1:])]
    settled = [(t1 - t0) / n1 for (t0, _), (t1, n1) in zip(paints, paints[1:]) if t0 >= s["firstFrameAt"] + 1000]
    at_switch = []
    for sw in s["promptSwitches"]:
        window = [i for (t0, _), (t1, n1), i in zip(paints, paints[1:], intervals)
                  if t1 >= sw["sentAt"] and t0 <= sw["firstFrameAt"] + 500]
        at_switch.append(max(window, default=float("nan")))
    seconds = wall_end - wall_start
    return {
        "transport": transport, "codec": s["codec"], "fps": s["fps"], "size": f"{s['width']}x{s['height']}",
        "setup_ms": first["startSentAt"] - first["connectStartedAt"],
        "first_frame_ms": first["firstFrameLatencyMs"],
        "switch_ms": [sw["latencyMs"] for sw in s["promptSwitches"]],
        "switch_first_chunk_ms": [sw["firstChunkAt"] - sw["sentAt"] for sw in s["promptSwitches"]],
        "interval_ms": settled, "switch_gap_ms": at_switch,
        "frames_dropped": s["framesDropped"], "live_edge_jumps": s["liveEdgeJumps"], "buffer_ms": s["bufferMs"],
        "cpu": {kind: (cpu_end[kind] - cpu_start[kind]) / seconds for kind in cpu_end}, "seconds": seconds,
        "errors": s["errors"],
    }


def summarize(sessions: list[dict]) -> dict:
    every = lambda key: [v for s in sessions for v in s[key]]  # noqa: E731
    switch, interval = every("switch_ms"), every("interval_ms")
    return {
        "transport": sessions[0]["transport"], "codec": sessions[0]["codec"], "sessions": len(sessions),
        "fps": sessions[0]["fps"], "size": sessions[0]["size"],
        "setup_ms_median": statistics.median(s["setup_ms"] for s in sessions),
        "first_frame_ms_median": statistics.median(s["first_frame_ms"] for s in sessions),
        "first_frame_ms_max": max(s["first_frame_ms"] for s in sessions),
        "switches": len(switch), "switch_ms_p50": percentile(switch, 0.5), "switch_ms_p95": percentile(switch, 0.95),
        "switch_ms_max": max(switch),
        "switch_first_chunk_ms_p50": percentile(every("switch_first_chunk_ms"), 0.5),
        "interval_ms_p50": percentile(interval, 0.5), "interval_ms_p95": percentile(interval, 0.95),
        "interval_ms_max": max(interval), "switch_gap_ms_max": max(every("switch_gap_ms")),
        "frames_dropped": sum(s["frames_dropped"] for s in sessions),
        "live_edge_jumps": sum(s["live_edge_jumps"] for s in sessions),
        "cpu": {kind: statistics.mean(s["cpu"][kind] for s in sessions) for kind in sessions[0]["cpu"]},
        "errors": [e for s in sessions for e in s["errors"]],
    }


def print_table(figures: dict) -> None:
    fps = figures["transports"][0]["fps"]
    print(f"\nmodel {figures['model']} ({figures['transports'][0]['size']} @ {fps:g} fps), stream_lead_s "
          f"{figures['stream_lead_s']}, stream_piece_frames {figures.get('stream_piece_frames')}, "
          f"{figures['rounds']} rounds, load average {figures['load_before']} -> "
          f"{figures['load_after']}; targets: first frame <= 500 ms, switch p50 <= 1000 / p95 <= 1500 ms, "
          f"interval p95 <= {2000 / fps:.0f} ms\n")
    print(f"{'transport':<16}{'setup':>7}{'first frame':>13}{'switch p50/p95/max':>21}{'new chunk':>10}"
          f"{'interval p50/p95/max':>22}{'gap@switch':>11}{'server CPU (cores): total = loop + workers + engine':>54}")
    for t in figures["transports"]:
        cpu = t["cpu"]
        name = t["transport"] + (f" {t['codec'].replace('video/', '')}" if t["codec"] else "")
        print(f"{name:<16}{t['setup_ms_median']:>7.0f}{t['first_frame_ms_median']:>8.0f} ({t['first_frame_ms_max']:.0f})"
              f"{t['switch_ms_p50']:>9.0f} /{t['switch_ms_p95']:>5.0f} /{t['switch_ms_max']:>5.0f}"
              f"{t['switch_first_chunk_ms_p50']:>10.0f}"
              f"{t['interval_ms_p50']:>10.0f} /{t['interval_ms_p95']:>4.0f} /{t['interval_ms_max']:>5.0f}"
              f"{t['switch_gap_ms_max']:>11.0f}"
              f"{cpu['total']:>18.3f} = {cpu['loop']:.3f} + {cpu['workers']:.3f} + "
              f"{cpu['scheduler'] + cpu['native']:.3f} (sched {cpu['scheduler']:.3f}, native {cpu['native']:.3f})")
    print("\nms; first frame: median (max) over sessions; new chunk: switch -> its first chunk/run received; "
          "gap@switch: longest frame interval around any switch; frames dropped "
          + ", ".join(f"{t['transport']} {t['frames_dropped']}" for t in figures["transports"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help="model name or directory (default: the embedded default)")
    ap.add_argument("--rounds", type=int, default=3, help="sessions per transport")
    ap.add_argument("--switches", type=int, default=6, help="prompt switches per session")
    ap.add_argument("--lead", type=float, default=None, help="the server's stream_lead_s (default: its own)")
    ap.add_argument("--piece-frames", type=int, default=None,
                    help="the server's stream_piece_frames (default: its own; 0: whole chunks)")
    ap.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated, of " + ", ".join(TRANSPORTS))
    ap.add_argument("--seed", type=int, default=0, help="seeds the switch timing (and the streams)")
    ap.add_argument("--chromium", default=os.environ.get("FRAMECAST_CHROMIUM") or shutil.which("chromium")
                    or "/usr/bin/chromium", help="the browser")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    from playwright.sync_api import sync_playwright

    from server.settings import Settings

    transports = args.transports.split(",")
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="framecast-g2g-"))
    server = Server(args.model, work, args.lead, args.piece_frames)
    sessions: dict[str, list[dict]] = {t: [] for t in transports}
    try:
        ready = server.wait_ready()
        load_before = os.getloadavg()[0]
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(work / "profile"), executable_path=args.chromium,
                                                           headless=True, args=FLAGS)
            page = context.pages[0] if context.pages else context.new_page()
            for round_ in range(args.rounds):
                order = transports[round_ % len(transports):] + transports[:round_ % len(transports)]
                for transport in order:
                    result = play(page, server, transport, args.switches, args.seed + round_, rng)
                    sessions[transport].append(result)
                    print(f"round {round_ + 1} {transport}: first frame {result['first_frame_ms']:.0f} ms, switches "
                          f"{', '.join(f'{v:.0f}' for v in result['switch_ms'])} ms, CPU {result['cpu']['total']:.3f}",
                          flush=True)
            context.close()
        load_after = os.getloadavg()[0]
    finally:
        server.stop()
    lead = args.lead if args.lead is not None else Settings.model_fields["stream_lead_s"].default
    pieces = (args.piece_frames if args.piece_frames is not None
              else Settings.model_fields["stream_piece_frames"].default) or None
    figures = {"model": ready.get("model") or args.model or "default", "stream_lead_s": lead,
               "stream_piece_frames": pieces, "rounds": args.rounds,
               "load_before": round(load_before, 2), "load_after": round(load_after, 2),
               "transports": [summarize(sessions[t]) for t in transports], "sessions": sessions}
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
