"""A dataset of the user's own videos: a folder of video files and a captions JSONL.

    captions.jsonl:  {"file": "clips/cat.mp4", "caption": "a cat walks left"}  (one per line,
                     paths relative to the folder)
    ds = VideoFolderDataset("data/", "data/captions.jsonl", num_frames=16, height=128, width=128, fps=16)
    ds[0]  # {"video": float [3, T, H, W] in [-1, 1], "caption": str, "file": str}
    ds.skipped  # [SkippedVideo(file, reason)] for missing, unreadable or too-short videos

Videos are decoded with PyAV, resampled to `fps` (each output frame is the last
source frame shown at its time), scaled so the shorter side fits and centre-cropped.
A bad file never stops an epoch: files are probed up front and bad ones left out,
and a file that fails to decode later is recorded, warned about once, and replaced
by the next good one.

The trainers draw from a folder through `VideoClips` (`--data DIR` of `framecast distill
autoencoder` and `teacher`): random clips as uint8 frames, a function of a seed and step.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)


class VideoDecodeError(Exception):
    """A video that cannot be read, or has fewer frames than asked for."""


@dataclass(frozen=True)
class SkippedVideo:
    file: str
    reason: str


def decode_video(path: str | Path, fps: float | None = None, size: tuple[int, int] | None = None,
                 start_s: float = 0.0, num_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Frames of a video file from `start_s` on, at `fps` (None: the file's own rate)
    and `size` (height, width; None: the file's own, else scale-to-cover and centre
    crop). Reads only as far as needed. -> (uint8 [T, H, W, 3], fps)
    Raises VideoDecodeError for unreadable files or fewer than `num_frames` frames."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            out_fps = float(fps or rate)
            frames = _resampled(container, stream, out_fps, rate, size, start_s, num_frames)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoDecodeError(f"{type(exc).__name__}: {exc}") from exc
    if not frames or (num_frames is not None and len(frames) < num_frames):
        raise VideoDecodeError(f"too short: {len(frames)} frames from {start_s:.2f} s at {out_fps:g} fps, "
                               f"{num_frames or 1} needed")
    return np.stack(frames), out_fps


def _resampled(container, stream, fps: float, source_fps: float, size, start_s: float,
               num_frames: int | None) -> list[np.ndarray]:
    """Decode in order, emitting for each output time t_k = start_s + k / fps the last
    source frame whose time is <= t_k (so frames repeat when upsampling the rate and
    are dropped when downsampling)."""
    if start_s > 1.0 and stream.time_base:
        # Jump to the keyframe before the start instead of decoding everything up to it.
        container.seek(int(start_s / stream.time_base), stream=stream, backward=True, any_frame=False)
    out: list[np.ndarray] = []
    held, held_array = None, None  # the latest decoded frame (converted only when used)
    slack = 0.25 / source_fps  # tolerance for timestamps rounded by the container
    t = 0.0
    for index, frame in enumerate(container.decode(stream)):
        t = float(frame.time) if frame.time is not None else index / source_fps
        while held is not None and t > start_s + len(out) / fps + slack:
            if held_array is None:
                held_array = _to_array(held, size)
            out.append(held_array)
            if num_frames is not None and len(out) >= num_frames:
                return out
        held, held_array = frame, None
    end = t + 1.0 / source_fps  # the last frame shows until the video ends
    while held is not None and start_s + len(out) / fps < end - slack:
        out.append(held_array if held_array is not None else _to_array(held, size))
        held_array = out[-1]
        if num_frames is not None and len(out) >= num_frames:
            break
    return out


def _to_array(frame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    height, width = size
    scale = max(height / frame.height, width / frame.width)  # cover, then crop the overflow
    h, w = max(height, round(frame.height * scale)), max(width, round(frame.width * scale))
    img = frame.to_ndarray(format="rgb24", width=w, height=h)
    top, left = (h - height) // 2, (w - width) // 2
    return img[top:top + height, left:left + width]


def probe_seconds(path: str | Path) -> float:
    """Duration of a video in seconds (decoding it if the container does not say)."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / av.time_base
        last = 0.0
        for frame in container.decode(stream):
            last = float(frame.time or 0.0)
        return last


class VideoFolderDataset(Dataset):
    """Fixed-length captioned clips from a folder of videos (see module doc).

    Each item is one clip of `num_frames` at `fps`, starting at 0 or, with
    `random_start`, at a start drawn from (seed, epoch, index)."""

    def __init__(self, folder: str | Path, captions: str | Path, num_frames: int = 16, height: int = 128,
                 width: int = 128, fps: float = 16, random_start: bool = False, seed: int = 0):
        self.folder = Path(folder)
        self.num_frames, self.size, self.fps = num_frames, (height, width), fps
        self.random_start, self.seed, self.epoch = random_start, seed, 0
        self.skipped: list[SkippedVideo] = []
        self.entries: list[tuple[str, str, float]] = []  # (file, caption, seconds)
        need = num_frames / fps
        for line_no, line in enumerate(Path(captions).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                file, caption = str(record["file"]), str(record["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                self._skip(f"{captions}:{line_no}", f"bad captions line: {exc}")
                continue
            path = self.folder / file
            if not path.is_file():
                self._skip(file, "missing file")
                continue
            try:
                seconds = probe_seconds(path)
            except (av.error.FFmpegError, OSError, VideoDecodeError) as exc:
                self._skip(file, f"unreadable: {exc}")
                continue
            if seconds + 0.5 / fps < need:
                self._skip(file, f"too short: {seconds:.2f} s, {need:.2f} s needed")
                continue
            self.entries.append((file, caption, seconds))
        if not self.entries:
            raise ValueError(f"no usable videos in {self.folder} (skipped {len(self.skipped)})")

    def _skip(self, file: str, reason: str) -> None:
        self.skipped.append(SkippedVideo(file, reason))
        warnings.warn(f"skipping video {file}: {reason}", stacklevel=3)
        log.warning("skipping video %s: %s", file, reason)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        # A file that fails now (corrupt past its header) is dropped and the next one
        # served, so an epoch never stops on a bad video.
        for step in range(len(self.entries)):
            file, caption, seconds = self.entries[(index + step) % len(self.entries)]
            if any(s.file == file for s in self.skipped):
                continue
            start = 0.0
            if self.random_start:
                slack = max(0.0, seconds - self.num_frames / self.fps)
                rng = np.random.default_rng([self.seed, self.epoch, index])
                start = float(rng.uniform(0.0, slack))
            try:
                frames, _ = decode_video(self.folder / file, self.fps, self.size, start, self.num_frames)
            except VideoDecodeError as exc:
                self._skip(file, f"decode failed: {exc}")
                continue
            video = torch.from_numpy(frames[: self.num_frames]).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)
            return {"video": video, "caption": caption, "file": file}  # video: [3, T, H, W]
        raise RuntimeError(f"every video in {self.folder} failed to decode: {self.skipped}")


# --- random clips for the trainers -------------------------------------------------------------

@dataclass(frozen=True)
class VideoClip:
    """A clip as the Shapes world gives one: uint8 frames [T, H, W, 3] and its caption."""

    frames: np.ndarray
    caption: str

    @property
    def captions(self) -> list[str]:  # the Shapes world's clips carry paraphrases; a video has its one caption
        return [self.caption]


class VideoClips:
    """Random fixed-length clips of a folder's videos (captions.jsonl beside them), drawn
    with the caller's numpy generator, so a trainer's batch is a function of its seed and
    step: a resumed run sees the clips it would have seen. Each draw takes two numbers from
    the generator (which video, where in it) whatever happens, and a video that fails to
    decode is recorded and the next one used."""

    def __init__(self, folder: str | Path, num_frames: int, height: int, width: int, fps: float):
        folder = Path(folder)
        self.dataset = VideoFolderDataset(folder, folder / "captions.jsonl", num_frames, height, width, fps)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, rng: np.random.Generator) -> VideoClip:
        ds = self.dataset
        index, where = int(rng.integers(len(ds.entries))), float(rng.random())
        for step in range(len(ds.entries)):
            file, caption, seconds = ds.entries[(index + step) % len(ds.entries)]
            if any(s.file == file for s in ds.skipped):
                continue
            start = where * max(0.0, seconds - ds.num_frames / ds.fps)
            try:
                frames, _ = decode_video(ds.folder / file, ds.fps, ds.size, start, ds.num_frames)
            except VideoDecodeError as exc:
                ds._skip(file, f"decode failed: {exc}")
                continue
            return VideoClip(frames[: ds.num_frames], caption)
        raise RuntimeError(f"every video in {ds.folder} failed to decode: {ds.skipped}")
