"""Shapes data generation speed on one core: clips per second of ShapesWorld.sample
(scene, captions, pixels) and of ShapesDataset items (plus the float tensor), and
the evaluator's frames per second.

    .venv/bin/python bench/shapes_speed.py
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"  # one core: the figure a single DataLoader worker gets

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from distill.data.shapes import ShapesConfig, ShapesDataset, ShapesWorld  # noqa: E402
from distill.eval import evaluate_frames  # noqa: E402


def rate(fn, seconds: float) -> float:
    """Calls per second of fn(i), run for about `seconds`."""
    fn(0)  # warm up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn(count)
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="time spent on each measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(f"one core, {args.seconds:g} s per row")
    for size, frames in ((128, 16), (128, 48), (64, 16), (256, 16)):
        world = ShapesWorld(ShapesConfig(height=size, width=size))
        clips = rate(lambda i: world.sample(i, frames), args.seconds)
        dataset = ShapesDataset(ShapesConfig(height=size, width=size), num_frames=frames)
        items = rate(dataset.item, args.seconds)
        print(f"{size}x{size}x{frames:<3d} sample: {clips:7.1f} clips/s ({clips * frames:8.0f} frames/s)   "
              f"dataset item: {items:7.1f} clips/s")
    world = ShapesWorld(ShapesConfig(height=128, width=128))
    clip = world.sample(0, 64)
    per_clip = rate(lambda i: evaluate_frames(clip.frames, clip.captions[0], 16), args.seconds)
    print(f"evaluator: {per_clip * 64:.0f} frames/s at 128x128 ({per_clip:.1f} clips of 64 frames/s)")


if __name__ == "__main__":
    main()
