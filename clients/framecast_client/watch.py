"""`framecast watch`: record a live stream to a file, switch prompts on a script,
and reconnect when the connection drops.

Times in `prompt_at` and `seconds` are video time (seconds of generated video), not
wall-clock: generation speed varies with the machine, the script should not.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Callable

from clients.framecast_client.client import FramecastClient
from clients.framecast_client.decode import JpegDecoder
from clients.framecast_client.errors import ConnectionLost, ServerFull, ServerUnavailable
from clients.framecast_client.record import Fmp4Recorder, JpegRecorder
from clients.framecast_client.stream import Stream

RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class WatchOptions:
    prompt: str
    seconds: float | None = None  # None: until stopped
    output: str | None = None
    format: str = "fmp4"
    seed: int | None = None
    model: str | None = None
    fps: float | None = None
    prompt_at: list[tuple[float, str]] = field(default_factory=list)  # (video seconds, prompt)
    reconnect: int = 0
    url: str | None = None
    api_key: str | None = None


@dataclass
class WatchProgress:
    video_seconds: float
    frames: int
    fps: float  # frames received per wall-clock second, recent window
    latency_ms: float | None  # the server's figure from session.stats
    first_frame_s: float | None  # session.start -> first media, this session
    prompt: str
    reconnects: int
    note: str | None = None  # a one-off event worth printing (switch, reconnect)


@dataclass
class WatchResult:
    frames: int
    video_seconds: float
    reconnects: int
    first_frame_s: float | None
    switches: list[dict] = field(default_factory=list)  # {event_id, prompt, at_frame, applied_frame, latency_s}
    output: str | None = None
    done_reason: str | None = None
    prompt: str = ""  # the prompt in force at the end (a reconnect resumes under it)


class _FpsMeter:
    def __init__(self, window_s: float = 2.0):
        self._events: collections.deque = collections.deque()
        self._window = window_s

    def add(self, frames: int, now: float) -> float:
        self._events.append((now, frames))
        while self._events and now - self._events[0][0] > self._window:
            self._events.popleft()
        span = now - self._events[0][0]
        count = sum(f for _, f in list(self._events)[1:])
        return count / span if span > 0 else 0.0


async def watch(options: WatchOptions, on_progress: Callable[[WatchProgress], None] | None = None,
                stop: asyncio.Event | None = None) -> WatchResult:
    stop = stop or asyncio.Event()
    pending = sorted(options.prompt_at)
    recorder = None
    result = WatchResult(0, 0.0, 0, None, output=options.output, prompt=options.prompt)
    meter = _FpsMeter()
    ever_started = False
    async with FramecastClient(options.url, options.api_key) as client:
        try:
            while True:
                remaining = None if options.seconds is None else max(options.seconds - result.video_seconds, 1e-3)
                try:
                    stream = await client.open_stream(result.prompt, seed=options.seed, model=options.model,
                                                      format=options.format, fps=options.fps,
                                                      max_seconds=remaining)
                except (ConnectionLost, ServerUnavailable, ServerFull) as exc:
                    if not ever_started or result.reconnects >= options.reconnect:
                        raise
                    await _backoff(result, exc, on_progress)
                    continue
                ever_started = True
                if recorder is None and options.output:
                    recorder = (Fmp4Recorder(options.output) if stream.started.format == "fmp4"
                                else JpegRecorder(options.output, stream.started.fps))
                elif recorder is not None:
                    recorder.new_session()
                try:
                    await _run_session(stream, options, result, pending, recorder, meter, on_progress, stop)
                    return result
                except ConnectionLost as exc:
                    if result.reconnects >= options.reconnect:
                        raise
                    await _backoff(result, exc, on_progress)
                finally:
                    await stream.close()
        finally:
            if recorder is not None:
                recorder.close()


async def _run_session(stream: Stream, options: WatchOptions, result: WatchResult, pending: list,
                       recorder, meter: _FpsMeter, on_progress, stop: asyncio.Event) -> None:
    fps = stream.started.fps
    session_offset = result.video_seconds  # video seconds recorded before this session
    first_pts: float | None = None
    decoder = JpegDecoder() if stream.started.format == "jpeg" else None
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        while True:
            next_media = asyncio.ensure_future(stream.receive())
            await asyncio.wait({next_media, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if not next_media.done():  # asked to stop (Ctrl-C): end the session cleanly
                next_media.cancel()
                done = await stream.stop()
                result.done_reason = done.reason if done else "stopped"
                return
            media = next_media.result()
            if media is None:
                result.done_reason = stream.done.reason if stream.done else None
                return
            if recorder is not None:
                if decoder is None:
                    recorder.add(media)
                else:
                    for frame in decoder.feed(media.meta, media.data, media.prompt_event_id, media.received_at):
                        recorder.add_frame(frame.image, frame.pts)
            if media.meta.frames == 0:
                continue
            if first_pts is None:
                first_pts = media.meta.pts
                result.first_frame_s = result.first_frame_s or (stream.first_media_at - stream.start_sent_at)
            result.frames += media.meta.frames
            result.video_seconds = session_offset + media.meta.pts - first_pts + media.meta.frames / fps
            for switch in result.switches:
                if switch["applied_frame"] is None and switch["event_id"] in stream.prompt_events:
                    switch["applied_frame"] = stream.prompt_events[switch["event_id"]]
                    switch["latency_s"] = round(stream.prompt_event_received[switch["event_id"]] - switch["sent_at"], 3)
            note = None
            while pending and pending[0][0] <= result.video_seconds:
                _, result.prompt = pending.pop(0)
                switch = await stream.switch_prompt(result.prompt)
                result.switches.append({"event_id": switch.event_id, "prompt": result.prompt,
                                        "read_as": switch.queued.read_as,
                                        "at_frame": switch.queued.at_frame, "applied_frame": None,
                                        "sent_at": switch.sent_at, "latency_s": None,
                                        "video_seconds": round(result.video_seconds, 3)})
                read = f", read as {switch.queued.read_as!r}" if switch.queued.read_as else ""
                note = f"prompt -> {result.prompt!r}{read} (from frame {switch.queued.at_frame})"
            if on_progress is not None:
                on_progress(WatchProgress(result.video_seconds, result.frames,
                                          meter.add(media.meta.frames, time.monotonic()), stream.latency_ms,
                                          result.first_frame_s, result.prompt, result.reconnects, note))
            if options.seconds is not None and result.video_seconds >= options.seconds - 1e-6:
                done = await stream.stop()
                result.done_reason = done.reason if done else "max_seconds"
                return
    finally:
        stop_task.cancel()


async def _backoff(result: WatchResult, exc: Exception, on_progress) -> None:
    delay = RECONNECT_BACKOFF_S[min(result.reconnects, len(RECONNECT_BACKOFF_S) - 1)]
    result.reconnects += 1
    if on_progress is not None:
        on_progress(WatchProgress(result.video_seconds, result.frames, 0.0, None, result.first_frame_s,
                                  result.prompt, result.reconnects, f"{exc}; reconnecting in {delay:g}s "
                                  f"(attempt {result.reconnects})"))
    await asyncio.sleep(delay)
