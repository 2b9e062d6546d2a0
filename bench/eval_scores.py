"""Evaluator validity figures: mean scores of Shapes clips judged as they are, through
what a small autoencoder does to them, under wrong prompts, and as noise and blank
screens; "chance" is what each clip's true contents score against the wrong prompt
(a perfect detector's score), which the shuffled row should match.

    .venv/bin/python bench/eval_scores.py --clips 64 --frames 16 --size 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.shapes.captions import parse_prompt
from distill.data.shapes import ShapesConfig, ShapesWorld
from distill.eval import evaluate_frames
from distill.eval.judge import TrackSummary, prompt_scores
from distill.eval.media import read_video, write_mp4
from distill.eval.perturb import autoencoder_like, blank_video, noise_video

COLUMNS = ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "size_accuracy",
           "background_accuracy", "count_accuracy", "all_correct", "smoothness", "flicker", "background_stability")


def chance(clip, prompt: str) -> dict:
    found = [TrackSummary(o.colour, 1.0, o.shape, o.motion, o.size, None) for o in clip.scene.objects]
    return prompt_scores(parse_prompt(prompt), found, np.array([clip.scene.background.colour] * len(clip.frames)))


def through_mp4(frames: np.ndarray, fps: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        write_mp4(path, frames, fps)
        return read_video(path)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="Shapes clips per condition")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--size", type=int, default=128, help="frame height and width")
    parser.add_argument("--downsample", type=int, default=4, help="autoencoder-like condition: down/up-sampling factor")
    parser.add_argument("--seed", type=int, default=10_000, help="first clip seed")
    args = parser.parse_args()

    world = ShapesWorld(ShapesConfig(height=args.size, width=args.size, fps=16))
    clips = [world.sample(args.seed + i, args.frames) for i in range(args.clips)]
    n, size = args.frames, args.size
    conditions = {
        "ground truth": lambda i, c: (c.frames, c.captions[0]),
        "paraphrased prompt": lambda i, c: (c.frames, c.caption),
        "mild blur (sigma 1)": lambda i, c: (autoencoder_like(c.frames, 1.0, (0, 0, 0), 1.0, 1), c.captions[0]),
        f"blur+shift+{args.downsample}x resample": lambda i, c: (
            autoencoder_like(c.frames, downsample=args.downsample), c.captions[0]),
        "H.264 round trip": lambda i, c: (through_mp4(c.frames, 16), c.captions[0]),
        "shuffled prompts": lambda i, c: (c.frames, clips[(i + 7) % len(clips)].captions[0]),
        "noise": lambda i, c: (noise_video(n, size, size, seed=i), c.captions[0]),
        "blank (black)": lambda i, c: (blank_video(n, size, size), c.captions[0]),
    }
    rows = {}
    for name, make in conditions.items():
        started = time.perf_counter()
        results = [evaluate_frames(*make(i, c), fps=16) for i, c in enumerate(clips)]
        rows[name] = {k: np.mean([r[k] for r in results if r[k] is not None]) for k in COLUMNS}
        rows[name]["s/clip"] = (time.perf_counter() - started) / len(clips)
    results = [chance(c, clips[(i + 7) % len(clips)].captions[0]) for i, c in enumerate(clips)]
    rows["chance (true contents, shuffled)"] = {k: np.mean([r[k] for r in results if r.get(k) is not None])
                                                if any(r.get(k) is not None for r in results) else float("nan")
                                                for k in COLUMNS}
    rows["chance (true contents, shuffled)"]["s/clip"] = float("nan")

    short = {"prompt_accuracy": "prompt", "colour_accuracy": "colour", "shape_accuracy": "shape",
             "motion_accuracy": "motion", "size_accuracy": "size", "background_accuracy": "bg",
             "count_accuracy": "count", "all_correct": "all", "smoothness": "smooth", "flicker": "flicker",
             "background_stability": "bg-stab"}
    print(f"Shapes evaluator, {args.clips} clips of {args.frames} frames at {args.size}x{args.size}, 16 fps")
    header = f"{'condition':34s}" + "".join(f"{short[k]:>8s}" for k in COLUMNS) + f"{'s/clip':>8s}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(f"{name:34s}" + "".join(f"{row[k]:8.3f}" for k in COLUMNS) + f"{row['s/clip']:8.3f}")


if __name__ == "__main__":
    main()
