"""Which shapes a model draws so that the evaluator sees them: asked shape against found shape.

Prompt accuracy lumps the five shapes together; this asks for each shape on its own, one object
starting in the middle of a plain background (4 object colours, each on another background;
medium and large), still or all moving one way (`--motion`),
and counts what the evaluator's shape classifier (distill/eval/judge.py) finds in each clip:
one row a shape asked, one column a shape found (`none`: no object of the asked colour, or a
blob that is no shape). Ground truth of the same scenes through the model's autoencoder is the
ceiling; a student streams as it serves; a teacher samples 50 guided steps.

    python bench/shape_confusion.py --student engine/models/shapes-default --threads 2
    python bench/shape_confusion.py --motion right --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PAIRS = (("red", "white"), ("yellow", "blue"), ("green", "black"), ("cyan", "gray"))


def still_scenes(sizes: tuple[str, ...] = ("medium", "large"), motion: str = "stop") -> list[tuple[str, object]]:
    """(canonical caption, scene) of one object per shape x colour pair x size, starting in the
    middle, still (or moving as `motion` says, one of vocab.MOTIONS)."""
    from engine.shapes import vocab
    from engine.shapes.captions import scene_caption
    from engine.shapes.scene import Background, ObjectSpec, Scene

    out = []
    for shape in vocab.SHAPES:
        for colour, background in PAIRS:
            for size in sizes:
                scene = Scene((ObjectSpec(colour, shape, size, motion, x=0.5, y=0.5),), Background(background))
                out.append((scene_caption(scene), scene))
    return out


def confusion(generate, scenes, seeds: int, seconds: float, fps: float) -> dict:
    """{"matrix": {asked: {found: clips}}, "accuracy": {asked: (mean, interval)}, "overall": ...}."""
    from distill.eval import evaluate_frames
    from distill.eval.report import bootstrap_interval
    from engine.shapes import vocab

    columns = (*vocab.SHAPES, "none")
    matrix = {s: dict.fromkeys(columns, 0) for s in vocab.SHAPES}
    hits: dict[str, list[float]] = {s: [] for s in vocab.SHAPES}
    for prompt, scene in scenes:
        asked = scene.objects[0]
        for seed in range(seeds):
            result = evaluate_frames(np.asarray(generate(prompt, seconds, seed)), prompt, fps=fps)
            found = [o["found"] for o in result["objects"] if o["found"] and o["found"]["colour"] == asked.colour]
            shape = (found[0]["shape"] if found else None) or "none"
            matrix[asked.shape][shape] += 1
            hits[asked.shape].append(float(shape == asked.shape))
    every = [h for v in hits.values() for h in v]
    return {"matrix": matrix,
            "accuracy": {s: (float(np.mean(v)), bootstrap_interval(v)) for s, v in hits.items()},
            "overall": (float(np.mean(every)), bootstrap_interval(every))}


def print_table(name: str, result: dict) -> None:
    columns = list(next(iter(result["matrix"].values())))
    print(f"{name}: shape accuracy {result['overall'][0]:.3f} "
          f"[{result['overall'][1][0]:.3f}, {result['overall'][1][1]:.3f}]")
    head = "asked / found"
    print(f"  {head:14s}" + "".join(f"{c:>9s}" for c in columns) + "   accuracy [95 % interval]")
    for asked, row in result["matrix"].items():
        mean, (lo, hi) = result["accuracy"][asked]
        print(f"  {asked:14s}" + "".join(f"{row[c]:9d}" for c in columns) + f"   {mean:.3f} [{lo:.3f}, {hi:.3f}]")


def main() -> None:
    from engine.shapes import vocab

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="engine/models/shapes-default",
                    help="student model dir (its autoencoder also decodes the ground truth)")
    ap.add_argument("--teacher", default=None, help="teacher model dir (50 guided steps)")
    ap.add_argument("--shared-noise", action="store_true",
                    help="the teacher draws every latent frame from one noise (as distill_eval's --shared-noise)")
    ap.add_argument("--no-truth", action="store_true", help="skip the ground truth through the autoencoder")
    ap.add_argument("--motion", default="stop", choices=vocab.MOTIONS,
                    help="every object's motion, a word of the Shapes world's vocabulary (default: still)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the matrices here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from engine import load_model

    student = load_model(args.student)
    scenes = still_scenes(motion=args.motion)
    from distill_eval import ground_truth_generator

    contenders = {} if args.no_truth else {"ground truth via AE": ground_truth_generator(Path(args.student),
                                                                                       dict(scenes))}
    contenders["student"] = student.generate_clip
    if args.teacher:
        from distill.teacher import TeacherGenerator

        contenders["teacher"] = TeacherGenerator(args.teacher, steps=50, shared_noise=args.shared_noise).generate
    print(f"{len(scenes)} one-object prompts, motion {args.motion} (5 shapes x {len(PAIRS)} colours x 2 sizes) x "
          f"{args.seeds} seeds, {args.seconds:g} s; clips by the shape asked (rows) and found (columns)")
    out = {}
    for name, generate in contenders.items():
        out[name] = confusion(generate, scenes, args.seeds, args.seconds, student.fps)
        print_table(name, out[name])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
