"""`framecast watch` and `framecast video`: the client's subcommands.

Registration imports nothing heavy; handlers import the client package when run.
"""

from __future__ import annotations

import argparse

from framecast import CommandError

EXIT_CODES = """exit codes:
  0    ok
  1    request refused (bad prompt, unknown model, ...)
  2    usage error
  3    server unreachable
  4    unauthorized (API key missing or wrong)
  5    server full (try again later)
  6    connection lost mid-stream
  7    video job failed
  8    protocol error (client and server disagree)
  130  interrupted"""

ENV_HELP = "Server address and key also come from $FRAMECAST_URL and $FRAMECAST_API_KEY."


def _prompt_at(text: str) -> tuple[float, str]:
    seconds, sep, prompt = text.partition(":")
    try:
        at = float(seconds)
    except ValueError:
        at = -1.0
    if not sep or not prompt.strip() or at < 0:
        raise argparse.ArgumentTypeError(f"expected SECONDS:PROMPT (e.g. 2.5:'a blue sky'), got {text!r}")
    return at, prompt.strip()


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="server address, e.g. http://127.0.0.1:8000 (default: $FRAMECAST_URL "
                                      "or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key sent as a bearer token (default: $FRAMECAST_API_KEY)")


def register(subparsers) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    watch = subparsers.add_parser(
        "watch", help="stream live video for a prompt and record it to a file",
        description="Open a live stream, show fps and latency, optionally record it to MP4 and switch "
                    "prompts on a schedule. " + ENV_HELP, epilog=EXIT_CODES, formatter_class=formatter)
    watch.add_argument("prompt", help="what to generate")
    watch.add_argument("--seconds", type=_positive, help="stop after this many seconds of video "
                                                          "(default: until Ctrl-C)")
    watch.add_argument("-o", "--output", help="record to this MP4 file (default: do not record)")
    watch.add_argument("--format", choices=("fmp4", "jpeg"), default="fmp4",
                       help="media format on the wire: fmp4 (H.264 fragments, recorded as is) or jpeg "
                            "(frames re-encoded to H.264 when recording)")
    watch.add_argument("--seed", type=int, help="random seed (same seed, same video)")
    watch.add_argument("--model", help="model name on the server (default: the server's default)")
    watch.add_argument("--fps", type=_positive, help="ask the server for this frame rate")
    watch.add_argument("--prompt-at", type=_prompt_at, action="append", default=[], metavar="SECONDS:PROMPT",
                       help="switch to PROMPT once SECONDS of video have arrived; repeatable")
    watch.add_argument("--reconnect", type=int, default=0, metavar="N",
                       help="if the connection drops, reconnect up to N times and keep recording "
                            "(default: 0)")
    _add_server_flags(watch)
    watch.set_defaults(func=_watch)

    video = subparsers.add_parser(
        "video", help="generate a clip as a job and download the MP4",
        description="Create a video job (POST /v1/videos), show its progress and download the result. "
                    + ENV_HELP, epilog=EXIT_CODES, formatter_class=formatter)
    video.add_argument("prompt", help="what to generate")
    video.add_argument("-o", "--output", required=True, help="where to write the MP4")
    video.add_argument("--seconds", type=_positive, default=4.0, help="clip length in seconds (default: 4)")
    video.add_argument("--seed", type=int, help="random seed (same seed, same clip)")
    video.add_argument("--model", help="model name on the server (default: the server's default)")
    video.add_argument("--size", help="WIDTHxHEIGHT, if the model supports more than one")
    video.add_argument("--fps", type=_positive, help="frame rate of the clip")
    video.add_argument("--timeout", type=_positive, help="give up waiting after this many seconds")
    _add_server_flags(video)
    video.set_defaults(func=_video)


def _watch(args) -> int:
    from clients.framecast_client.console import run_watch
    from clients.framecast_client.watch import WatchOptions

    options = WatchOptions(prompt=args.prompt, seconds=args.seconds, output=args.output, format=args.format,
                           seed=args.seed, model=args.model, fps=args.fps, prompt_at=args.prompt_at,
                           reconnect=max(args.reconnect, 0), url=args.url, api_key=args.api_key)
    return _guarded(run_watch, options)


def _video(args) -> int:
    from clients.framecast_client.console import run_video

    return _guarded(run_video, args.prompt, args.output, url=args.url, api_key=args.api_key,
                    seconds=args.seconds, seed=args.seed, model=args.model, size=args.size, fps=args.fps,
                    timeout=args.timeout)


def _guarded(handler, *args, **kwargs) -> int:
    """Run a handler, turning client exceptions into one-line messages with exit codes."""
    import pydantic

    from clients.framecast_client.errors import FramecastError

    try:
        return handler(*args, **kwargs)
    except FramecastError as exc:
        raise CommandError(f"{_label(exc)}: {exc.message}", exc.exit_code) from None
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CommandError(f"invalid {field}: {first['msg']}", 2) from None


def _label(exc) -> str:
    names = {"ServerUnavailable": "server unreachable", "Unauthorized": "unauthorized",
             "ServerFull": "server full", "ConnectionLost": "connection lost", "JobFailed": "job failed",
             "ProtocolError": "protocol error", "RequestRejected": "request refused",
             "InvalidAddress": "bad address"}
    return names.get(type(exc).__name__, "error")
