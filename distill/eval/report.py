"""Evaluate a generator over a prompt set and seeds; write the report a person reads.

    report = evaluate_generator(model.generate_clip, standard_prompts(), seeds=2, seconds=4,
                                fps=model.fps, out_dir="eval-out")

`generate(prompt, seconds, seed) -> uint8 [T, H, W, 3]` is any callable, so this does
not depend on the engine. With `out_dir` it writes report.json (summary, per-prompt
means, every sample's metrics), metrics.png (mean of each metric), drift.png (for
streams long enough to have windows), grid.png (frames of the first samples) and
samples.mp4 + samples.gif (the first samples tiled, playing together).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from distill.eval.config import EvalConfig
from distill.eval.evaluate import DRIFT_METRICS, METRICS, evaluate_frames

Generate = Callable[[str, float, int], np.ndarray]
GRID_COLUMNS = 8  # frames per sample in grid.png, evenly spaced over the clip
PREVIEW_SECONDS = 10.0  # how much of each sample samples.mp4 / samples.gif play


BOOTSTRAP_RESAMPLES = 2000


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def bootstrap_interval(values, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> list[float] | None:
    """The percentile bootstrap interval of the mean: samples (prompt x seed) drawn with
    replacement `resamples` times; the central `level` of the resampled means. With it two
    models can be told apart, or not. None with fewer than two values."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def paired_difference(before: dict, after: dict, metrics: Sequence[str] = METRICS, level: float = 0.95,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """`after` minus `before`, two reports of evaluate_generator on the same prompts and seeds,
    paired sample by sample: {metric: {"before", "after", "difference", "interval", "samples"}}.
    Two models run on the same (prompt, seed) share a scene's difficulty, so the interval of the
    paired difference (the same percentile bootstrap over those pairs) is narrower than the
    two models' own intervals side by side: it tells them apart when those overlap. A metric a
    pair lacks (None: no background asked, ...) leaves that pair out of it. Refuses reports
    whose (prompt, seed) pairs differ."""
    def keyed(report: dict) -> dict:
        return {(s["prompt"], s["seed"]): s for s in report["samples"]}

    a, b = keyed(before), keyed(after)
    if set(a) != set(b) or len(a) != len(before["samples"]) or len(b) != len(after["samples"]):
        raise ValueError("the two reports must score the same prompts with the same seeds, each pair once "
                         f"({len(set(a) ^ set(b))} pairs in one report only)")
    out = {}
    for m in metrics:
        pairs = [(a[k][m], b[k][m]) for k in a if a[k].get(m) is not None and b[k].get(m) is not None]
        if not pairs:
            continue
        old, new = np.array(pairs, dtype=float).T
        out[m] = {"before": float(old.mean()), "after": float(new.mean()), "difference": float((new - old).mean()),
                  "interval": bootstrap_interval(new - old, level, resamples, seed), "samples": len(pairs)}
    return out


def evaluate_generator(generate: Generate, prompts: Sequence[str], seeds: int | Sequence[int], seconds: float,
                       out_dir: str | Path | None = None, fps: float = 16, config: EvalConfig | None = None,
                       grid_samples: int = 8) -> dict:
    """Generate every (prompt, seed) pair, score each clip with evaluate_frames and
    summarise. `seeds` is a count (seeds 0..n-1) or a list. Returns
    {"summary": {metric: mean}, "per_prompt": [...], "settings": {...}, "samples": [...]}
    and, for clips long enough to have drift windows (see evaluate_frames), "windows"
    (each window's metrics averaged over samples) and "drift" (first window minus
    each later one, per metric)."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    samples, previews = [], []
    started = time.perf_counter()
    for prompt in prompts:
        for seed in seeds:
            frames = np.asarray(generate(prompt, seconds, seed))
            metrics = evaluate_frames(frames, prompt, fps, config=config)
            samples.append({"prompt": prompt, "seed": seed, **metrics})
            if len(previews) < grid_samples:  # keep little of each: streams can be minutes long
                picks = np.linspace(0, len(frames) - 1, GRID_COLUMNS).round().astype(int)
                previews.append((prompt, frames[picks], frames[: int(PREVIEW_SECONDS * fps)]))
    report = {
        "summary": {m: _mean(s[m] for s in samples) for m in METRICS},
        "intervals": {m: bootstrap_interval([s[m] for s in samples]) for m in METRICS},
        "per_prompt": [
            {"prompt": p, **{m: _mean(s[m] for s in samples if s["prompt"] == p) for m in METRICS}} for p in prompts
        ],
        "settings": {"prompts": len(prompts), "seeds": seeds, "seconds": seconds, "fps": fps,
                     "wall_seconds": time.perf_counter() - started},
        "samples": samples,
    }
    windows = _mean_windows(samples)
    if windows:
        report["windows"] = windows
        report["drift"] = {m: [None if w[m] is None or windows[0][m] is None else windows[0][m] - w[m]
                               for w in windows[1:]] for m in DRIFT_METRICS}
    if out_dir is not None:
        write_report(report, previews, Path(out_dir), fps)
    return report


def _mean_windows(samples: list[dict]) -> list[dict]:
    """Per window (over samples that have it): mean start time and mean of each metric."""
    with_windows = [s["windows"] for s in samples if "windows" in s]
    if not with_windows:
        return []
    count = min(len(w) for w in with_windows)
    return [
        {"start_s": with_windows[0][k]["start_s"], "end_s": with_windows[0][k]["end_s"],
         **{m: _mean(w[k][m] for w in with_windows) for m in METRICS}}
        for k in range(count)
    ]


def write_report(report: dict, previews: list[tuple[str, np.ndarray, np.ndarray]], out_dir: Path,
                 fps: float) -> None:
    """previews: (prompt, grid frames [GRID_COLUMNS, H, W, 3], first seconds [T, H, W, 3])"""
    from PIL import Image

    from distill.eval.media import frame_grid, tile_videos, write_gif, write_mp4

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_metrics(report["summary"], out_dir / "metrics.png")
    if report.get("windows"):
        plot_drift(report["windows"], out_dir / "drift.png")
    if previews:
        grid = frame_grid([g for _, g, _ in previews], GRID_COLUMNS, labels=[p for p, _, _ in previews])
        Image.fromarray(grid).save(out_dir / "grid.png")
        tiled = tile_videos([head for _, _, head in previews])
        write_mp4(out_dir / "samples.mp4", tiled, fps)
        write_gif(out_dir / "samples.gif", tiled, fps)


def plot_metrics(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    names = [m for m in METRICS if summary.get(m) is not None]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(names)), [summary[m] for m in names], color="tab:blue")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean (flicker: lower is better)")
    ax.set_title("Shapes evaluator")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_drift(windows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    starts = [w["start_s"] for w in windows]
    for m in DRIFT_METRICS:
        values = [w[m] for w in windows]
        if all(v is not None for v in values):
            ax.plot(starts, values, marker="o", label=m)
    ax.set_xlabel("window start (s)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("drift over the stream")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
