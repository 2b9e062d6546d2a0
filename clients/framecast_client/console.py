"""Terminal front ends for `framecast watch` and `framecast video` (rich on stderr).

On a terminal the status is one live line; elsewhere (CI logs, pipes) only events
and the final summary are printed, so logs stay readable.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from clients.framecast_client.client import FramecastClient
from clients.framecast_client.errors import ExitCode
from clients.framecast_client.watch import WatchOptions, WatchProgress, watch


def _status_line(p: WatchProgress) -> Text:
    latency = f"{p.latency_ms:.0f} ms" if p.latency_ms is not None else "-"
    first = f"{p.first_frame_s * 1000:.0f} ms" if p.first_frame_s is not None else "-"
    line = (f"{p.video_seconds:6.2f}s video  {p.frames:5d} frames  {p.fps:5.1f} fps  latency {latency}  "
            f"first frame {first}")
    if p.reconnects:
        line += f"  reconnects {p.reconnects}"
    return Text(line)


def run_watch(options: WatchOptions) -> int:
    console = Console(stderr=True, highlight=False)
    live = Live(Text("connecting..."), console=console, transient=False, refresh_per_second=8) \
        if console.is_terminal else None

    def on_progress(p: WatchProgress) -> None:
        if p.note:
            console.print(p.note)
        if live is not None:
            live.update(_status_line(p))

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Ctrl-C ends the session cleanly and keeps the recording; a second one aborts.
        try:
            loop.add_signal_handler(signal.SIGINT, _on_sigint, loop, stop)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
        return await watch(options, on_progress, stop)

    if live is not None:
        live.start()
    try:
        result = asyncio.run(main())
    finally:
        if live is not None:
            live.stop()
    summary = (f"{result.frames} frames, {result.video_seconds:.2f}s of video"
               + (f", first frame after {result.first_frame_s * 1000:.0f} ms" if result.first_frame_s else "")
               + (f", {result.reconnects} reconnect(s)" if result.reconnects else "")
               + (f", ended: {result.done_reason}" if result.done_reason else ""))
    for switch in result.switches:
        summary += (f"\nprompt switch {switch['event_id']} at {switch['video_seconds']:.2f}s -> "
                    f"{switch['prompt']!r}: from frame {switch['at_frame']}, "
                    + (f"came {switch['latency_s'] * 1000:.0f} ms later" if switch['latency_s'] is not None
                       else "never came"))
    console.print(summary)
    if options.output:
        if os.path.exists(options.output):
            print(f"saved {options.output} ({os.path.getsize(options.output)} bytes)")
        else:
            console.print("nothing was received; no file written")
    return ExitCode.OK


def _on_sigint(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    if stop.is_set():
        loop.remove_signal_handler(signal.SIGINT)
        raise KeyboardInterrupt
    stop.set()
    print("\nstopping (Ctrl-C again to abort)", file=sys.stderr)


def run_video(prompt: str, output: str, *, url=None, api_key=None, timeout=None, **options) -> int:
    console = Console(stderr=True, highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                        console=console, transient=False, disable=not console.is_terminal)

    async def main():
        async with FramecastClient(url, api_key) as client:
            task = progress.add_task("queued", total=100)
            last = {"status": None}

            def on_job(job) -> None:
                progress.update(task, completed=job.progress, description=f"{job.id} {job.status}")
                if not console.is_terminal and job.status != last["status"]:
                    console.print(f"{job.id}: {job.status} {job.progress}%")
                last["status"] = job.status

            with progress:
                job = await client.generate_video(prompt, output, progress=on_job, timeout=timeout,
                                                  **{k: v for k, v in options.items() if v is not None})
            return job

    job = asyncio.run(main())
    print(f"saved {output} ({os.path.getsize(output)} bytes, job {job.id}, {float(job.seconds):g}s at {job.fps:g} fps)")
    return ExitCode.OK
