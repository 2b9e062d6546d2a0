"""Per-frame measurements of a video: background colour, one object per object colour
(its position, size and shape features), and how much the static background moves.

Pixels are named by colour (distill.eval.colour). The background of a frame is its
most common colour name; an object is the largest connected blob of another object
colour after a 3x3 opening (which removes anti-aliased fringes and noise). Shapes
scenes give each object its own colour, so a colour is a track through the video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from distill.eval.colour import COLOUR_NAMES, OBJECT_CLASSES, UNKNOWN, classify_pixels, rgb_to_lab
from distill.eval.config import EvalConfig

NUM_CLASSES = len(COLOUR_NAMES) + 1  # named colours and UNKNOWN
SQUARE_3x3 = np.ones((1, 3, 3), bool)  # spatial only: frames never join
CONNECT_8 = np.pad(SQUARE_3x3, ((1, 1), (0, 0), (0, 0)))  # [3, 3, 3]: 8-connected within a frame


# Shape features of a blob, measured on its pixels (see `blob_features`):
#   fill: area / bbox area (circle .79, square 1, triangle and diamond .5)
#   top: share of the area above the bbox middle (apex-up triangle .25, others ~.5)
#   thinness: area / (pi * inradius^2) (circle 1, square 1.27, triangle 1.67; rings >> 5)
#   harmonic3/4/5: Fourier amplitudes of the outline radius r(angle) over its mean;
#     harmonic4 is signed by its phase: < 0 corners on the diagonals (square),
#     > 0 corners on the axes (diamond). Triangles ring at 3, stars at 5, circles at none.
FEATURES: tuple[str, ...] = ("fill", "top", "thinness", "harmonic3", "harmonic4", "harmonic5")
F_THINNESS = FEATURES.index("thinness")


@dataclass
class Track:
    """One object colour through a video; arrays are [T], NaN where absent."""

    colour: str
    present: np.ndarray  # bool
    x: np.ndarray  # centroid, pixels
    y: np.ndarray
    area: np.ndarray  # pixels (edge pixels counted by coverage)
    clipped: np.ndarray  # bool: cut by the frame edge (wrapping round) or touching another object
    features: np.ndarray  # [T, len(FEATURES)]


@dataclass
class VideoAnalysis:
    height: int
    width: int
    fps: float
    background: np.ndarray  # [T] colour class index of the background (UNKNOWN: none)
    background_lab: np.ndarray  # [T, 3] mean CIELAB of background pixels
    flicker: np.ndarray  # [T] mean |frame(t) - frame(t-1)| / 255 on static background; NaN at t=0
    tracks: dict[str, Track] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.background)


def _new_track(colour: str, num: int) -> Track:
    nan = lambda *shape: np.full((num, *shape), np.nan)  # noqa: E731
    return Track(colour, np.zeros(num, bool), nan(), nan(), nan(), np.zeros(num, bool), nan(len(FEATURES)))


PROFILE_BINS = 32  # angular bins of the outline radius profile


def blob_features(blob: np.ndarray) -> np.ndarray:
    """Shape features (FEATURES) of one blob cropped to its bounding box.
    bool [h, w] -> [len(FEATURES)]"""
    h, w = blob.shape
    ys, xs = np.nonzero(blob)
    area = float(len(ys))
    inradius = float(ndimage.distance_transform_edt(np.pad(blob, 1)).max()) - 0.5
    # Outline radius per angle: the farthest pixel (outer edge, hence + 0.5) in each bin.
    dy, dx = ys - ys.mean(), xs - xs.mean()
    angle = np.arctan2(dy, dx)
    bins = ((angle + np.pi) * (PROFILE_BINS / (2 * np.pi))).astype(np.int64) % PROFILE_BINS
    profile = np.zeros(PROFILE_BINS)
    np.maximum.at(profile, bins, np.hypot(dx, dy) + 0.5)
    centres = (np.arange(PROFILE_BINS) + 0.5) * (2 * np.pi / PROFILE_BINS) - np.pi
    coeff = (profile[None, :] * np.exp(-1j * np.arange(6)[:, None] * centres[None, :])).mean(1)  # [6]
    rel = np.abs(coeff) / max(abs(coeff[0]), 1e-6)
    return np.array([
        area / (h * w),
        float(np.mean(ys + 0.5 < h / 2)),
        area / (math.pi * max(inradius, 0.5) ** 2),
        rel[3],
        rel[4] * math.cos(float(np.angle(coeff[4]))),
        rel[5],
    ])


def coverage(frame: np.ndarray, blob: np.ndarray, distance: np.ndarray, ring: int) -> np.ndarray:
    """How much of each pixel near a blob the object covers, from its colour: 1 inside,
    ~0.5 on a half-covered (anti-aliased or blurred) edge pixel, 0 on background.
    Measured along the line from the local background colour (a ring just outside)
    to the object's colour. Whole-pixel masks make the centre jump by ~0.5 px as edge
    pixels flip, which reads as jerky motion, and lose the outline of small shapes.
    frame: uint8 [h, w, 3], blob: bool [h, w] and distance (pixels to the blob)
    [h, w], cropped with `ring` + 1 pixels to spare -> float32 [h, w]"""
    near = distance <= ring
    around = (distance > ring) & (distance <= ring + 1.5)
    pixels = frame.astype(np.float32)
    colour = np.median(pixels[blob], axis=0)
    local_bg = np.median(pixels[around], axis=0) if around.any() else colour
    axis = colour - local_bg
    norm = float(axis @ axis)
    if norm < 100.0:  # object and surroundings alike: whole pixels are all there is
        return blob.astype(np.float32)
    return np.clip((pixels - local_bg) @ axis / norm, 0.0, 1.0) * near


def outline(weight: np.ndarray, extent: int) -> np.ndarray:
    """The shape's outline at sub-pixel precision for small blobs: coverage upsampled
    (bilinear) until the blob is ~OUTLINE_PX across, then cut at one half, and
    cropped to its bounding box. float [h, w] -> bool [h', w']"""
    factor = min(4, max(1, -(-OUTLINE_PX // max(extent, 1))))
    if factor > 1:
        weight = ndimage.zoom(weight, factor, order=1, grid_mode=True, mode="nearest")
    mask = weight >= 0.5
    if not mask.any():
        return mask
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


OUTLINE_PX = 40


def analyse(frames: np.ndarray, fps: float, config: EvalConfig = EvalConfig()) -> VideoAnalysis:
    """frames: uint8 [T, H, W, 3] -> VideoAnalysis"""
    num, height, width, _ = frames.shape
    result = VideoAnalysis(height, width, fps, np.zeros(num, np.int64), np.zeros((num, 3)), np.full(num, np.nan))
    result.tracks = {COLOUR_NAMES[c]: _new_track(COLOUR_NAMES[c], num) for c in OBJECT_CLASSES}
    previous: tuple[np.ndarray, np.ndarray] | None = None  # last frame and its static-background mask
    for start in range(0, num, config.batch_frames):
        batch = frames[start:start + config.batch_frames]
        previous = _analyse_batch(batch, start, previous, result, config)
    result.tracks = {k: t for k, t in result.tracks.items() if t.present.any()}
    return result


def _analyse_batch(batch: np.ndarray, start: int, previous, result: VideoAnalysis, config: EvalConfig):
    count, height, width, _ = batch.shape
    labels = classify_pixels(batch, config.max_colour_distance)  # [B, H, W]
    per_frame = np.arange(count)[:, None, None] * NUM_CLASSES
    counts = np.bincount((labels + per_frame).ravel(), minlength=count * NUM_CLASSES).reshape(count, NUM_CLASSES)
    background = counts[:, :UNKNOWN].argmax(1)  # [B]
    # No colour covering enough of the frame (noise, clutter): no background.
    background[counts[np.arange(count), background] < config.min_background_share * height * width] = UNKNOWN
    is_bg = labels == background[:, None, None]  # [B, H, W]
    mean_rgb = np.einsum("bhwc,bhw->bc", batch.astype(np.float64), is_bg) / np.maximum(is_bg.sum((1, 2)), 1)[:, None]
    result.background[start:start + count] = background
    result.background_lab[start:start + count] = rgb_to_lab(mean_rgb)

    # Static background: background-coloured pixels away from anything else, in both
    # this frame and the one before (so moving objects and their fringes are left out).
    static = ndimage.binary_erosion(is_bg, SQUARE_3x3, iterations=config.background_margin_px, border_value=1)
    frames = np.concatenate([previous[0][None], batch]) if previous else batch
    masks = np.concatenate([previous[1][None], static]) if previous else static
    both = masks[1:] & masks[:-1]  # [B or B-1, H, W]
    diff = np.abs(frames[1:].astype(np.int16) - frames[:-1].astype(np.int16)).mean(-1) / 255.0
    static_px = both.sum((1, 2))
    # A frame with no static background at all (noise, or objects everywhere) is
    # judged on all its pixels.
    flicker = np.where(static_px > 0, (diff * both).sum((1, 2)) / np.maximum(static_px, 1), diff.mean((1, 2)))
    result.flicker[start + (0 if previous else 1):start + count] = flicker

    # Shapes wrap round the frame (a torus): the right and bottom are padded with the
    # opposite edges, so an object crossing an edge is one whole blob in the padded
    # frame rather than two cut halves.
    wrap = int(math.ceil(config.wrap_pad * min(height, width)))
    tiled = np.pad(batch, ((0, 0), (0, wrap), (0, wrap), (0, 0)), mode="wrap")  # [B, H + wrap, W + wrap, 3]
    labels = np.pad(labels, ((0, 0), (0, wrap), (0, wrap)), mode="wrap")
    min_area = config.min_area_fraction * height * width
    chosen: dict[int, list[tuple[int, tuple[slice, slice], np.ndarray]]] = {}  # frame -> (class, box, blob)
    for c in OBJECT_CLASSES:
        if counts[:, c].max() < min_area:
            continue
        # Objects stand on a background: a frame without one (noise, clutter) has none.
        mask = (labels == c) & ((background != c) & (background != UNKNOWN))[:, None, None]
        mask = ndimage.binary_opening(mask, SQUARE_3x3)
        blobs, n = ndimage.label(mask, CONNECT_8)
        if n == 0:
            continue
        sizes = np.bincount(blobs.ravel())[1:]
        boxes = ndimage.find_objects(blobs)
        # The largest blob of each frame is the object; smaller ones are fragments.
        for i in np.argsort(-sizes, kind="stable"):
            if sizes[i] < min_area:
                break
            t = boxes[i][0].start
            if any(k == c for k, _, _ in chosen.get(t, ())):
                continue
            blob = blobs[boxes[i]][0] == i + 1  # [h, w]
            if blob_features(blob)[F_THINNESS] > config.max_thinness:
                continue  # a fringe ring around another object, or a smear
            chosen.setdefault(t, []).append((c, boxes[i][1:], blob))
    for t, found in chosen.items():
        _measure_frame(tiled[t], found, result, start + t, (height, width), config)
    return batch[-1], static[-1]


def _measure_frame(frame: np.ndarray, found: list, result: VideoAnalysis, k: int, size: tuple[int, int],
                   config: EvalConfig) -> None:
    """Position, area, shape and clipping of each object chosen in frame k.
    frame: uint8 [H + wrap, W + wrap, 3] (torus-padded); size: the unpadded (H, W);
    found: [(class, (row slice, col slice), bool blob [h, w])] in padded coordinates"""
    height, width = size
    pad = config.edge_ring_px + 1
    owner = np.zeros(frame.shape[:2], np.int16)  # which object each pixel belongs to (class + 1)
    for c, (rows, cols), blob in found:
        owner[rows, cols][blob] = c + 1
    for c, (rows, cols), blob in found:
        r0, r1 = max(0, rows.start - pad), min(frame.shape[0], rows.stop + pad)
        c0, c1 = max(0, cols.start - pad), min(frame.shape[1], cols.stop + pad)
        others = owner[r0:r1, c0:c1]
        inside = others == c + 1
        distance = ndimage.distance_transform_edt(~inside)  # [h, w] pixels to the blob
        weight = coverage(frame[r0:r1, c0:c1], inside, distance, config.edge_ring_px)
        weight = np.where((others == 0) | inside, weight, 0.0)  # another object's pixels are not this one's
        touching = bool(np.any((others != 0) & ~inside & (distance <= 2.5)))
        total = float(weight.sum())
        grid_r, grid_c = np.mgrid[r0:r1, c0:c1]
        track = result.tracks[COLOUR_NAMES[c]]
        track.present[k] = True
        track.x[k] = float((weight * (grid_c + 0.5)).sum() / total) % width
        track.y[k] = float((weight * (grid_r + 0.5)).sum() / total) % height
        track.area[k] = total
        track.clipped[k] = touching or _cut(owner == c + 1, rows, cols, height, width)
        track.features[k] = blob_features(outline(weight, max(blob.shape)))


def _cut(mask: np.ndarray, rows: slice, cols: slice, height: int, width: int) -> bool:
    """Whether a blob in the torus-padded frame is cut: it touches the padded frame's
    outer edge, or stops at a seam (original edge) on one side only, which is an
    object leaving a frame that does not wrap. mask: bool [H + wrap, W + wrap]"""
    if rows.start == 0 or cols.start == 0 or rows.stop == mask.shape[0] or cols.stop == mask.shape[1]:
        return True
    if cols.start <= width <= cols.stop and mask[rows, width - 1].any() != mask[rows, width].any():
        return True
    return rows.start <= height <= rows.stop and mask[height - 1, cols].any() != mask[height, cols].any()
