"""Evaluate a video (frames or a file) against its prompt(s).

    metrics = evaluate_frames(frames, "a red ball rolls to the left on a blue background", fps=16)
    metrics["prompt_accuracy"]  # share of the prompt's attributes the video shows

Metrics, each in [0, 1] and higher is better unless said otherwise (None where the
prompt does not ask for it):
  colour_accuracy, shape_accuracy, motion_accuracy, size_accuracy: per attribute,
      over the prompt's objects (each matched to the found object agreeing most)
  background_accuracy: share of frames whose background has the asked colour
  contrast_accuracy: when the prompt names no background, share of frames whose
      background is a named colour that no asked object wears
  count_accuracy: as many objects found as asked
  prompt_accuracy: share of all asked attributes shown, the object count and the
      background included (the headline number)
  all_correct: every asked attribute and the object count right
  smoothness: exp(-median jerk / scale) of the objects' centres (0 if none found)
  flicker: mean |frame step| / 255 on static background (lower is better)
  stability: 1 - flicker / flicker_scale, clipped
  background_stability: share of frames whose background keeps its colour
Long videos also get `windows` (the same metrics on the first `reference_seconds`
and on `window_seconds` at each multiple of `window_every_seconds`) and `drift`
(the reference window's score minus each later window's: > 0 means it got worse).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.shapes.captions import parse_prompt
from distill.eval.config import EvalConfig
from distill.eval.detect import analyse
from distill.eval.judge import score_window

METRICS: tuple[str, ...] = (
    "colour_accuracy", "shape_accuracy", "motion_accuracy", "size_accuracy", "background_accuracy",
    "contrast_accuracy", "count_accuracy", "prompt_accuracy", "all_correct", "smoothness", "flicker", "stability", "background_stability",
)
DRIFT_METRICS: tuple[str, ...] = ("prompt_accuracy", "smoothness", "stability", "background_stability")


def evaluate_frames(frames: np.ndarray, prompt: str, fps: float = 16, *, switches: Sequence[tuple[float, str]] = (),
                    config: EvalConfig | None = None) -> dict:
    """Score uint8 frames [T, H, W, 3] against `prompt`; `switches` lists (time in
    seconds, new prompt) for prompt changes during the video. Returns the metrics
    (see module doc) plus `prompt`, `intent`, the objects asked and found, and for
    switches a `segments` list with each segment's metrics (the overall metrics are
    their frame-weighted means)."""
    config = config or EvalConfig()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    analysis = analyse(frames, fps, config)
    num = len(frames)
    timeline = _timeline(prompt, switches, fps, num)
    settle = int(round(config.switch_settle_seconds * fps))
    segments = []
    for i, (start, stop, text) in enumerate(timeline):
        first = start + (settle if i > 0 else 0)  # the switch takes a moment to show
        if stop - first < 2:
            continue
        seg = score_window(analysis, parse_prompt(text), slice(first, stop), config)
        segments.append({"prompt": text, "start_s": first / fps, "end_s": stop / fps, "frames": stop - first, **seg})
    if not segments:
        raise ValueError("the video is too short to score")
    if len(segments) == 1:
        result = {k: v for k, v in segments[0].items() if k not in ("start_s", "end_s", "frames")}
    else:
        result = {"prompt": prompt, **_weighted_means(segments), "segments": segments}
    result["intent"] = asdict(parse_prompt(prompt))
    result["seconds"] = num / fps
    windows = _drift_windows(analysis, timeline, fps, config)
    if windows:
        result["windows"] = windows
        result["drift"] = {
            m: [None if w[m] is None or windows[0][m] is None else windows[0][m] - w[m] for w in windows[1:]]
            for m in DRIFT_METRICS
        }
    return result


def evaluate_video(path: str | Path, prompt: str, *, switches: Sequence[tuple[float, str]] = (),
                   config: EvalConfig | None = None) -> dict:
    """evaluate_frames on a video file, decoded with PyAV at its own frame rate."""
    from distill.eval.media import read_video

    frames, fps = read_video(path)
    return evaluate_frames(frames, prompt, fps, switches=switches, config=config)


def _timeline(prompt: str, switches: Sequence[tuple[float, str]], fps: float, num: int) -> list[tuple[int, int, str]]:
    """[(first frame, end frame, prompt)] covering the video."""
    marks = sorted((min(num, max(0, int(round(t * fps)))), p) for t, p in switches)
    starts = [(0, prompt)] + marks
    out = []
    for (start, text), (end, _) in zip(starts, starts[1:] + [(num, "")]):
        if end > start:
            out.append((start, end, text))
    return out


def _weighted_means(segments: list[dict]) -> dict:
    out = {}
    for m in METRICS:
        pairs = [(s[m], s["frames"]) for s in segments if s[m] is not None]
        out[m] = float(np.average([v for v, _ in pairs], weights=[w for _, w in pairs])) if pairs else None
    return out


def _drift_windows(analysis, timeline, fps: float, config: EvalConfig) -> list[dict]:
    """Metrics on [0, reference) and on [k * every, k * every + window) for k >= 1,
    each against the prompt in force at the window's start; [] if the video is too
    short for a second window."""
    num = analysis.num_frames
    spans = [(0.0, config.reference_seconds)]
    k = 1
    while (k * config.window_every_seconds + config.window_seconds) * fps <= num + 1e-6:
        spans.append((k * config.window_every_seconds, k * config.window_every_seconds + config.window_seconds))
        k += 1
    if len(spans) < 2:
        return []
    windows = []
    for start_s, end_s in spans:
        a, b = int(round(start_s * fps)), min(num, int(round(end_s * fps)))
        text = next(p for s, e, p in timeline if s <= a < e)
        seg = score_window(analysis, parse_prompt(text), slice(a, b), config)
        windows.append({"start_s": start_s, "end_s": end_s, **{m: seg[m] for m in METRICS}})
    return windows
