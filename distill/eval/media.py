"""Reading videos to judge and writing what a person looks at: PNG frame grids,
GIFs and MP4s (PyAV)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from distill.data.video_folder import decode_video


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames of a video file at its own rate. -> (uint8 [T, H, W, 3], fps)"""
    return decode_video(path)


def write_mp4(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """H.264 (MPEG-4 part 2 if this FFmpeg lacks libx264), yuv420p so players accept it.
    frames: uint8 [T, H, W, 3] (odd sizes are padded by one pixel)"""
    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """frames: uint8 [T, H, W, 3]"""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)


def frame_grid(rows: list[np.ndarray], columns: int = 8, labels: list[str] | None = None) -> np.ndarray:
    """One row per video: `columns` frames evenly spaced in time, with an optional
    caption line above each row. rows: [uint8 [T, H, W, 3]] -> uint8 [H', W', 3]"""
    height, width = rows[0].shape[1:3]
    label_h = 14 if labels else 0
    grid = np.full((len(rows) * (height + label_h), columns * width, 3), 255, np.uint8)
    for r, video in enumerate(rows):
        picks = np.linspace(0, len(video) - 1, columns).round().astype(int)
        top = r * (height + label_h) + label_h
        for c, t in enumerate(picks):
            grid[top:top + height, c * width:(c + 1) * width] = video[t, :height, :width]
    image = Image.fromarray(grid)
    if labels:
        draw = ImageDraw.Draw(image)
        for r, text in enumerate(labels):
            draw.text((2, r * (height + label_h) + 1), text[: columns * width // 6], fill=(0, 0, 0))
    return np.asarray(image)


def tile_videos(videos: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Several videos side by side, as one video as long as the shortest.
    [uint8 [T, H, W, 3]] -> uint8 [T, H * rows, W * columns, 3]"""
    length = min(len(v) for v in videos)
    height, width = videos[0].shape[1:3]
    rows = -(-len(videos) // columns)
    out = np.zeros((length, rows * height, min(columns, len(videos)) * width, 3), np.uint8)
    for i, v in enumerate(videos):
        r, c = divmod(i, columns)
        out[:, r * height:(r + 1) * height, c * width:(c + 1) * width] = v[:length, :height, :width]
    return out
