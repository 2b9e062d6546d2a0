"""Serving under load, on loopback: what a client receives against what the engine makes.

    python bench/serve_load.py                      # tiny-random, short runs
    python bench/serve_load.py --model DIR --stream-seconds 20 --rss-seconds 600

Prints one table:
  * 1 session: frames/s delivered to a WebSocket client vs the engine's own frames/s
    (a bare StreamSession in this process), measured in the same run;
  * 1, 2, 4, 8 concurrent sessions: aggregate and per-session frames/s, p95 frame
    interval (gap between chunk arrivals / frames in the chunk), time to first frame;
  * batching (BatchScheduler) vs one forward per session, 4 sessions;
  * one slow client (reads at --slow-fps) among 3 fast ones: the fast ones' rate with and
    without it;
  * server RSS over one long stream (--rss-seconds): start, end, max, slope;
  * non-reading clients are evicted: --evict-clients raw clients send session.start and
    read nothing, holding every slot (a reading client is refused server_full); each must
    be closed within the stall timeout (--stall-seconds) after its socket buffers filled,
    and the reading client then gets in. Prints the time to evict.

    python bench/serve_load.py --evict-only         # just the eviction check

The server runs in a subprocess (this script in --serve mode) so that client and server
do not share a GIL; real-time pacing is off (stream_lead_s=None) to measure throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# --- the server, in its own process ----------------------------------------------------------

def serve(settings_json: str) -> None:
    import uvicorn

    from server.app import bind_socket, create_app, uvicorn_config
    from server.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    sock = bind_socket(settings)
    uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level="warning")).run(sockets=[sock])


class ServerProcess:
    def __init__(self, model: str, data_dir: Path, **overrides):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        settings = dict(model=model, host="127.0.0.1", port=self.port, data_dir=str(data_dir), job_workers=0,
                        stream_lead_s=None, max_sessions=8, sessions_per_key=8, sessions_per_address=0,
                        max_stream_seconds=36000, stats_interval_s=5.0, log_level="warning")
        settings.update(overrides)
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(settings)], cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/realtime/video"

    def wait_ready(self, timeout: float = 300) -> "ServerProcess":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during startup")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- clients ---------------------------------------------------------------------------------

@dataclass
class Session:
    started: float = 0.0  # session.start sent
    fps_out: float = 0.0  # the stream's frame rate, from session.started
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, frames) per media message

    @property
    def ttff(self) -> float:
        return self.arrivals[0][0] - self.started

    @property
    def frames(self) -> int:
        return sum(n for _, n in self.arrivals)

    def fps(self) -> float:
        """Steady rate: frames over the last three quarters of the stream (the first chunks
        of a stream run on a cache that is still filling)."""
        steady = self.arrivals[len(self.arrivals) // 4:]
        if len(steady) < 2:
            return float("nan")
        return sum(n for _, n in steady[1:]) / (steady[-1][0] - steady[0][0])

    def intervals(self) -> list[float]:
        return [(t1 - t0) / n1 for (t0, _), (t1, n1) in zip(self.arrivals, self.arrivals[1:]) if n1]


def start_message(seconds: float, seed: int) -> str:
    return json.dumps({"type": "session.start", "prompt": "a red ball bouncing on a blue floor", "seed": seed,
                       "format": "fmp4", "max_seconds": seconds})


async def fast_client(url: str, seconds: float, seed: int, stop_after: float | None = None) -> Session:
    import websockets

    session = Session()
    async with websockets.connect(url, max_size=2**26) as ws:
        session.started = time.perf_counter()
        await ws.send(start_message(seconds, seed))
        meta = None
        async for message in ws:
            if isinstance(message, bytes):
                if meta["frames"]:
                    session.arrivals.append((time.perf_counter(), meta["frames"]))
                continue
            parsed = json.loads(message)
            if parsed["type"] == "video.chunk":
                meta = parsed
            elif parsed["type"] == "session.started":
                session.fps_out = parsed["fps"]
            elif parsed["type"] == "error":
                raise RuntimeError(parsed["error"])
            if stop_after is not None and session.arrivals and time.perf_counter() - session.started > stop_after:
                await ws.send(json.dumps({"type": "session.stop"}))
                stop_after = None
    return session


async def slow_client(port: int, seconds: float, seed: int, fps: float) -> Session:
    """Reads at `fps` frames/s through a raw socket with small buffers (client libraries
    read ahead into their own memory, which would hide the slowness from the server)."""
    session = Session()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /v1/realtime/video HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    payload, mask = start_message(seconds, seed).encode(), os.urandom(4)
    writer.write(bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload)) + mask
                 + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    session.started = time.perf_counter()
    meta = None
    try:
        while True:
            head = await reader.readexactly(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", await reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", await reader.readexactly(8))[0]
            data = await reader.readexactly(length)
            if opcode == 8:  # close
                break
            if opcode == 1:
                parsed = json.loads(data)
                meta = parsed if parsed["type"] == "video.chunk" else meta
            elif opcode == 2 and meta and meta["frames"]:
                session.arrivals.append((time.perf_counter(), meta["frames"]))
                await asyncio.sleep(meta["frames"] / fps)
    except asyncio.IncompleteReadError:
        pass
    finally:  # also when cancelled: the server sees the disconnect and frees the session
        writer.close()
    return session


# --- measurements ----------------------------------------------------------------------------

class RawEngine:
    """The engine alone: one StreamSession in this process, no server, no encoding.

    Run on a worker thread, as the server runs it: torch's intra-op threads behave
    differently on the main thread (on a busy 2-core machine the main thread measured
    5-8x slower), and the server never runs the model there."""

    def __init__(self, model_name: str):
        from concurrent.futures import ThreadPoolExecutor

        from engine import load_model

        self._thread = ThreadPoolExecutor(max_workers=1)
        self.model = load_model(model_name)
        self.session = self.model.open_session("a red ball bouncing on a blue floor", seed=0)
        # Warm up: kernels for every context length until the cache is full.
        self._thread.submit(lambda: [self.session.next_chunk() for _ in range(12)]).result()

    def fps(self, chunks: int) -> float:
        def measure() -> float:
            started, frames = time.perf_counter(), 0
            for _ in range(chunks):
                frames += len(self.session.next_chunk().frames)
            return frames / (time.perf_counter() - started)

        return self._thread.submit(measure).result()

    def close(self) -> None:
        self._thread.shutdown()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else float("nan")


async def concurrent(url: str, n: int, seconds: float) -> dict:
    sessions = await asyncio.gather(*(fast_client(url, seconds, seed=i) for i in range(n)))
    first = min(s.arrivals[0][0] for s in sessions)
    last = max(s.arrivals[-1][0] for s in sessions)
    return dict(sessions=n, aggregate_fps=sum(s.frames for s in sessions) / (last - first),
                per_session_fps=statistics.mean(s.fps() for s in sessions),
                p95_interval_ms=1000 * p95([i for s in sessions for i in s.intervals()]),
                ttff_ms=1000 * statistics.median(s.ttff for s in sessions),
                ttff_max_ms=1000 * max(s.ttff for s in sessions))


def generated_frames(server: ServerProcess) -> float:
    import httpx

    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith('framecast_frames_generated_total{kind="stream"}'):
            return float(line.split()[1])
    return 0.0


async def with_slow_one(server: ServerProcess, fast: int, seconds: float, slow_fps: float) -> dict:
    """Fast clients' rate alone, with a slow client, with it, alone again (symmetric in time,
    so a load that drifts on a shared machine cancels out of the comparison)."""
    async def fast_rate() -> float:
        sessions = await asyncio.gather(*(fast_client(server.ws_url, seconds, seed=i) for i in range(fast)))
        return statistics.mean(s.fps() for s in sessions)

    alone = [await fast_rate()]
    slow = asyncio.create_task(slow_client(server.port, 36000, 99, slow_fps))
    # Until the socket buffers between server and slow reader are full, its stream runs at
    # full speed; the claim is about after that, so wait for its generation to slow down.
    previous, waited = await asyncio.to_thread(generated_frames, server), 0.0
    while waited < 60:
        await asyncio.sleep(1.0)
        waited += 1.0
        now = await asyncio.to_thread(generated_frames, server)
        if now - previous < 3 * slow_fps + 16:
            break
        previous = now
    mixed = [await fast_rate(), await fast_rate()]
    slow.cancel()
    alone.append(await fast_rate())
    return dict(fast_alone_fps=statistics.mean(alone), fast_with_slow_fps=statistics.mean(mixed),
                rounds_alone=alone, rounds_with_slow=mixed, slow_wait_s=waited)


async def rss_over_stream(server: ServerProcess, wall_seconds: float) -> dict:
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter() - started, server.rss_mb()))
            await asyncio.sleep(max(1.0, wall_seconds / 120))

    sampler = asyncio.create_task(sample())
    session = await fast_client(server.ws_url, 36000, seed=7, stop_after=wall_seconds)
    sampler.cancel()
    steady = [(t, mb) for t, mb in samples if t >= min(10.0, wall_seconds / 5)]
    ts, mbs = [t for t, _ in steady], [mb for _, mb in steady]
    slope = statistics.linear_regression(ts, mbs).slope * 60 if len(steady) >= 2 else float("nan")
    return dict(wall_s=round(time.perf_counter() - started, 1), stream_s=round(session.frames / session.fps_out, 1),
                frames=session.frames, rss_start_mb=mbs[0], rss_end_mb=mbs[-1], rss_max_mb=max(mbs),
                slope_mb_per_min=slope)


def metric(server: ServerProcess, name: str) -> float:
    import httpx

    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def non_reading_client(port: int, seed: int) -> socket.socket:
    """Sends session.start over a raw socket with a small receive buffer and never reads
    (the tests' stalled client: client libraries keep reading into their own buffers)."""
    from tests.server_fixtures import stalled_client

    return stalled_client(port, json.loads(start_message(36000, seed)))


async def evictions(server: ServerProcess, clients: int, stall_s: float) -> dict:
    """Time from session.start to the slot freed, for clients that never read; whether a
    reading client is refused meanwhile and admitted after."""
    started = time.perf_counter()
    socks = [non_reading_client(server.port, seed) for seed in range(clients)]
    try:
        while metric(server, "framecast_active_sessions") < clients:
            await asyncio.sleep(0.05)
        try:
            await fast_client(server.ws_url, 1.0, seed=99)
            refused_while_held = False
        except RuntimeError as exc:
            refused_while_held = "server_full" in str(exc)
        freed_at: list[float] = []
        while len(freed_at) < clients and time.perf_counter() - started < stall_s + 120:
            active = metric(server, "framecast_active_sessions")
            freed_at += [time.perf_counter() - started] * int(clients - active - len(freed_at))
            await asyncio.sleep(0.05)
        admitted_after = (await fast_client(server.ws_url, 1.0, seed=98)).frames > 0
    finally:
        for sock in socks:
            sock.close()
    return dict(clients=clients, stall_timeout_s=stall_s, evict_first_s=min(freed_at, default=float("nan")),
                evict_last_s=max(freed_at, default=float("nan")), evicted=len(freed_at),
                stalled_errors=metric(server, 'framecast_stream_errors_total{code="stalled"}'),
                refused_while_held=refused_while_held, admitted_after=admitted_after)


def print_evictions(e: dict) -> None:
    print(f"\n{e['clients']} non-reading clients, stall timeout {e['stall_timeout_s']:g} s: {e['evicted']} evicted "
          f"{e['evict_first_s']:.1f}-{e['evict_last_s']:.1f} s after session.start "
          f"({e['stalled_errors']:.0f} counted as stalled); a reading client was "
          f"{'refused (server_full)' if e['refused_while_held'] else 'NOT refused'} while they held the slots, "
          f"{'admitted' if e['admitted_after'] else 'NOT admitted'} after")


def run_evictions(args) -> dict:
    server = ServerProcess(args.model, args.data_dir, max_sessions=args.evict_clients,
                           stall_timeout_s=args.stall_seconds).wait_ready()
    try:
        return asyncio.run(evictions(server, args.evict_clients, args.stall_seconds))
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="tiny-random", help="model name or directory")
    ap.add_argument("--stream-seconds", type=float, default=10.0, help="seconds of video per session in each run")
    ap.add_argument("--counts", default="1,2,4,8", help="concurrent session counts")
    ap.add_argument("--slow-fps", type=float, default=4.0, help="rate the slow client reads at, frames/s")
    ap.add_argument("--rss-seconds", type=float, default=60.0, help="wall seconds of the long stream (0 = skip)")
    ap.add_argument("--rounds", type=int, default=3, help="raw-vs-delivered pairs (the median is printed)")
    ap.add_argument("--evict-clients", type=int, default=4, help="non-reading clients in the eviction check (0 = skip)")
    ap.add_argument("--stall-seconds", type=float, default=5.0, help="the server's stall timeout in the eviction check")
    ap.add_argument("--evict-only", action="store_true", help="run only the eviction check")
    ap.add_argument("--ratio-only", action="store_true", help="run only the delivered-vs-raw rounds")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/framecast-bench"), help="server data dir")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    counts = [int(c) for c in args.counts.split(",")]
    figures: dict = {"model": args.model}
    if args.evict_only:
        print_evictions(run_evictions(args))
        return

    batched = ServerProcess(args.model, args.data_dir, batching=True).wait_ready()
    try:
        seconds = args.stream_seconds
        # Raw and delivered alternate, so that each pair sees the same load on a shared machine.
        raw, rounds = RawEngine(args.model), []
        chunks = max(8, round(seconds * raw.model.fps / raw.model.frames_per_chunk))
        for _ in range(args.rounds):
            raw_fps = raw.fps(chunks)
            delivered = asyncio.run(concurrent(batched.ws_url, 1, seconds))
            rounds.append((raw_fps, delivered["per_session_fps"]))
        ratios = sorted(d / r for r, d in rounds)
        figures["raw_engine_fps"] = statistics.median(r for r, _ in rounds)
        figures["one_session"] = {"per_session_fps": statistics.median(d for _, d in rounds),
                                  "delivered_over_raw": statistics.median(ratios), "ratios": ratios}
        raw.close()
        if args.ratio_only:
            print_ratio(figures)
            return
        figures["concurrent"] = [asyncio.run(concurrent(batched.ws_url, n, seconds)) for n in counts]
        figures["slow_client"] = asyncio.run(with_slow_one(batched, 3, seconds, args.slow_fps))
        if args.rss_seconds > 0:
            figures["rss"] = asyncio.run(rss_over_stream(batched, args.rss_seconds))
    finally:
        batched.stop()
    unbatched = ServerProcess(args.model, args.data_dir, batching=False).wait_ready()
    try:
        figures["unbatched_4"] = asyncio.run(concurrent(unbatched.ws_url, 4, args.stream_seconds))
    finally:
        unbatched.stop()
    if args.evict_clients:
        figures["evictions"] = run_evictions(args)
    batched_4 = next((c for c in figures["concurrent"] if c["sessions"] == 4), None)
    if batched_4:
        figures["batching_ratio_4"] = batched_4["aggregate_fps"] / figures["unbatched_4"]["aggregate_fps"]
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def print_ratio(f: dict) -> None:
    one = f["one_session"]
    print(f"\nmodel {f['model']}; server in its own process on loopback; fMP4; no real-time pacing\n")
    print(f"raw engine (one StreamSession, this process)   {f['raw_engine_fps']:8.1f} frames/s (median)")
    print(f"1 session delivered over WebSocket             {one['per_session_fps']:8.1f} frames/s (median)")
    print(f"delivered / raw, per round                     {', '.join(f'{r:.3f}' for r in one['ratios'])}"
          f"  (median {one['delivered_over_raw']:.3f})")


def print_table(f: dict) -> None:
    print_ratio(f)
    print(f"\n{'sessions':>8} {'aggregate fps':>14} {'per-session fps':>16} {'p95 interval ms':>16} "
          f"{'TTFF ms (median/max)':>21}")
    for c in f["concurrent"]:
        print(f"{c['sessions']:>8} {c['aggregate_fps']:>14.1f} {c['per_session_fps']:>16.1f} "
              f"{c['p95_interval_ms']:>16.1f} {c['ttff_ms']:>12.0f} / {c['ttff_max_ms']:<6.0f}")
    u = f["unbatched_4"]
    print(f"{'4 (one forward per session)':>28}: aggregate {u['aggregate_fps']:.1f} fps, "
          f"per-session {u['per_session_fps']:.1f}; batching ratio at 4: {f.get('batching_ratio_4', float('nan')):.2f}")
    s = f["slow_client"]
    print(f"\n3 fast clients, fps each: alone {s['fast_alone_fps']:.1f} "
          f"({', '.join(f'{r:.0f}' for r in s['rounds_alone'])}), beside a slow reader "
          f"{s['fast_with_slow_fps']:.1f} ({', '.join(f'{r:.0f}' for r in s['rounds_with_slow'])}); "
          f"ratio {s['fast_with_slow_fps'] / s['fast_alone_fps']:.2f} (its buffers were full after {s['slow_wait_s']:.0f} s)")
    if "rss" in f:
        r = f["rss"]
        print(f"\nRSS over one {r['wall_s']:.0f} s stream ({r['stream_s']:.0f} s of video, {r['frames']} frames): "
              f"start {r['rss_start_mb']:.0f} MB, end {r['rss_end_mb']:.0f} MB, max {r['rss_max_mb']:.0f} MB, "
              f"slope {r['slope_mb_per_min']:+.2f} MB/min")
    if "evictions" in f:
        print_evictions(f["evictions"])


if __name__ == "__main__":
    main()
