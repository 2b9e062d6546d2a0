"""From measurements to judgements: each track's shape, motion and size, matched
against what a prompt asks, and the per-window metrics.

Every rule here is geometry, not a fitted model: the thresholds are properties of
the shapes and motions the Shapes world draws (documented next to each), and live
in EvalConfig.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from engine.shapes import vocab
from engine.shapes.captions import ObjectIntent, PromptIntent
from distill.data.render import SHAPE_AREA
from distill.eval.colour import CLASS_NAMES, UNKNOWN
from distill.eval.config import EvalConfig
from distill.eval.detect import FEATURES, Track, VideoAnalysis

F = {name: i for i, name in enumerate(FEATURES)}
# Typical outline harmonics of the drawn shapes (relative amplitude at 128 px): the
# shape whose harmonic is strongest relative to its own typical value wins; below
# CIRCLE_LEVEL of every typical value, the outline is round.
HARMONIC_TYPICAL = {"triangle": 0.14, "star": 0.12, "square": 0.075, "diamond": 0.06}
CIRCLE_LEVEL = 0.3
TRIANGLE_MAX_TOP = 0.4  # an apex-up triangle has ~1/4 of its area above its middle


# What each drawn shape's blob looks like, sharp or through a small autoencoder
# (measured on Shapes clips, widened by a margin): (fill min, max), (thinness min, max).
# A blob outside its shape's ranges is no shape at all (clutter, a smear, a merge).
PLAUSIBLE = {
    "circle": ((0.68, 0.9), (0.95, 1.6)),
    "square": ((0.8, 1.0), (1.1, 1.7)),
    "triangle": ((0.45, 0.85), (1.4, 2.3)),
    "diamond": ((0.45, 0.85), (1.1, 1.9)),
    "star": ((0.4, 0.92), (1.2, 2.6)),
}


def frame_shape(features: np.ndarray) -> str | None:
    """Shape of one blob from its FEATURES vector; None if it is none of the shapes."""
    scores = {
        "triangle": features[F["harmonic3"]] / HARMONIC_TYPICAL["triangle"] if features[F["top"]] < TRIANGLE_MAX_TOP else 0.0,
        "star": features[F["harmonic5"]] / HARMONIC_TYPICAL["star"],
        "square": -features[F["harmonic4"]] / HARMONIC_TYPICAL["square"],
        "diamond": features[F["harmonic4"]] / HARMONIC_TYPICAL["diamond"],
    }
    best = max(scores, key=scores.get)
    shape = best if scores[best] >= CIRCLE_LEVEL else "circle"
    (fill_lo, fill_hi), (thin_lo, thin_hi) = PLAUSIBLE[shape]
    if fill_lo <= features[F["fill"]] <= fill_hi and thin_lo <= features[F["thinness"]] <= thin_hi:
        return shape
    return None


def _majority(values: list[str | None]) -> str | None:
    """The most common value, if it is not None and holds at least half the votes."""
    if not values:
        return None
    names, counts = np.unique([v or "" for v in values], return_counts=True)
    best = counts.argmax()
    return str(names[best]) if names[best] and counts[best] * 2 >= len(values) else None


@dataclass
class TrackSummary:
    colour: str
    presence: float  # share of the window's frames it was found in
    shape: str | None
    motion: str | None
    size: str | None
    smoothness: float | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _steps(track: Track, sl: slice, height: int, width: int, clean: bool) -> tuple[np.ndarray, np.ndarray]:
    """Displacements between consecutive frames where the object is found (and, if
    clean, whole: not clipped by the edge or another object), wrapped to the shortest
    way round the torus.
    -> d [N, 2] pixels, index of each step's first frame [N]"""
    ok = track.present[sl] & (~track.clipped[sl] if clean else True)
    idx = np.nonzero(ok[:-1] & ok[1:])[0]
    x, y = track.x[sl], track.y[sl]
    dx, dy = x[idx + 1] - x[idx], y[idx + 1] - y[idx]
    dx = (dx + width / 2) % width - width / 2
    dy = (dy + height / 2) % height - height / 2
    return np.stack([dx, dy], 1), idx


def classify_motion(track: Track, sl: slice, analysis: VideoAnalysis, config: EvalConfig) -> str | None:
    """One of vocab.MOTIONS, or None when the track is too short or the motion is none of them."""
    unit, fps = min(analysis.height, analysis.width), analysis.fps
    d, idx = _steps(track, sl, analysis.height, analysis.width, clean=True)
    every_d, every_idx = _steps(track, sl, analysis.height, analysis.width, clean=False)
    if len(d) < max(3, len(every_d) // 2):  # mostly clipped: a cut-off centre beats none
        d, idx = every_d, every_idx
    if len(d) < 2:
        return None
    lengths = np.hypot(d[:, 0], d[:, 1])
    path_speed = lengths.mean() * fps / unit  # min(H, W) per second
    # Size change from whole sightings only: a cut-off object seems to shrink.
    _, whole = _steps(track, sl, analysis.height, analysis.width, clean=True)
    area = track.area[sl]
    log_area_step = np.log(area[whole + 1]) - np.log(area[whole])
    growth = float(np.median(log_area_step)) * fps if len(whole) >= 3 else 0.0  # median: one saw-tooth reset is an outlier
    if abs(growth) > config.grow_rate and path_speed < 2 * config.stop_speed + abs(growth) * 0.1:
        return "grow" if growth > 0 else "shrink"
    if path_speed < config.stop_speed:
        return "stop"
    # Bounce: up and down in place, with at least one reversal of the vertical velocity.
    path = np.cumsum(d, 0)  # unwrapped positions relative to the first
    x_range, y_range = np.ptp(path[:, 0]), np.ptp(path[:, 1])
    moving_v = d[np.abs(d[:, 1]) > 0.005 * unit, 1]
    reversals = int(np.sum(np.diff(np.sign(moving_v)) != 0))
    balanced = abs(d[:, 1].sum()) <= 0.5 * np.abs(d[:, 1]).sum()  # as much up as down
    if y_range > 0.05 * unit and x_range <= config.bounce_sway * y_range and reversals >= 1 and balanced:
        return "bounce"
    # Circle: the heading keeps turning one way, at an orbit's rate. A rate (not a
    # total) so that frames left out (clipped) do not hide the turn.
    moving = lengths > 0.1 * lengths.mean()
    heading = np.arctan2(d[moving, 1], d[moving, 0])
    turns = (np.diff(heading) + np.pi) % (2 * np.pi) - np.pi
    span = (idx[moving][-1] - idx[moving][0]) / fps if moving.sum() >= 2 else 0.0
    if len(turns) >= 4 and span > 0 and abs(turns.sum()) / span >= math.radians(config.orbit_turn_rate) \
            and abs(turns.sum()) >= 0.6 * np.abs(turns).sum():
        return "circle"
    total = d.sum(0)
    if np.hypot(*total) < config.straightness * lengths.sum():
        return None
    sector = int(round(math.atan2(total[1], total[0]) / (math.pi / 4))) % 8  # 0 = right, y down
    return ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")[sector]


def measured_frames(track: Track, sl: slice) -> np.ndarray:
    """bool [frames of sl]: where to read shape and size: the whole (unclipped)
    sightings, or every sighting if there are fewer than 3 whole ones."""
    whole = track.present[sl] & ~track.clipped[sl]
    return whole if whole.sum() >= 3 else track.present[sl]


def classify_size(track: Track, sl: slice, analysis: VideoAnalysis, shape: str | None) -> str | None:
    """Nearest size (in log scale) of the outer width implied by the object's area and
    shape: area = SHAPE_AREA[shape] * width^2."""
    ok = measured_frames(track, sl)
    if not ok.any():
        return None
    area = float(np.median(track.area[sl][ok]))
    width = math.sqrt(area / SHAPE_AREA[shape or "circle"]) / min(analysis.height, analysis.width)
    return min(vocab.SIZES, key=lambda s: abs(math.log(width / vocab.SIZES[s])))


def smoothness(track: Track, sl: slice, analysis: VideoAnalysis, config: EvalConfig) -> float | None:
    """exp(-median |jerk| / scale): 1 for constant velocity or acceleration, ~0 for a
    jittering track. Jerk is the third difference of the centroid over four
    consecutive whole (not clipped) frames."""
    ok = track.present[sl] & ~track.clipped[sl]
    run = ok[:-3] & ok[1:-2] & ok[2:-1] & ok[3:]
    if not run.any():
        return None
    x, y = track.x[sl], track.y[sl]
    jerk_x = x[3:] - 3 * x[2:-1] + 3 * x[1:-2] - x[:-3]
    jerk_y = y[3:] - 3 * y[2:-1] + 3 * y[1:-2] - y[:-3]
    jerk = np.hypot(jerk_x[run], jerk_y[run])
    return float(math.exp(-np.median(jerk) / (config.smoothness_scale * min(analysis.height, analysis.width))))


def summarise_tracks(analysis: VideoAnalysis, sl: slice, config: EvalConfig) -> list[TrackSummary]:
    """The objects of a window: colours found in at least `min_presence` of its frames."""
    num = len(range(*sl.indices(analysis.num_frames)))
    out = []
    for colour, track in analysis.tracks.items():
        presence = float(track.present[sl].mean()) if num else 0.0
        if presence < config.min_presence:
            continue
        ok = measured_frames(track, sl)
        shape = _majority([frame_shape(f) for f in track.features[sl][ok]])
        out.append(TrackSummary(colour, presence, shape, classify_motion(track, sl, analysis, config),
                                classify_size(track, sl, analysis, shape), smoothness(track, sl, analysis, config)))
    return out


def _agreement(want: ObjectIntent, got: TrackSummary) -> dict[str, bool]:
    """Attribute -> correct, for the attributes the prompt names."""
    out = {}
    for attr in ("colour", "shape", "motion", "size"):
        asked = getattr(want, attr)
        if asked is None or (attr == "size" and want.motion in ("grow", "shrink")):
            continue
        out[attr] = getattr(got, attr) == asked
    return out


def match_objects(intent: PromptIntent, found: list[TrackSummary]) -> list[TrackSummary | None]:
    """The found object for each asked object (None if too few were found), chosen to
    agree most, colour counting double: "the red ball" is first of all red."""
    weights = {"colour": 2.0, "shape": 1.0, "motion": 1.0, "size": 0.5}

    def total(pairs):
        return sum(weights[a] for want, got in pairs if got is not None for a, ok in _agreement(want, got).items() if ok)

    slots = list(found) + [None] * len(intent.objects)
    best = max(itertools.permutations(slots, len(intent.objects)), key=lambda p: total(zip(intent.objects, p)),
               default=())
    return list(best)


def mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def prompt_scores(intent: PromptIntent, found: list[TrackSummary], background_names: np.ndarray) -> dict:
    """How well what was found agrees with what the prompt asks: the per-attribute,
    count and overall accuracies. background_names: [T] the background's colour name
    in each frame. Also used on a scene's true contents, to know the score a wrong
    prompt gets by chance."""
    matched = match_objects(intent, found)
    per_attr: dict[str, list[float]] = {a: [] for a in ("colour", "shape", "motion", "size")}
    objects = []
    for want, got in zip(intent.objects, matched):
        if got is None:
            agree = {a: False for a in _agreement(want, TrackSummary("", 0, None, None, None, None))}
        else:
            agree = _agreement(want, got)
        for attr, ok in agree.items():
            per_attr[attr].append(float(ok))
        objects.append({"asked": dict(want.__dict__), "found": got.as_dict() if got else None})
    background_accuracy = contrast_accuracy = None
    if intent.background and len(background_names):
        background_accuracy = float(np.mean(background_names == intent.background))
    elif intent.objects and len(background_names):
        # No background asked: any will do that sets the objects off, a named colour none of
        # them wears (a frame painted in the object's colour has no object to see).
        asked = {o.colour for o in intent.objects if o.colour}
        contrast_accuracy = float(np.mean([name != "unknown" and name not in asked for name in background_names]))
    count_ok = len(found) == len(intent.objects)
    # "a red ball" is one object: clutter of every colour must not pass as the ball.
    all_attrs = [v for vs in per_attr.values() for v in vs] + \
        [v for v in (background_accuracy, contrast_accuracy) if v is not None] + \
        ([float(count_ok)] if intent.objects else [])
    return {
        "colour_accuracy": mean_or_none(per_attr["colour"]),
        "shape_accuracy": mean_or_none(per_attr["shape"]),
        "motion_accuracy": mean_or_none(per_attr["motion"]),
        "size_accuracy": mean_or_none(per_attr["size"]),
        "background_accuracy": background_accuracy,
        "contrast_accuracy": contrast_accuracy,
        "count_accuracy": float(count_ok) if intent.objects else None,
        "prompt_accuracy": mean_or_none(all_attrs),
        "all_correct": float(all(v == 1.0 for v in all_attrs)) if all_attrs else None,
        "objects": objects,
    }


def score_window(analysis: VideoAnalysis, intent: PromptIntent, sl: slice, config: EvalConfig) -> dict:
    """All metrics of one window of frames against one prompt (see evaluate_frames)."""
    found = summarise_tracks(analysis, sl, config)
    scores = prompt_scores(intent, found, np.array(CLASS_NAMES)[analysis.background[sl]])
    flicker = analysis.flicker[sl]
    flicker = float(np.nanmean(flicker)) if np.isfinite(flicker).any() else None
    smooth = [t.smoothness for t in found if t.smoothness is not None]
    return {
        **scores,
        "smoothness": float(np.mean(smooth)) if smooth else 0.0,
        "flicker": flicker,
        "stability": None if flicker is None else float(np.clip(1 - flicker / config.flicker_scale, 0, 1)),
        "background_stability": background_stability(analysis, sl, config),
        "found": [t.as_dict() for t in found],
    }


def background_stability(analysis: VideoAnalysis, sl: slice, config: EvalConfig) -> float | None:
    """Share of frames whose background keeps the window's usual colour name and stays
    within `background_tolerance` Delta E of its median colour."""
    background, lab = analysis.background[sl], analysis.background_lab[sl]
    if not len(background):
        return None
    values, counts = np.unique(background, return_counts=True)
    usual = values[counts.argmax()]
    if usual == UNKNOWN:
        return 0.0  # mostly no background at all is as unstable as it gets
    typical = np.median(lab[background == usual], axis=0)
    close = np.linalg.norm(lab - typical, axis=1) <= config.background_tolerance
    return float(np.mean((background == usual) & close))
