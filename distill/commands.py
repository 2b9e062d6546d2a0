"""`framecast` subcommands of the distill package: `eval` (the procedural Shapes
evaluator). Registration stays light; numpy, PyAV, scipy and torch are imported in
the handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval", help="judge a video, or a model's samples, against prompts with the procedural Shapes evaluator",
        description="Judge a video file against its prompt (--video, --prompt), or sample a model over a "
                    "prompt set and seeds and judge every clip (--model). Prints the mean metrics; --out "
                    "writes report.json, metrics.png, drift.png (long streams), grid.png and samples.mp4/gif.")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file to judge (with --prompt)")
    source.add_argument("--model", help="model name or directory to sample from (engine.load_model)")
    ev.add_argument("--prompt", help="the prompt the video should show (with --video)")
    ev.add_argument("--switch", action="append", default=[], metavar="SECONDS:PROMPT",
                    help="with --video: the prompt changed to PROMPT at SECONDS (repeatable)")
    ev.add_argument("--prompts", default="standard",
                    help="with --model: a file of prompts (one per line, or a JSON list), or a named set: "
                         "'standard' (48 canonical captions) or 'heldout' (44 hand-written prompts)")
    ev.add_argument("--limit", type=int, default=None, help="with --model: use only the first N prompts")
    ev.add_argument("--seeds", type=int, default=1, help="with --model: seeds 0..N-1 per prompt")
    ev.add_argument("--seconds", type=float, default=4.0, help="with --model: seconds generated per sample")
    ev.add_argument("--device", default="cpu", help="with --model: torch device to run the model on")
    ev.add_argument("--out", default=None, help="directory for the report files (default: print only)")
    ev.add_argument("--reference-seconds", type=float, default=None,
                    help="drift: length of the first window later windows are compared with (default 10)")
    ev.add_argument("--window-seconds", type=float, default=None, help="drift: length of each later window (default 10)")
    ev.add_argument("--window-every-seconds", type=float, default=None,
                    help="drift: a window starts at every multiple of this (default 60: minutes 1, 2, ...)")
    ev.add_argument("--json", action="store_true", help="print the whole JSON report instead of a table")
    ev.set_defaults(func=run_eval)


def _config(args: argparse.Namespace):
    from dataclasses import replace

    from distill.eval.config import EvalConfig

    overrides = {k: getattr(args, k) for k in ("reference_seconds", "window_seconds", "window_every_seconds")
                 if getattr(args, k) is not None}
    return replace(EvalConfig(), **overrides)


def _switches(items: list[str]) -> list[tuple[float, str]]:
    from framecast import CommandError

    out = []
    for item in items:
        at, sep, prompt = item.partition(":")
        try:
            seconds = float(at)
        except ValueError:
            sep = ""
        if not sep or not prompt.strip():
            raise CommandError(f"--switch takes SECONDS:PROMPT, e.g. '2:a blue square moving up', got {item!r}")
        out.append((seconds, prompt.strip()))
    return out


def _read_prompts(spec: str, limit: int | None) -> list[str]:
    from framecast import CommandError
    from distill.eval.prompts import PROMPT_SETS

    if spec in PROMPT_SETS:
        prompts = PROMPT_SETS[spec]()
    else:
        path = Path(spec)
        if not path.is_file():
            raise CommandError(f"--prompts: no such file {spec!r} (or name a set: {', '.join(PROMPT_SETS)})")
        text = path.read_text()
        try:
            prompts = [str(p) for p in json.loads(text)] if text.lstrip().startswith("[") else \
                [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        except json.JSONDecodeError as exc:
            raise CommandError(f"--prompts: {spec} is not a JSON list: {exc}") from exc
    prompts = prompts[:limit] if limit else prompts
    if not prompts:
        raise CommandError("--prompts: no prompts")
    return prompts


def run_eval(args: argparse.Namespace) -> int:
    from framecast import CommandError

    config = _config(args)
    if args.video:
        if not args.prompt:
            raise CommandError("--video needs --prompt")
        if not Path(args.video).is_file():
            raise CommandError(f"no such video file: {args.video}")
        report = _eval_video(args, config)
    else:
        report = _eval_model(args, config)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_summary(report)
    if args.out:
        print(f"wrote {args.out}/report.json")
    return 0


def _eval_video(args: argparse.Namespace, config) -> dict:
    import numpy as np

    from framecast import CommandError
    from distill.data.video_folder import VideoDecodeError
    from distill.eval.evaluate import METRICS, evaluate_frames
    from distill.eval.media import read_video
    from distill.eval.report import GRID_COLUMNS, PREVIEW_SECONDS, write_report

    try:
        frames, fps = read_video(args.video)
    except VideoDecodeError as exc:
        raise CommandError(f"cannot read {args.video}: {exc}") from exc
    try:
        metrics = evaluate_frames(frames, args.prompt, fps, switches=_switches(args.switch), config=config)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    report = {"summary": {m: metrics[m] for m in METRICS}, "video": str(args.video), "samples": [metrics]}
    if "windows" in metrics:
        report["windows"], report["drift"] = metrics["windows"], metrics["drift"]
    if args.out:
        picks = np.linspace(0, len(frames) - 1, GRID_COLUMNS).round().astype(int)
        write_report(report, [(args.prompt, frames[picks], frames[: int(PREVIEW_SECONDS * fps)])], Path(args.out), fps)
    return report


def _eval_model(args: argparse.Namespace, config) -> dict:
    from framecast import CommandError
    from distill.eval.report import evaluate_generator

    try:
        from engine import EngineError, load_model
    except ImportError as exc:
        raise CommandError(f"--model needs the engine package: {exc}") from exc
    prompts = _read_prompts(args.prompts, args.limit)
    try:
        model = load_model(args.model, device=args.device)
        return evaluate_generator(model.generate_clip, prompts, args.seeds, args.seconds, out_dir=args.out,
                                  fps=model.fps, config=config)
    except EngineError as exc:
        raise CommandError(str(exc)) from exc


def _print_summary(report: dict) -> None:
    intervals = report.get("intervals") or {}
    for name, value in report["summary"].items():
        shown = "n/a" if value is None else f"{value:.3f}"
        if (interval := intervals.get(name)) is not None:
            shown += f"  [{interval[0]:.3f}, {interval[1]:.3f}]"
        print(f"{name:22s} {shown}")
    for window in report.get("windows") or []:
        print(f"window {window['start_s']:7.1f}-{window['end_s']:7.1f} s  prompt_accuracy "
              f"{window['prompt_accuracy'] if window['prompt_accuracy'] is None else round(window['prompt_accuracy'], 3)}")
