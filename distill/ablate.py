"""`framecast distill ablate`: the distillation methods side by side, same budget, same
seed, all starting from one shared ODE-initialised student, judged by the evaluator.

Variants: DMD, Re-DMD with the EMA sink (Reward Forcing), Stream-R1, and each of them
with diagonal distillation (4-3-2 steps, partially denoised context, trained so).
Columns: prompt accuracy and motion accuracy with 95 % intervals, colour and shape accuracy,
motion smoothness, flicker, drift at minute N, frames per second and real-time factor.
Writes report.json, report.md and drift.png, rewritten as each row is finished.

Any teacher works (`--teacher` a converted Wan2.1 too, the students following it, and
`--train-prompts FILE`); the evaluator's accuracy columns judge Shapes scenes, so for a
real-video teacher only fps, real-time factor and the training curves mean something.
Under torchrun every process trains each variant (sharded), and process 0 judges it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = ("dmd", "re_dmd", "stream_r1", "dmd+diag", "re_dmd+diag", "stream_r1+diag")
START = "ode init only"  # the row of the shared starting point
ROW_METRICS = ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "smoothness", "flicker")


def variant_run(base, name: str, init_from: str):
    """The StudentRun of one variant: same budget and seed as `base`, no ODE stage."""
    from .student import DIAGONAL_SCHEDULE, PLAIN_SCHEDULE

    method, _, diag = name.partition("+")
    model = base.model
    if method == "re_dmd":  # Reward Forcing: EMA sink in training and inference
        model = model.model_copy(update={"attention": model.attention.model_copy(update={"policy": "ema_sink"})})
    # Every variant names its schedule: the base (the default student) may have either.
    model = model.model_copy(update={"sampler": model.sampler.model_copy(
        update=DIAGONAL_SCHEDULE if diag else PLAIN_SCHEDULE)})
    stem = "shapes" if base.model.name == "shapes-default" else base.model.name
    model = model.model_copy(update={"name": f"{stem}-{name}"})
    # Each variant streams as it was trained: its schedule is what the ablation compares.
    return dataclasses.replace(base, model=model, method=method, init_from=init_from, ode_iters=0,
                               serve_chunk_frames=0, serve_refresh_context=None)


def trained(model_dir: Path) -> bool:
    """Whether model_dir holds a model, as every process sees it (rank 0 exports: wait for it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    return (model_dir / "model.json").is_file()


def stream_figures(model, prompt: str, minutes: float, window_s: float = 10.0) -> dict:
    """Stream `minutes` of one prompt: fps, real-time factor, and evaluator metrics on
    consecutive windows (drift over stream time)."""
    from distill.eval import evaluate_frames

    session = model.open_session(prompt, seed=0)
    session.next_chunk()  # the first chunk pays one-off costs
    frames, start = [], time.perf_counter()
    need = max(int(minutes * 60 * model.fps), int(2 * window_s * model.fps))
    while sum(len(f) for f in frames) < need:
        frames.append(session.next_chunk().frames)
    wall = time.perf_counter() - start
    video = np.concatenate(frames)[:need]
    per_window = int(window_s * model.fps)
    drift = []
    for i in range(0, len(video) - per_window + 1, max(per_window, len(video) // 12 // per_window * per_window)):
        m = evaluate_frames(video[i : i + per_window], prompt, fps=model.fps)
        drift.append({"start_s": i / model.fps, "prompt_accuracy": m["prompt_accuracy"], "stability": m["stability"]})
    fps = sum(len(f) for f in frames) / wall
    return {"fps": fps, "rtf": fps / model.fps, "drift": drift,
            "drift_first": drift[0]["prompt_accuracy"], "drift_last": drift[-1]["prompt_accuracy"]}


def run_ablation(base, teacher: str, run_dir: Path, variants: list[str], prompts: int, seeds: int,
                 seconds: float, drift_minutes: float, threads: int = 0, progress: bool = True) -> dict:
    import torch.distributed as dist

    from distill.eval import evaluate_generator, standard_prompts
    from distill.student import train_student
    from engine import load_model

    run_dir.mkdir(parents=True, exist_ok=True)
    # --- the shared start: ODE initialisation only ------------------------------------------
    init = dataclasses.replace(base, teacher=teacher, dmd_iters=0)
    init_dir = run_dir / "ode_init" / "model"
    if not trained(init_dir):
        train_student(init, run_dir / "ode_init", init_dir, threads, progress)
    # --- each variant: the same DMD budget from there, judged as soon as it is trained -----------
    # The shared start is a row too: what the ODE initialisation alone gives, so each
    # variant's row shows what its DMD stage added (or cost). Each row is kept in its run dir
    # (row.json) and the table rewritten after it, so a stopped ablation resumes where it was
    # and its finished rows are readable meanwhile.
    settings = {"prompts": prompts, "seeds": seeds, "seconds": seconds, "drift_minutes": drift_minutes}
    prompt_set = list(standard_prompts())[:prompts]
    rows = {}
    for name in [START, *variants]:
        out = init_dir if name == START else run_dir / name / "model"
        if name != START and not trained(out):  # the start was trained above
            run = variant_run(dataclasses.replace(base, teacher=teacher), name, str(init_dir))
            t0 = time.perf_counter()
            if train_student(run, run_dir / name, out, threads, progress).out_dir is not None:
                (run_dir / name / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")
        if dist.is_initialized() and dist.get_rank() != 0:
            continue  # one process judges
        saved = out.parent / "row.json"
        if saved.is_file() and (row := json.loads(saved.read_text())).get("settings") == settings:
            rows[name] = row
        else:
            model = load_model(str(out))
            report = evaluate_generator(model.generate_clip, prompt_set, seeds, seconds, out_dir=out.parent / "eval",
                                        fps=model.fps)
            rows[name] = {**{k: report["summary"][k] for k in ROW_METRICS},
                          "intervals": {k: report["intervals"][k] for k in ("prompt_accuracy", "motion_accuracy")},
                          **stream_figures(model, prompt_set[0], drift_minutes), "settings": settings}
            saved.write_text(json.dumps(rows[name], indent=2))
        print(f"{name}: {json.dumps({k: v for k, v in rows[name].items() if k not in ('drift', 'settings')})}",
              flush=True)
        write_report(rows, run_dir, drift_minutes)
    return rows


def _with_interval(row: dict, metric: str) -> str:
    low_high = row.get("intervals", {}).get(metric)
    return f"{row[metric]:.3f}" + (f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "")


def write_report(rows: dict, run_dir: Path, drift_minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (run_dir / "report.json").write_text(json.dumps(rows, indent=2))
    lines = [f"| variant | prompt acc [95 % interval] | colour | shape | motion [95 % interval] | smoothness | flicker "
             f"| drift: first 10 s | drift: at {drift_minutes:g} min | fps | real-time factor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {_with_interval(r, 'prompt_accuracy')} | {r['colour_accuracy']:.3f} | "
                     f"{r['shape_accuracy']:.3f} | {_with_interval(r, 'motion_accuracy')} | {r['smoothness']:.3f} | "
                     f"{r['flicker']:.4f} | {r['drift_first']:.3f} | {r['drift_last']:.3f} | {r['fps']:.1f} | "
                     f"{r['rtf']:.2f} |")
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in rows.items():
        ax.plot([d["start_s"] / 60 for d in r["drift"]], [d["prompt_accuracy"] for d in r["drift"]], marker="o",
                label=name)
    ax.set_xlabel("stream time (minutes)")
    ax.set_ylabel("prompt accuracy (10 s windows)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "drift.png", dpi=100)
    plt.close(fig)
    print("\n".join(lines))
