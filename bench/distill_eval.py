"""Teacher vs student, side by side, with the project's evaluator.

Scores (prompt accuracy and the rest) for: ground truth through the autoencoder, the
teacher at 50 steps, the student at 4 steps, the student with a diagonal 4-3-2
schedule; the speed of each per second of video, measured in this one run; the
student's streaming real-time factor; drift at minute 5 of one stream against its
first 10 s.

    python bench/distill_eval.py --teacher runs/teacher/model --student engine/models/shapes-default
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def timed(generate):
    """Wrap generate(prompt, seconds, seed) to add up wall time and video seconds."""
    stats = {"wall": 0.0, "video_s": 0.0}

    def run(prompt, seconds, seed):
        t0 = time.perf_counter()
        frames = generate(prompt, seconds, seed)
        stats["wall"] += time.perf_counter() - t0
        stats["video_s"] += len(frames) / 16.0
        return frames

    return run, stats


def ground_truth_generator(model_dir: Path, seconds_default: float):
    """Shapes clips of each standard prompt's own scene, through the model's autoencoder."""
    from distill.eval import standard_prompts, standard_scenes
    from distill.data.shapes import ShapesWorld
    from engine.autoencoder import ShapesAutoencoder
    from engine.session import to_uint8_frames

    ae = ShapesAutoencoder.load(model_dir).eval()
    world = ShapesWorld()
    scenes = dict(zip(standard_prompts(), standard_scenes()))

    @torch.no_grad()
    def generate(prompt, seconds, seed):
        frames = world.render(scenes[prompt], max(4, round(seconds * 16) // 4 * 4), start_frame=seed * 7)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        return to_uint8_frames(ae.decode(ae.encode(video)))

    return generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="teacher model dir")
    ap.add_argument("--student", default="engine/models/shapes-default", help="student model dir")
    ap.add_argument("--prompts", type=int, default=16, help="how many of the standard prompts")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    ap.add_argument("--seconds", type=float, default=1.5, help="clip length scored (the teacher's clip length)")
    ap.add_argument("--teacher-steps", type=int, default=50, help="teacher sampling steps")
    ap.add_argument("--drift-minutes", type=float, default=5.0, help="length of the drift stream (0 to skip)")
    ap.add_argument("--out", default="runs/distill_eval", help="reports, plots and sample grids go here")
    args = ap.parse_args()

    from distill.eval import evaluate_frames, evaluate_generator, standard_prompts
    from distill.teacher import TeacherGenerator
    from engine import load_model
    from engine.model import StreamModel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = list(standard_prompts())[: args.prompts]
    student = load_model(args.student)
    sampler = student.config.sampler.model_copy(update={"steps_per_chunk": (4, 3, 2)})
    diagonal = StreamModel(student.config.model_copy(update={"sampler": sampler}), student.transformer,
                           student.text_encoder, student.decoder, student.model_dir)
    teacher = TeacherGenerator(args.teacher, steps=args.teacher_steps)

    contenders = {
        "ground truth via AE": ground_truth_generator(Path(args.student), args.seconds),
        f"teacher {args.teacher_steps} steps": teacher.generate,
        "student 4 steps": student.generate_clip,
        "student diagonal 4-3-2": diagonal.generate_clip,
    }
    rows = {}
    for name, generate in contenders.items():
        run, stats = timed(generate)
        report = evaluate_generator(run, prompts, args.seeds, args.seconds, fps=16,
                                    out_dir=out / name.replace(" ", "_"))
        rows[name] = {**report["summary"], "seconds_per_video_second": stats["wall"] / max(stats["video_s"], 1e-9)}
        print(f"{name}: prompt accuracy {report['summary']['prompt_accuracy']:.3f}", flush=True)

    # Streaming real-time factor (seconds of video per wall second), first chunk excluded.
    session = student.open_session(prompts[0], seed=0)
    session.next_chunk()
    t0 = time.perf_counter()
    chunks = 24
    for _ in range(chunks):
        session.next_chunk()
    rtf = chunks * student.frames_per_chunk / student.fps / (time.perf_counter() - t0)

    drift = None
    if args.drift_minutes > 0:
        session = student.open_session(prompts[0], seed=1)
        need = int(args.drift_minutes * 60 * student.fps)
        frames = []
        while sum(len(f) for f in frames) < need:
            frames.append(session.next_chunk().frames)
        video = np.concatenate(frames)[:need]
        first = evaluate_frames(video[: int(10 * student.fps)], prompts[0], fps=student.fps)
        last = evaluate_frames(video[-int(10 * student.fps):], prompts[0], fps=student.fps)
        drift = {"prompt": prompts[0], "first_10s": {k: first[k] for k in ("prompt_accuracy", "stability",
                                                                            "background_stability", "flicker")},
                 f"minute_{args.drift_minutes:g}_last_10s": {k: last[k] for k in ("prompt_accuracy", "stability",
                                                                                   "background_stability", "flicker")}}

    t_name, s_name = f"teacher {args.teacher_steps} steps", "student 4 steps"
    speedup = rows[t_name]["seconds_per_video_second"] / rows[s_name]["seconds_per_video_second"]
    print()
    print(f"{'':26} {'prompt acc':>10} {'colour':>7} {'shape':>7} {'motion':>7} {'smooth':>7} {'flicker':>8} "
          f"{'s/video s':>10}")
    for name, r in rows.items():
        print(f"{name:26} {r['prompt_accuracy']:10.3f} {r['colour_accuracy']:7.3f} {r['shape_accuracy']:7.3f} "
              f"{r['motion_accuracy']:7.3f} {r['smoothness']:7.3f} {r['flicker']:8.4f} "
              f"{r['seconds_per_video_second']:10.3f}")
    ratio = rows[s_name]["prompt_accuracy"] / max(rows[t_name]["prompt_accuracy"], 1e-9)
    print(f"student / teacher prompt accuracy: {ratio:.2f}; speed student vs teacher per second of video: "
          f"{speedup:.1f}x; streaming real-time factor {rtf:.2f} at {student.fps:g} fps, "
          f"{student.width}x{student.height}, torch threads {torch.get_num_threads()}")
    if drift:
        print(f"drift ({drift['prompt']!r}): first 10 s {drift['first_10s']}, last 10 s of minute "
              f"{args.drift_minutes:g}: {drift[f'minute_{args.drift_minutes:g}_last_10s']}")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "speedup": speedup, "rtf": rtf, "drift": drift,
                                                  "accuracy_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
