"""How many sessions (streams and running clip jobs together) one replica takes.

Two limits, the smaller wins:

* memory: weights + n * (one session's cache) must fit the budget. This is arithmetic on
  the model's config, done before any cache is allocated; when not even one session fits,
  the server stays unready (and `framecast serve` exits) with a message naming the numbers
  and the setting to change.
* speed: unless `max_sessions` is set, n sessions must each be generated and encoded
  faster than the model's fps (with a margin), measured at warm-up on this machine through
  the server's own generation path: 1, 2, 4, ... sessions at once until they fall behind,
  interpolated between the last that kept up and the first that did not.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from pathlib import Path

from pydantic import BaseModel

from .streams import StreamPool

log = logging.getLogger("framecast.server")

# Of the device memory free once the weights are loaded: the rest is left for activations,
# the text encoder's and decoder's work, and the allocator's slack.
MEMORY_FRACTION = 0.8
# Each session must be generated and encoded this much faster than real time: delivery,
# the event loop and a machine's load vary, and a viewer sees every shortfall as a stall.
REALTIME_MARGIN = 1.1
MAX_MEASURED_SESSIONS = 64  # where the doubling stops
UNMEASURED_SESSIONS = 4  # warm-up off and no max_sessions: nothing to measure with
# Timed once every cache is full, for at least this many chunks per session and this long:
# the scheduler generates a chunk ahead, which a short measurement would count as speed.
MEASURE_CHUNKS = 3
MEASURE_S = 1.0
WARMUP_PROMPT = "warm-up"


class SpeedPoint(BaseModel):
    sessions: int
    fps_per_session: float  # frames generated and encoded per second, each


class Capacity(BaseModel):
    """What /readyz and the startup log report."""

    sessions: int
    decided_by: str  # "memory" | "speed" | "max_sessions" | "default (warm-up off)"
    memory_budget_bytes: int
    memory_budget_from: str
    weights_bytes: int
    session_bytes: int
    sessions_by_memory: int
    sessions_by_speed: int | None  # None: not measured
    target_fps: float  # per session, for `sessions_by_speed`
    measured: list[SpeedPoint]
    batching: bool

    def describe(self) -> str:
        mib = 1024 * 1024
        measured = ", ".join(f"{p.sessions}: {p.fps_per_session:.1f}" for p in self.measured) or "none"
        speed = (f"{self.sessions_by_speed} sessions keep" if self.sessions_by_speed is not None else "not searched for")
        return (f"capacity {self.sessions} sessions (decided by {self.decided_by}); speed: {speed} "
                f">= {self.target_fps:.1f} fps each (measured fps per session at n sessions: {measured}); "
                f"memory: {self.sessions_by_memory} sessions fit {self.memory_budget_bytes / mib:.1f} MiB "
                f"({self.memory_budget_from}) at {self.weights_bytes / mib:.1f} MiB weights + "
                f"{self.session_bytes / mib:.2f} MiB each; batching {'on' if self.batching else 'off'}")


class NoRoom(Exception):
    """Not even one session fits the memory budget."""


# --- memory --------------------------------------------------------------------------------

def free_memory_bytes(device) -> tuple[int, str]:
    """Bytes free on `device` now, and what they are (for messages)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free {device} memory"
    # Host memory: what the kernel says is available, within the container's limit.
    free = _meminfo_available()
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit():
            free = min(free, max(0, int(limit) - int(usage)))
        break
    return free, "free host memory"


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


class MemoryPlan(BaseModel):
    budget_bytes: int
    budget_from: str
    weights_bytes: int
    session_bytes: int

    @property
    def sessions(self) -> int:
        return max(0, (self.budget_bytes - self.weights_bytes) // max(1, self.session_bytes))

    def refusal(self) -> str:
        mib = 1024 * 1024
        need = self.weights_bytes + self.session_bytes
        return (f"the memory budget of {self.budget_bytes} bytes ({self.budget_bytes / mib:.1f} MiB, "
                f"{self.budget_from}) holds no session: the weights take {self.weights_bytes} bytes "
                f"({self.weights_bytes / mib:.1f} MiB) and one session's cache {self.session_bytes} bytes "
                f"({self.session_bytes / mib:.1f} MiB), {need} bytes together. Set --memory-budget "
                f"(FRAMECAST_MEMORY_BUDGET_BYTES) to at least {need}, or serve on a device with more memory "
                "(--device), or a model with a smaller window or resolution")


def memory_plan(model, budget_bytes: int | None) -> MemoryPlan:
    """Arithmetic only: nothing is allocated. The model's weights are loaded already, so
    a derived budget is they plus a share of what is free besides them."""
    weights = model.weights_bytes()
    if budget_bytes is not None:
        budget, source = budget_bytes, "memory_budget_bytes"
    else:
        free, what = free_memory_bytes(model.device)
        budget, source = weights + int(free * MEMORY_FRACTION), f"weights + {MEMORY_FRACTION:.0%} of {what}"
    return MemoryPlan(budget_bytes=budget, budget_from=source, weights_bytes=weights,
                      session_bytes=model.session_memory_bytes())


# --- speed ---------------------------------------------------------------------------------

async def measure_speed(model, sessions: int, batching: bool) -> SpeedPoint:
    """`sessions` streams at once through a StreamPool of their own, each chunk encoded as
    fMP4 on the stream's worker thread, as the server serves them; timed once every cache
    is full (a filling cache is faster than the steady state). Allocates `sessions` cache
    rows for the time it runs."""
    from .encoding import Fmp4StreamEncoder

    att = model.config.attention
    filling = math.ceil((att.sink_frames + att.window_frames) / att.chunk_frames) + 1
    pool = StreamPool(model, max_sessions=sessions, batching=batching)
    try:
        streams = [await pool.open(WARMUP_PROMPT, seed) for seed in range(sessions)]
        encoders = [Fmp4StreamEncoder(model.width, model.height, model.fps) for _ in streams]

        async def run(stream, encoder, chunks: int, until: float = 0.0) -> int:
            done = 0
            while done < chunks or time.perf_counter() < until:
                await pool.next_chunk(stream, lambda chunk: encoder.encode(list(chunk.frames)))
                done += 1
            return done

        await asyncio.gather(*(run(s, e, filling) for s, e in zip(streams, encoders)))
        started = time.perf_counter()
        chunks = await asyncio.gather(*(run(s, e, MEASURE_CHUNKS, started + MEASURE_S)
                                        for s, e in zip(streams, encoders)))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(asyncio.wrap_future(pool.close(s)) for s in streams))
    finally:
        pool.shutdown()
    frames = sum(chunks) * model.frames_per_chunk
    return SpeedPoint(sessions=sessions, fps_per_session=round(frames / elapsed / sessions, 2))


def sessions_keeping_up(points: list[SpeedPoint], target_fps: float) -> int:
    """The most sessions that each keep `target_fps`: the largest measured count that did,
    raised by interpolating the aggregate rate towards the first count that did not."""
    good = [p for p in points if p.fps_per_session >= target_fps]
    if not good:
        return 1  # one session is served even when it cannot keep up; the log says so
    best = max(good, key=lambda p: p.sessions)
    worse = [p for p in points if p.sessions > best.sessions]
    if not worse:
        return best.sessions
    bad = min(worse, key=lambda p: p.sessions)
    low, high = best.sessions * best.fps_per_session, bad.sessions * bad.fps_per_session  # aggregate fps
    for n in range(bad.sessions - 1, best.sessions, -1):
        if low + (high - low) * (n - best.sessions) / (bad.sessions - best.sessions) >= target_fps * n:
            return n
    return best.sessions


async def decide_capacity(model, settings, plan: MemoryPlan) -> Capacity:
    """Runs the warm-up (the measurements warm every kernel shape up too)."""
    by_memory = plan.sessions
    target = model.fps * REALTIME_MARGIN
    measured: list[SpeedPoint] = []
    by_speed = None
    if settings.warmup:
        started = time.perf_counter()
        most = min(by_memory, settings.max_sessions or MAX_MEASURED_SESSIONS)
        n = 1
        while True:
            measured.append(await measure_speed(model, n, settings.batching))
            gc.collect()  # its cache is gone before the next one is allocated (reference cycles)
            # With max_sessions set, one session warms up and tells the speed (for logs
            # and the Retry-After of a full job queue); without it, search.
            if settings.max_sessions is not None or measured[-1].fps_per_session < target or n >= most:
                break
            n = min(2 * n, most)
        log.info("warmed up and measured in %.2f s", time.perf_counter() - started)
        if settings.max_sessions is None:
            by_speed = sessions_keeping_up(measured, target)  # the search stops at the memory limit
        if measured[0].fps_per_session < target:
            log.warning("one session runs at %.1f fps here, below the model's %.3g fps (+%d%% margin): viewers will "
                        "see stalls", measured[0].fps_per_session, model.fps, round(100 * (REALTIME_MARGIN - 1)))
    if settings.max_sessions is not None:
        wanted, decided_by = settings.max_sessions, "max_sessions"
    elif by_speed is not None:
        wanted, decided_by = by_speed, "speed"
    else:
        wanted, decided_by = UNMEASURED_SESSIONS, "default (warm-up off)"
    sessions = min(wanted, by_memory)
    if by_memory < wanted or (decided_by == "speed" and by_speed == by_memory
                              and measured[-1].fps_per_session >= target):
        decided_by = "memory"
    return Capacity(sessions=sessions, decided_by=decided_by, memory_budget_bytes=plan.budget_bytes,
                    memory_budget_from=plan.budget_from, weights_bytes=plan.weights_bytes,
                    session_bytes=plan.session_bytes, sessions_by_memory=by_memory, sessions_by_speed=by_speed,
                    target_fps=round(target, 3), measured=measured, batching=settings.batching)
