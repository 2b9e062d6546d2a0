"""Where the teacher loses a clip: real clips noised to a level s, then sampled back.

Standard-set scenes are rendered by the Shapes world, encoded by the teacher's autoencoder,
noised to s and sampled back from s with the teacher's guided Euler schedule (SDEdit); the
evaluator scores what comes back against the scene's prompt. A teacher that keeps shapes
from low levels but not from high ones knows how to refine an object and not how to lay one
out: the levers are then the ones that teach structure (steps, width, data), not the low
noise levels. Also prints the one-step x0 error at each level.

    python bench/teacher_noise_levels.py --teacher runs/v2/teacher/model --prompts 12
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

METRICS = ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="teacher model dir")
    ap.add_argument("--prompts", type=int, default=12, help="first N standard prompts (their scenes)")
    ap.add_argument("--levels", default="0.3,0.5,0.7,0.9,1.0", help="noise levels s to sample back from")
    ap.add_argument("--steps", type=int, default=50, help="the full schedule's steps (as the teacher samples)")
    ap.add_argument("--guidance", type=float, default=None, help="default: the teacher's")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from distill.data.shapes import ShapesWorld
    from distill.eval import evaluate_frames, standard_prompts, standard_scenes
    from distill.eval.report import bootstrap_interval
    from distill.teacher import TeacherGenerator, sample_teacher
    from engine.session import to_uint8_frames

    teacher = TeacherGenerator(args.teacher, steps=args.steps, guidance=args.guidance)
    frames = teacher.latent_frames * teacher.config.latent.temporal_compression
    prompts, scenes = standard_prompts()[: args.prompts], standard_scenes()[: args.prompts]
    world = ShapesWorld()
    with torch.no_grad():
        video = torch.stack([torch.from_numpy(world.render(s, frames)).permute(3, 0, 1, 2) for s in scenes])
        x0 = teacher.autoencoder.encode(video.float() / 127.5 - 1)  # [N, C, F, h, w]
        feats = teacher.text_encoder.encode(prompts)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        attention = teacher.transformer.full_attention(x0.shape[2])
        cond = teacher.transformer.embed_text(feats)

        def score(latents: torch.Tensor) -> dict:
            per_clip = [evaluate_frames(to_uint8_frames(teacher.autoencoder.decode(latents[i:i + 1])), p,
                                        fps=teacher.fps) for i, p in enumerate(prompts)]
            return {m: [c[m] for c in per_clip if c[m] is not None] for m in METRICS}

        rows = {"clean (autoencoder only)": (score(x0), None)}
        for level in (float(s) for s in args.levels.split(",")):
            xs = (1 - level) * x0 + level * noise
            v = teacher.transformer.denoise(xs, torch.full((len(xs),), level * 1000.0), cond, attention)
            mse = float(((xs - level * v - x0) ** 2).mean())
            back = sample_teacher(teacher.transformer, teacher.config, feats, x0.shape[2], steps=args.steps,
                                  guidance=args.guidance, start=(xs, level))
            rows[f"from s = {level:g}"] = (score(back), mse)
            print(f"s = {level:g} done", flush=True)

    print(f"\n{len(prompts)} standard scenes, noised to s and sampled back ({args.steps}-step schedule); "
          "mean [95 % bootstrap interval]")
    print(f"{'':26s}" + "".join(f"{m.replace('_accuracy', ''):>22s}" for m in METRICS) + "   one-step x0 MSE")
    for name, (scores, mse) in rows.items():
        cells = []
        for m in METRICS:
            lo, hi = bootstrap_interval(scores[m]) or (float("nan"), float("nan"))
            cells.append(f"{np.mean(scores[m]):.3f} [{lo:.2f}, {hi:.2f}]" if scores[m] else "-")
        print(f"{name:26s}" + "".join(f"{c:>22s}" for c in cells) + (f"   {mse:.4f}" if mse is not None else ""))


if __name__ == "__main__":
    main()
