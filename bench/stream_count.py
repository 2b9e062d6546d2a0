"""Does a model keep drawing as many objects as asked as a stream goes on?

The evaluator scores 1.5 s clips (two chunks of the default model); DMD2's head judges only a
student's first chunk. This streams each prompt for `--chunks` chunks per seed and reports the
evaluator's count on the first 2, 3, ... chunks: a model that adds an object later is caught
at the length where it does.

    python bench/stream_count.py --student engine/models/shapes-default runs/v9r/model --threads 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

# v9's count failures on the standard set (one object asked; striped and gradient backgrounds)
PROMPTS = (
    "a medium red star bounces on a gray striped background",
    "a purple triangle grows on a white striped background",
    "a medium red diamond moves down and to the left on a white striped background",
    "a medium pink star moves down and to the left on a black striped background",
    "a large cyan star moves up and to the left on an orange gradient background",
)


def stream_counts(model, prompt: str, seeds: int, chunks: int) -> np.ndarray:
    """Count right (1/0) per seed and clip length in chunks 2..chunks -> [seeds, chunks - 1]."""
    from distill.eval import evaluate_frames

    out = np.zeros((seeds, chunks - 1))
    for seed in range(seeds):
        session = model.open_session(prompt, seed=seed)
        video = np.concatenate([session.next_chunk().frames for _ in range(chunks)])
        for j, n in enumerate(range(2, chunks + 1)):
            out[seed, j] = evaluate_frames(video[: n * model.frames_per_chunk], prompt, fps=model.fps)["count_accuracy"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", nargs="+", default=["engine/models/shapes-default"], help="model dirs")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=3, help="longest clip, in chunks (>= 2)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.chunks < 2 or args.seeds < 1:
        ap.error("--chunks is 2 or more and --seeds 1 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    from engine import load_model

    for path in args.student:
        model = load_model(path)
        seconds = [n * model.frames_per_chunk / model.fps for n in range(2, args.chunks + 1)]
        print(f"{path}: count right per prompt ({args.seeds} seeds) in clips of " +
              ", ".join(f"{s:g} s" for s in seconds))
        total = np.zeros(args.chunks - 1)
        for prompt in PROMPTS:
            right = stream_counts(model, prompt, args.seeds, args.chunks).sum(0)
            total += right
            print("  " + "  ".join(f"{int(r)}/{args.seeds}" for r in right) + f"  {prompt}")
        print("  " + "  ".join(f"{int(t)}/{args.seeds * len(PROMPTS)}" for t in total) + "  all")


if __name__ == "__main__":
    main()
