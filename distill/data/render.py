"""Rasterise Shapes scenes with numpy: backgrounds once per clip, each object as one
vectorised pass over a small box that follows it through all frames.

Shapes are drawn from signed distances with a one-pixel anti-aliased edge, on a
torus (pixel indices wrap), so an object leaving one side enters from the other.
Every shape fits a box of its outer width `d`: a circle of diameter d, a square of
side d, an isosceles triangle of base and height d (apex up), a diamond with
diagonals d, a five-pointed star of outer radius d / 2 (point up).
"""

from __future__ import annotations

import math

import numpy as np

from engine.shapes import vocab
from engine.shapes.scene import Background, Scene, object_state

# Stripes and gradients vary the background's shade by at most this much (a mix
# towards black for light colours, towards white for dark ones), small enough that
# every shade keeps its colour name (tests/test_shapes.py checks it).
BACKGROUND_SHADE = 0.15
STAR_INNER_RATIO = 0.5  # inner / outer radius: a fat star stays a star under blur
# Area of each shape over its outer width squared (the evaluator sizes objects by
# area, which blur and anti-aliasing preserve better than the outline).
SHAPE_AREA: dict[str, float] = {
    "circle": math.pi / 4,
    "square": 1.0,
    "triangle": 0.5,
    "diamond": 0.5,
    # ten triangles (centre, point, inner corner): 10 * R * r * sin(36 deg) / 2, R = 1/2
    "star": 5 * 0.5 * (0.5 * STAR_INNER_RATIO) * math.sin(math.pi / 5),
}


def shade_target(rgb: tuple[int, int, int]) -> np.ndarray:
    """The colour a background shades towards: black for light colours, white for dark."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return np.zeros(3) if luma > 110 else np.full(3, 255.0)


def render_background(bg: Background, height: int, width: int) -> np.ndarray:
    """-> uint8 [H, W, 3]"""
    base = np.asarray(vocab.ALL_COLOURS[bg.colour], np.float32)
    if bg.pattern == "solid":
        return np.broadcast_to(base.astype(np.uint8), (height, width, 3)).copy()
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    a = math.radians(bg.angle)
    along = xs * math.cos(a) + ys * math.sin(a)  # [H, W] pixels along the pattern direction
    if bg.pattern == "gradient":
        amount = (along - along.min()) / max(1e-6, float(along.max() - along.min()))
    else:  # stripes: alternate bands of the base colour and its shade
        band = bg.stripe_width * min(height, width)
        amount = (np.floor(along / band) % 2).astype(np.float32)
    mix = BACKGROUND_SHADE * amount[..., None]  # [H, W, 1]
    img = base * (1 - mix) + shade_target(vocab.ALL_COLOURS[bg.colour]) * mix
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (negative inside) from offsets to the shape's centre.
    dx, dy: [T, B, B]; d: outer width [T, 1, 1] -> [T, B, B]"""
    half = d / 2
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - half) * (1 / math.sqrt(2))
    if shape == "triangle":
        # Apex (0, -h), base corners (+-h, h) with h = d/2: the base line and the two
        # slanted sides (normals (+-2, -1)/sqrt 5, through the apex).
        inv = 1 / math.sqrt(5)
        base = dy - half
        side = (2 * np.abs(dx) - dy - half) * inv
        return np.maximum(base, side)
    if shape == "star":
        # Radius of the star's outline along each pixel's direction from the centre
        # (a straight edge between an outer point and an inner corner), then the
        # radial distance to it: exact enough for a one-pixel edge.
        rho = np.sqrt(dx * dx + dy * dy)
        alpha = np.mod(np.arctan2(dy, dx) + math.pi / 2, 2 * math.pi / 5)  # angle past the nearest point
        alpha = np.minimum(alpha, 2 * math.pi / 5 - alpha)  # mirror into [0, 36 deg]
        inner = STAR_INNER_RATIO * half
        edge_angle = math.pi / 5
        outline = (half * inner * math.sin(edge_angle)) / (half * np.sin(alpha) + inner * np.sin(edge_angle - alpha))
        return rho - outline
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(shape: str, x: np.ndarray, y: np.ndarray, d: np.ndarray, height: int,
              width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where one object lies: flat indices into [T * H * W] pixels and each one's coverage
    in (0, 1]. x, y: centre in pixels [T]; d: outer width in pixels [T]"""
    num = len(x)
    box = int(math.ceil(float(d.max()))) + 3  # covers the shape plus its soft edge
    offsets = np.arange(box) - box // 2  # [B]
    x0 = np.floor(x).astype(np.int64)[:, None] + offsets  # [T, B] pixel columns
    y0 = np.floor(y).astype(np.int64)[:, None] + offsets  # [T, B] pixel rows
    dx = (x0 + 0.5 - x[:, None])[:, None, :]  # [T, 1, B] pixel centre minus object centre
    dy = (y0 + 0.5 - y[:, None])[:, :, None]  # [T, B, 1]
    dx, dy = np.broadcast_arrays(dx, dy)
    sd = signed_distance(shape, dx.astype(np.float32), dy.astype(np.float32), d[:, None, None].astype(np.float32))
    alpha = np.clip(0.5 - sd, 0.0, 1.0).ravel()  # [T * B * B] coverage of each pixel
    # Flat pixel indices into frames viewed as [T * H * W, ...]: one gather and one
    # scatter of just the covered pixels (much faster than 3-array fancy indexing).
    flat = ((np.arange(num)[:, None, None] * height + (y0 % height)[:, :, None]) * width
            + (x0 % width)[:, None, :]).ravel()
    covered = alpha > 0
    return flat[covered], alpha[covered]


def draw_object(frames: np.ndarray, colour: tuple[int, int, int], shape: str,
                x: np.ndarray, y: np.ndarray, d: np.ndarray) -> None:
    """Composite one object into frames in place.
    frames: uint8 [T, H, W, 3]; x, y: centre in pixels [T]; d: outer width in pixels [T]"""
    _, height, width, _ = frames.shape
    flat, alpha = _coverage(shape, x, y, d, height, width)
    pixels = frames.reshape(-1, 3)
    patch = pixels[flat].astype(np.float32)  # [N, 3]
    patch += (np.asarray(colour, np.float32) - patch) * alpha[:, None]
    pixels[flat] = np.rint(patch).astype(np.uint8)


def shape_maps(scene: Scene, frame_indices: np.ndarray, height: int, width: int, fps: float) -> np.ndarray:
    """What each pixel shows, as the frames show it: channel 0 the background, channel
    1 + i the shape vocab.SHAPES[i], composited back to front with the same coverage as
    the colours (so the channels sum to 1). frame_indices: [T] -> float32 [T, H, W, 1 + S]"""
    maps = np.zeros((len(frame_indices), height, width, 1 + len(vocab.SHAPES)), np.float32)
    maps[..., 0] = 1.0
    t = (np.asarray(frame_indices, np.float64) - scene.start_frame) / fps
    pixels = maps.reshape(-1, maps.shape[-1])
    for obj in scene.objects:
        x, y, d = object_state(obj, t, height, width)
        flat, alpha = _coverage(obj.shape, x, y, d, height, width)
        onehot = np.zeros(maps.shape[-1], np.float32)
        onehot[1 + vocab.SHAPES.index(obj.shape)] = 1.0
        patch = pixels[flat]
        pixels[flat] = patch + (onehot - patch) * alpha[:, None]
    return maps


def render_scene(scene: Scene, frame_indices: np.ndarray, height: int, width: int, fps: float,
                 background: np.ndarray | None = None) -> np.ndarray:
    """Frames of one scene at absolute frame indices (>= scene.start_frame).
    frame_indices: [T] -> uint8 [T, H, W, 3]"""
    if background is None:
        background = render_background(scene.background, height, width)
    frames = np.broadcast_to(background, (len(frame_indices), height, width, 3)).copy()
    t = (np.asarray(frame_indices, np.float64) - scene.start_frame) / fps
    for obj in scene.objects:
        x, y, d = object_state(obj, t, height, width)
        draw_object(frames, vocab.OBJECT_COLOURS[obj.colour], obj.shape, x, y, d)
    return frames


def render_timeline(scenes: list[Scene], start_frame: int, num_frames: int,
                    height: int, width: int, fps: float) -> np.ndarray:
    """Frames [start_frame, start_frame + num_frames) of a clip whose scene changes at
    each scene's `start_frame` (sorted, the first starting at or before start_frame).
    -> uint8 [T, H, W, 3]"""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    idx = np.arange(start_frame, start_frame + num_frames)
    for i, scene in enumerate(scenes):
        end = scenes[i + 1].start_frame if i + 1 < len(scenes) else idx[-1] + 1
        sel = (idx >= scene.start_frame) & (idx < end)
        if sel.any():
            frames[sel] = render_scene(scene, idx[sel], height, width, fps)
    return frames
