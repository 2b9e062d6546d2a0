"""Named-colour classification of pixels in CIELAB, through a lookup table.

Every pixel is given the name of the nearest Shapes colour (vocab.ALL_COLOURS) by
CIE76 Delta E, or "unknown" when none is within `max_distance`. The table is indexed
by RGB quantised to 5 bits per channel (32^3 entries), so classifying a video is one
gather; the quantisation error (<= 4 levels a channel) is far below the ~40 Delta E
between named colours.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from engine.shapes import vocab

COLOUR_NAMES: tuple[str, ...] = tuple(vocab.ALL_COLOURS)  # class index -> name
UNKNOWN = len(COLOUR_NAMES)  # class index of pixels near no named colour
CLASS_NAMES: tuple[str, ...] = COLOUR_NAMES + ("unknown",)  # class index -> name, UNKNOWN included
OBJECT_CLASSES: tuple[int, ...] = tuple(COLOUR_NAMES.index(c) for c in vocab.OBJECT_COLOURS)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255) -> CIELAB (D65). [..., 3] -> [..., 3]"""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(np.maximum(xyz, eps)), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


PROTOTYPES_LAB = rgb_to_lab(np.array(list(vocab.ALL_COLOURS.values()), np.float64))  # [K, 3]


@lru_cache(maxsize=4)
def colour_table(max_distance: float) -> np.ndarray:
    """uint8 [32, 32, 32]: class index of each quantised RGB cell (centre value)."""
    levels = np.arange(32) * 8 + 4
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1)  # [32, 32, 32, 3]
    dist = np.linalg.norm(rgb_to_lab(grid)[..., None, :] - PROTOTYPES_LAB, axis=-1)  # [32, 32, 32, K]
    classes = dist.argmin(-1)
    classes[dist.min(-1) > max_distance] = UNKNOWN
    return classes.astype(np.uint8)


def classify_pixels(frames: np.ndarray, max_distance: float = 40.0) -> np.ndarray:
    """uint8 [..., 3] RGB -> uint8 [...] colour class index (UNKNOWN where none fits)."""
    q = np.asarray(frames, np.uint8) >> 3
    return colour_table(max_distance)[q[..., 0], q[..., 1], q[..., 2]]
