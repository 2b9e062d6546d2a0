"""Where a model's motion goes: inside each latent frame, or from one latent frame to the next.

The Shapes autoencoder decodes each latent frame into 4 video frames, so a moving object's
path has two parts: the frames one latent frame decodes into (its decoder draws motion
there from what the latent says) and the step from one latent frame's last video frame to
the next one's first (where the model must have moved the object on). A model that knows
the asked velocity but does not carry the object on draws a saw-tooth: 4 frames of motion,
then a jump back.

For each of the standard set's straight motions (one object, 8 directions) this follows the
asked object's centroid (the evaluator's tracks) and reports, in pixels per latent frame
along the asked direction: `within` (first to last video frame of a latent frame),
`between` (last frame of one latent frame to the first of the next), `advance` (first
frame to first frame: their sum), and what the asked speed is; `between` is also split into the boundaries
inside a student's chunk and those between its chunks (the cache hand-over). For ground truth through
the autoencoder, a student (as it streams), and a teacher (50 steps; optionally one noise
for every latent frame).

    python bench/latent_motion.py --student engine/models/shapes-default --teacher runs/Lt/model --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def latent_steps(position: np.ndarray, frames_per_latent: int, chunk_frames: int = 0) -> dict[str, float]:
    """position [T] along the asked direction (NaN where the object is not seen whole) ->
    mean pixels per latent frame inside latent frames (`within`), across their boundaries
    (`between`) and first frame to first frame (`advance`); NaN where none can be measured.
    With `chunk_frames` (a streaming student's latent frames a chunk), `between` split into the
    boundaries inside a chunk (`between_in_chunk`: frames denoised together) and those from
    one chunk to the next (`between_chunks`: what the next chunk reads from the cache)."""
    k = frames_per_latent
    starts = position[::k]
    ends = position[k - 1 :: k]
    n = min(len(starts), len(ends))
    within = ends[:n] - starts[:n]
    between = starts[1:n] - ends[: n - 1] if n > 1 else np.array([])
    advance = np.diff(starts)

    def mean(a):
        a = a[np.isfinite(a)]
        return float(a.mean()) if len(a) else float("nan")

    out = {"within": mean(within), "between": mean(between), "advance": mean(advance)}
    if chunk_frames:
        at_chunk = (np.arange(len(between)) + 1) % chunk_frames == 0  # boundary i: latent frame i -> i + 1
        out["between_in_chunk"], out["between_chunks"] = mean(between[~at_chunk]), mean(between[at_chunk])
    return out


def along_direction(track, direction: str, width: int, height: int) -> np.ndarray:
    """The track's centroid projected on the asked direction, unwrapped across the frame's
    edges (objects wrap round); NaN where absent or clipped."""
    from engine.shapes import vocab

    ux, uy = vocab.DIRECTION_VECTORS[direction]
    ok = track.present & ~track.clipped
    x, y = track.x.astype(float).copy(), track.y.astype(float).copy()
    x[~ok], y[~ok] = np.nan, np.nan
    seen = np.flatnonzero(ok)
    if len(seen):  # unwrap: each step the shorter way round
        for a, b in zip(seen[:-1], seen[1:]):
            x[b] = x[a] + ((x[b] - x[a] + width / 2) % width - width / 2)
            y[b] = y[a] + ((y[b] - y[a] + height / 2) % height - height / 2)
    return ux * x + uy * y


def straight_scenes():
    """(prompt, scene) of the standard set's one-object scenes moving straight."""
    from distill.eval import standard_prompts
    from distill.eval.prompts import standard_scenes
    from engine.shapes import vocab

    return [(p, s) for p, s in zip(standard_prompts(), standard_scenes())
            if len(s.objects) == 1 and s.objects[0].motion in vocab.DIRECTIONS]


def measure(generate, scenes, seeds: int, seconds: float, fps: float, frames_per_latent: int,
            chunk_frames: int = 0) -> dict:
    from distill.eval.detect import analyse
    from distill.eval.report import bootstrap_interval

    rows = []
    for prompt, scene in scenes:
        obj = scene.objects[0]
        for seed in range(seeds):
            video = np.asarray(generate(prompt, seconds, seed))
            analysis = analyse(video, fps)
            track = analysis.tracks.get(obj.colour)
            if track is None:
                rows.append({"prompt": prompt, "seed": seed, "found": False})
                continue
            pos = along_direction(track, obj.motion, analysis.width, analysis.height)
            rows.append({"prompt": prompt, "seed": seed, "found": True,
                         **latent_steps(pos, frames_per_latent, chunk_frames)})
    found = [r for r in rows if r["found"]]

    def mean(key):
        v = [r[key] for r in found if np.isfinite(r[key])]
        return (float(np.mean(v)), bootstrap_interval(v)) if v else (None, None)

    summary = {"clips": len(rows), "found": len(found)}
    for key in ("within", "between", "advance", *(("between_in_chunk", "between_chunks") if chunk_frames else ())):
        summary[key], summary[key + "_interval"] = mean(key)
    return {"summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="engine/models/shapes-default",
                    help="student model dir (its autoencoder also decodes the ground truth)")
    ap.add_argument("--teacher", default=None, help="teacher model dir (50 guided steps)")
    ap.add_argument("--shared-noise", action="store_true", help="the teacher's latent frames start from one noise")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="write every clip's figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from distill_eval import ground_truth_generator
    from engine import load_model

    student = load_model(args.student)
    k = student.config.latent.temporal_compression
    chunk = student.config.attention.chunk_frames
    contenders = {"ground truth via AE": ground_truth_generator(Path(args.student)),
                  "student": student.generate_clip}
    if args.teacher:
        from distill.teacher import TeacherGenerator

        contenders["teacher" + (" (shared noise)" if args.shared_noise else "")] = TeacherGenerator(
            args.teacher, steps=50, shared_noise=args.shared_noise).generate
    scenes = straight_scenes()
    unit = min(student.width, student.height)
    asked = float(np.mean([s.objects[0].speed for _, s in scenes])) * unit * k / student.fps
    print(f"{len(scenes)} straight-motion prompts x {args.seeds} seeds, {args.seconds:g} s; pixels per latent "
          f"frame ({k} video frames) along the asked direction, mean [95 % bootstrap interval]; asked speed "
          f"{asked:.2f}")
    out = {"asked_px_per_latent_frame": asked, "frames_per_latent": k, "rows": {}}
    for name, generate in contenders.items():
        result = measure(generate, scenes, args.seeds, args.seconds, student.fps, k, chunk)
        out["rows"][name] = result
        s = result["summary"]

        def fmt(key):
            if s[key] is None:
                return "n/a"
            span = s[key + "_interval"] or (s[key], s[key])
            return f"{s[key]:+.2f} [{span[0]:+.2f}, {span[1]:+.2f}]"

        print(f"  {name:28s} advance {fmt('advance')}  within {fmt('within')}  between {fmt('between')}  "
              f"(object found in {s['found']}/{s['clips']})", flush=True)
        print(f"  {'':28s} between, inside a chunk of {chunk} latent frames {fmt('between_in_chunk')}; "
              f"from one chunk to the next {fmt('between_chunks')}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
