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
    register_convert(sub)


def run_demo(args: argparse.Namespace) -> int:
    from framecast import CommandError

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


# --- framecast convert ------------------------------------------------------------------------

def register_convert(sub: argparse._SubParsersAction) -> None:
    # No import of engine.checkpoints here: it loads torch, and registration runs on every
    # `framecast` call. The handler checks --format against the format table.
    convert = sub.add_parser(
        "convert", help="turn a released Wan checkpoint (Wan2.1 diffusers, or a streaming student) into a model "
                        "directory that `framecast serve --model DIR` loads; see docs/checkpoints.md")
    convert.add_argument("--format", required=True, metavar="FORMAT",
                         help="what --input is: wan-diffusers or a student layout (self-forcing, causvid, "
                              "reward-forcing, longlive, rolling-forcing); see docs/checkpoints.md")
    convert.add_argument("--input", required=True,
                         help="the student's weights file (.pt/.pth/.safetensors), or the Wan2.1 diffusers "
                              "folder for --format wan-diffusers")
    convert.add_argument("--base", default=None,
                         help="the Wan2.1-T2V diffusers folder (transformer config, umT5 text encoder, tokenizer, "
                              "VAE); required for the students")
    convert.add_argument("--lora", default=None, help="LoRA weights merged into the student (LongLive's lora.pt)")
    convert.add_argument("--lora-alpha", type=float, default=None,
                         help="LoRA alpha (scale = alpha / rank); default: the format's published value")
    convert.add_argument("--weights", default=None,
                         help="which state dict inside the file, e.g. generator_ema or generator "
                              "(default: the one the authors' inference uses)")
    convert.add_argument("--name", default=None, help="model name (default: the format's)")
    convert.add_argument("--size", default="832x480", help="frame size WIDTHxHEIGHT, multiples of 16")
    convert.add_argument("--timesteps", default=None,
                         help="override the published step schedule, e.g. 1000,750,500,250")
    convert.add_argument("--shift", type=float, default=None, help="override the published timestep shift")
    convert.add_argument("--taehv", default=None,
                         help="decode with the tiny TAEHV decoder from this weights file (taew2_1.pth or "
                              ".safetensors) instead of the Wan VAE: much faster, lower quality")
    convert.add_argument("--force", action="store_true", help="write into a non-empty output directory")
    convert.add_argument("-o", "--output", required=True, help="the model directory to write")
    convert.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from framecast import CommandError

    from .checkpoints.formats import ALL_FORMATS

    if args.format not in ALL_FORMATS:
        raise CommandError(f"unknown --format {args.format!r}; known: {', '.join(ALL_FORMATS)}")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CommandError(f"--size takes WIDTHxHEIGHT, e.g. 832x480, got {args.size!r}") from None
    timesteps = None
    if args.timesteps:
        try:
            timesteps = tuple(float(v) for v in args.timesteps.split(","))
        except ValueError:
            raise CommandError(f"--timesteps takes numbers separated by commas, got {args.timesteps!r}") from None

    from engine import EngineError
    from engine.checkpoints import ConvertOptions, convert, describe

    options = ConvertOptions(
        format=args.format, input=Path(args.input), output=Path(args.output),
        base=Path(args.base) if args.base else None, lora=Path(args.lora) if args.lora else None,
        lora_alpha=args.lora_alpha, weights=args.weights, name=args.name, size=(width, height),
        timesteps=timesteps, shift=args.shift, taehv=Path(args.taehv) if args.taehv else None, force=args.force)
    try:
        config = convert(options)
    except EngineError as exc:
        raise CommandError(str(exc).replace("\n", " ")) from exc
    except OSError as exc:  # an unreadable input, an unwritable output directory, a full disk
        raise CommandError(f"convert failed: {exc}") from exc
    info = describe(config)
    print(f"wrote {args.output}: {info['name']} ({info['parameters'] / 1e9:.2f} B parameters), "
          f"{info['width']}x{info['height']} at {info['fps']:g} fps, {info['attention']['policy']} attention, "
          f"{info['steps_per_chunk'][0]} steps per {info['chunk_latent_frames']}-frame chunk, "
          f"decoder {info['decoder']}")
    return 0
