"""`framecast demo`: stream a prompt through the engine, no server, and save a frame grid.
Registration stays light: torch is imported inside the handler."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="generate a few seconds from a prompt with the engine alone; save a PNG grid")
    demo.add_argument("prompt", help="what to generate, e.g. 'a red ball bouncing on a blue background'")
    demo.add_argument("--model", default=None, help="model name or directory (default: the embedded model)")
    demo.add_argument("--seconds", type=float, default=3.0, help="seconds of video to generate")
    demo.add_argument("--seed", type=int, default=0, help="random seed (same seed, same frames)")
    demo.add_argument("--switch", metavar="SECONDS:PROMPT", default=None,
                      help="switch to another prompt at this stream time, e.g. '2:a blue square moving up'")
    demo.add_argument("-o", "--output", default="demo.png", help="PNG grid to write (one row per chunk)")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from clients.cli import CommandError

    import numpy as np
    from PIL import Image

    from engine import EngineError, load_model

    switch_at, switch_prompt = None, None
    if args.switch:
        at, sep, prompt = args.switch.partition(":")
        try:
            switch_at = float(at)
        except ValueError:
            sep = ""
        if not sep or not prompt.strip():
            raise CommandError("--switch takes SECONDS:PROMPT, e.g. '2:a blue square moving up'")
        switch_prompt = prompt
    if not args.seconds > 0:
        raise CommandError("--seconds must be positive")
    try:
        model = load_model(args.model)
        session = model.open_session(args.prompt, seed=args.seed)
        rows, start = [], time.perf_counter()
        while session.chunk_index * model.frames_per_chunk < args.seconds * model.fps:
            if switch_at is not None and session.chunk_index * model.frames_per_chunk >= switch_at * model.fps:
                session.update_prompt(switch_prompt)
                switch_at = None
            chunk = session.next_chunk()
            rows.append(np.concatenate(list(chunk.frames), axis=1))  # [H, T*W, 3]
        elapsed = time.perf_counter() - start
    except EngineError as exc:
        raise CommandError(str(exc)) from exc
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.output)
    frames = session.chunk_index * model.frames_per_chunk
    print(f"{model.name}: {frames} frames of {model.width}x{model.height} in {elapsed:.2f} s "
          f"({frames / elapsed:.1f} fps, real-time factor {frames / model.fps / elapsed:.2f}); wrote {args.output}")
    return 0
