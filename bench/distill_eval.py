"""Teacher vs student, side by side, with the project's evaluator, on a named prompt set.

Scores (every accuracy with its 95 % bootstrap interval over prompts x seeds) for any of:
ground truth through the autoencoder (standard set only: its scenes are known), the
teacher at 50 guided steps, the student with its own step schedule, the student with the
other one (plain: 4 steps and a context refresh a chunk; diagonal: 4, 3, then 2 steps, the
context from the last pass); the speed of each per second of video, measured in this one run; the
student's streaming real-time factor; drift: prompt accuracy in the last 10 s of minute
N of a stream against its first 10 s, over several prompts.

    python bench/distill_eval.py --teacher runs/teacher/model --set heldout --seeds 2
    python bench/distill_eval.py --teacher runs/teacher/model --only student --drift-prompts 8
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

SHOWN = ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "background_accuracy",
         "contrast_accuracy", "count_accuracy", "all_correct", "smoothness")


def timed(generate, fps: float):
    """Wrap generate(prompt, seconds, seed) to add up wall time and video seconds."""
    stats = {"wall": 0.0, "video_s": 0.0}

    def run(prompt, seconds, seed):
        t0 = time.perf_counter()
        frames = generate(prompt, seconds, seed)
        stats["wall"] += time.perf_counter() - t0
        stats["video_s"] += len(frames) / fps
        return frames

    return run, stats


def ground_truth_generator(model_dir: Path, scenes: dict | None = None):
    """Shapes clips of each prompt's own scene (`scenes`: prompt -> Scene; default the standard
    set's), through the model's autoencoder."""
    from distill.data.shapes import ShapesWorld
    from distill.eval import standard_prompts, standard_scenes
    from engine.autoencoder import ShapesAutoencoder
    from engine.session import to_uint8_frames

    ae = ShapesAutoencoder.load(model_dir).eval()
    world = ShapesWorld()
    scenes = scenes if scenes is not None else dict(zip(standard_prompts(), standard_scenes()))

    @torch.no_grad()
    def generate(prompt, seconds, seed):
        frames = world.render(scenes[prompt], max(4, round(seconds * 16) // 4 * 4), start_frame=seed * 7)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        return to_uint8_frames(ae.decode(ae.encode(video)))

    return generate


def drift(model, prompts: list[str], minutes: float, seeds: tuple[int, ...] = (0,)) -> dict:
    """Prompt accuracy of the first 10 s and of the last 10 s of minute `minutes`, per prompt
    and seed (prompt i streams with seed i + 1000 k for each k in `seeds`)."""
    from distill.eval import evaluate_frames
    from distill.eval.report import bootstrap_interval

    need, ten = int(minutes * 60 * model.fps), int(10 * model.fps)
    first, last, streams = [], [], [(i, k, prompt) for k in seeds for i, prompt in enumerate(prompts)]
    for n, (i, k, prompt) in enumerate(streams):
        session = model.open_session(prompt, seed=i + 1000 * k)
        head, frames, made = None, None, 0
        while made < need:
            chunk = session.next_chunk().frames
            made += len(chunk)
            if head is None or len(head) < ten:
                head = chunk if head is None else np.concatenate([head, chunk])
            frames = chunk if frames is None else np.concatenate([frames, chunk])[-ten:]  # only the tail is kept
        first.append(evaluate_frames(head[:ten], prompt, fps=model.fps)["prompt_accuracy"])
        last.append(evaluate_frames(frames[-ten:], prompt, fps=model.fps)["prompt_accuracy"])
        print(f"drift {n + 1}/{len(streams)}: {first[-1]:.3f} -> {last[-1]:.3f}  {prompt!r} (seed {i + 1000 * k})",
              flush=True)
    return {"minutes": minutes, "prompts": prompts, "seeds": list(seeds), "first_10s": float(np.mean(first)),
            "last_10s": float(np.mean(last)), "first_10s_interval": bootstrap_interval(first),
            "last_10s_interval": bootstrap_interval(last), "per_prompt": list(zip(first, last))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="teacher model dir (needed for the teacher row)")
    ap.add_argument("--student", default="engine/models/shapes-default", help="student model dir")
    ap.add_argument("--set", default="standard", help="named prompt set: standard or heldout")
    ap.add_argument("--prompts", type=int, default=None, help="only the first N prompts of the set")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    ap.add_argument("--seconds", type=float, default=1.5, help="clip length scored (the teacher's clip length)")
    ap.add_argument("--only", default="gt,teacher,student,other",
                    help="comma-separated rows: gt (standard set only), teacher, student (its own step "
                         "schedule), other (the student with the other schedule: plain or diagonal)")
    ap.add_argument("--teacher-steps", type=int, default=50, help="teacher sampling steps")
    ap.add_argument("--shared-noise", action="store_true",
                    help="the teacher's latent frames start from one noise (a frames-only teacher: one object drawn in every frame)")
    ap.add_argument("--guidance", type=float, default=None, help="teacher guidance (default: its config's)")
    ap.add_argument("--drift-prompts", type=int, default=0, help="prompts streamed for the drift figure (0: none)")
    ap.add_argument("--drift-minutes", type=float, default=5.0, help="how long each drift stream runs")
    ap.add_argument("--drift-seeds", type=int, nargs="+", default=[0],
                    help="drift streams per prompt: prompt i streams with seed i + 1000 k for each k given")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rewrite", action="store_true",
                    help="the models are given each prompt's canonical caption (engine.shapes.captions."
                         "canonical_prompt: the canonical words, the unsaid filled in) and scored against "
                         "the prompt as written; for teachers trained with captions: canonical")
    ap.add_argument("--out", default="runs/distill_eval", help="reports, plots and sample grids go here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from distill.eval import PROMPT_SETS, evaluate_generator
    from engine import load_model
    from engine.model import StreamModel

    out = Path(args.out) / args.set
    out.mkdir(parents=True, exist_ok=True)
    prompts = PROMPT_SETS[args.set]()[: args.prompts]
    rows_wanted = args.only.split(",")
    if unknown := set(rows_wanted) - {"gt", "teacher", "student", "other", "none"}:
        ap.error(f"--only: unknown rows {sorted(unknown)}")
    student = load_model(args.student)
    contenders = {}
    if "gt" in rows_wanted and args.set == "standard":
        contenders["ground truth via AE"] = ground_truth_generator(Path(args.student))
    if "teacher" in rows_wanted and args.teacher:
        from distill.teacher import TeacherGenerator

        contenders[f"teacher {args.teacher_steps} steps"] = TeacherGenerator(
            args.teacher, steps=args.teacher_steps, guidance=args.guidance, shared_noise=args.shared_noise).generate
    from distill.student import DIAGONAL_SCHEDULE, PLAIN_SCHEDULE

    def schedule_name(sampler) -> str:
        steps = "-".join(map(str, sampler.steps_per_chunk))
        return f"{steps} steps" + (", refresh" if sampler.refresh_context else "")

    if "student" in rows_wanted:
        contenders[f"student {schedule_name(student.config.sampler)}"] = student.generate_clip
    if "other" in rows_wanted:
        diagonal = tuple(student.config.sampler.steps_per_chunk) == DIAGONAL_SCHEDULE["steps_per_chunk"]
        sampler = student.config.sampler.model_copy(update=PLAIN_SCHEDULE if diagonal else DIAGONAL_SCHEDULE)
        other = StreamModel(student.config.model_copy(update={"sampler": sampler}), student.transformer,
                            student.text_encoder, student.decoder, student.model_dir)
        contenders[f"student {schedule_name(sampler)}"] = other.generate_clip

    rows = {}
    if args.rewrite:
        from engine.shapes.captions import canonical_prompt

        def rewritten(generate):
            return lambda prompt, seconds, seed: generate(canonical_prompt(prompt) or prompt, seconds, seed)

        contenders = {name: rewritten(generate) for name, generate in contenders.items()}
    for name, generate in contenders.items():
        run, stats = timed(generate, student.fps)
        report = evaluate_generator(run, prompts, args.seeds, args.seconds, fps=student.fps,
                                    out_dir=out / re.sub(r"[^\w.-]+", "_", name))
        rows[name] = {"summary": report["summary"], "intervals": report["intervals"],
                      "seconds_per_video_second": stats["wall"] / max(stats["video_s"], 1e-9)}
        print(f"{name}: prompt accuracy {report['summary']['prompt_accuracy']:.3f} "
              f"{report['intervals']['prompt_accuracy']}", flush=True)

    # Streaming real-time factor (seconds of video per wall second), first chunk excluded.
    session = student.open_session(prompts[0], seed=0)
    session.next_chunk()
    t0 = time.perf_counter()
    chunks = 16
    for _ in range(chunks):
        session.next_chunk()
    rtf = chunks * student.frames_per_chunk / student.fps / (time.perf_counter() - t0)
    drifted = None
    if args.drift_prompts:
        drifted = drift(student, prompts[: args.drift_prompts], args.drift_minutes, tuple(args.drift_seeds))

    print(f"\n{args.set} set: {len(prompts)} prompts x {args.seeds} seeds, {args.seconds:g} s clips; "
          "mean [95 % bootstrap interval]")
    for name, row in rows.items():
        print(f"  {name}  ({row['seconds_per_video_second']:.3f} s per video s)")
        for metric in SHOWN:
            value, interval = row["summary"].get(metric), row["intervals"].get(metric)
            if value is not None:
                span = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
                print(f"    {metric:20s} {value:.3f} {span}")
    names = list(rows)
    teacher = next((n for n in names if n.startswith("teacher")), None)
    if teacher and "student 4 steps" in rows:
        ratio = rows["student 4 steps"]["summary"]["prompt_accuracy"] / max(rows[teacher]["summary"]["prompt_accuracy"], 1e-9)
        speed = rows[teacher]["seconds_per_video_second"] / rows["student 4 steps"]["seconds_per_video_second"]
        print(f"  student / teacher prompt accuracy {ratio:.3f}; student {speed:.1f}x faster per video second")
    print(f"  streaming real-time factor {rtf:.2f} at {student.fps:g} fps {student.width}x{student.height}, "
          f"torch threads {torch.get_num_threads()}, backend {student.step_fn.backend}")
    if drifted:
        print(f"  drift over {len(drifted['prompts'])} prompts: first 10 s {drifted['first_10s']:.3f} "
              f"{drifted['first_10s_interval']}, last 10 s of minute {args.drift_minutes:g} "
              f"{drifted['last_10s']:.3f} {drifted['last_10s_interval']}")
    (out / "summary.json").write_text(json.dumps({"set": args.set, "rewrite": args.rewrite, "rows": rows, "rtf": rtf, "drift": drifted},
                                                 indent=2))


if __name__ == "__main__":
    main()
