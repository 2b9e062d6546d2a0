"""Folders of real videos: decoded with PyAV to fixed-length clips at a given size and
fps; missing, corrupt, truncated and too-short files are skipped and reported, never
a crash mid-epoch. Every video here is written by the test with PyAV."""

from __future__ import annotations

import json
import warnings

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from distill.data.video_folder import VideoDecodeError, VideoFolderDataset, decode_video


def write_video(path, num_frames: int, fps: int, height: int = 48, width: int = 64) -> None:
    """Frame i is grey level 4 * i on the left half and red on the right half, so a
    decoded frame tells which source frame it is and that colours survive."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)  # lossless: levels read back exactly
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            img = np.full((height, width, 3), 4 * i, np.uint8)
            img[:, width // 2:] = (200, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def source_index(frame: np.ndarray) -> int:
    """Which source frame a decoded frame shows (from the grey level on its left)."""
    return int(round(float(frame[:, : frame.shape[1] // 4].mean()) / 4))


@pytest.fixture()
def folder(tmp_path):
    write_video(tmp_path / "ramp.mkv", 30, 10)  # 3 s
    write_video(tmp_path / "long.mkv", 60, 20)  # 3 s at 20 fps
    write_video(tmp_path / "short.mkv", 5, 10)  # 0.5 s: too short for 1.6 s clips
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    write_video(tmp_path / "cut.mkv", 30, 10)
    data = (tmp_path / "cut.mkv").read_bytes()  # header intact (says 3 s), frames cut short
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 3])
    lines = [
        {"file": "ramp.mkv", "caption": "a grey ramp"},
        {"file": "missing.mp4", "caption": "nothing"},
        {"file": "corrupt.mp4", "caption": "garbage"},
        {"file": "cut.mkv", "caption": "truncated"},
        {"file": "short.mkv", "caption": "too short"},
        {"file": "long.mkv", "caption": "a faster ramp"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\nnot json\n"
    (tmp_path / "captions.jsonl").write_text(text)
    return tmp_path


def test_decode_resamples_frame_rate_and_resizes(folder):
    frames, fps = decode_video(folder / "ramp.mkv")
    assert fps == 10 and frames.shape == (30, 48, 64, 3)
    assert [source_index(f) for f in frames] == list(range(30))
    half, _ = decode_video(folder / "ramp.mkv", fps=5, size=(32, 32), start_s=1.0, num_frames=4)
    assert half.shape == (4, 32, 32, 3)
    assert [source_index(f) for f in half] == [10, 12, 14, 16]
    double, _ = decode_video(folder / "ramp.mkv", fps=20, num_frames=6)
    assert [source_index(f) for f in double] == [0, 0, 1, 1, 2, 2]
    # Scale to cover then centre-crop: the right half stays red.
    assert np.abs(half[:, :, -4:].astype(int) - (200, 30, 30)).max() < 24
    with pytest.raises(VideoDecodeError, match="too short"):
        decode_video(folder / "ramp.mkv", fps=10, num_frames=40)
    with pytest.raises(VideoDecodeError):
        decode_video(folder / "corrupt.mp4")


def test_bad_files_are_skipped_and_reported(folder):
    with pytest.warns(UserWarning, match="skipping video"):
        ds = VideoFolderDataset(folder, folder / "captions.jsonl", num_frames=16, height=32, width=32, fps=10)
    reasons = {s.file: s.reason for s in ds.skipped}
    assert reasons["missing.mp4"] == "missing file"
    assert reasons["corrupt.mp4"].startswith("unreadable")
    assert reasons["short.mkv"].startswith("too short")
    assert any(f.endswith("captions.jsonl:7") for f in reasons)  # the line that is not JSON
    # The truncated file's header promises 3 s, so it is only found out when decoded.
    assert [e[0] for e in ds.entries] == ["ramp.mkv", "cut.mkv", "long.mkv"]


def test_items_are_fixed_length_clips_and_a_failing_file_is_replaced(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = VideoFolderDataset(folder, folder / "captions.jsonl", num_frames=16, height=32, width=32, fps=10)
    item = ds[0]
    assert item["video"].shape == (3, 16, 32, 32) and item["video"].dtype == torch.float32
    assert -1.0 <= item["video"].min() <= item["video"].max() <= 1.0
    assert item["caption"] == "a grey ramp" and item["file"] == "ramp.mkv"
    with pytest.warns(UserWarning, match="cut.mkv: decode failed"):
        replaced = ds[1]
    assert replaced["file"] == "long.mkv" and replaced["caption"] == "a faster ramp"
    # long.mkv is 20 fps; at 10 fps every other source frame is kept.
    frames = ((replaced["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert [source_index(f) for f in frames[:4]] == [0, 2, 4, 6]
    assert "cut.mkv" in {s.file for s in ds.skipped}
    # A whole epoch through a loader runs to the end.
    loader = DataLoader(ds, batch_size=3, num_workers=0)
    batches = list(loader)
    assert sum(len(b["caption"]) for b in batches) == len(ds)


def test_random_starts_are_deterministic(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = VideoFolderDataset(folder, folder / "captions.jsonl", num_frames=8, height=16, width=16, fps=10,
                                random_start=True, seed=1)
        again = VideoFolderDataset(folder, folder / "captions.jsonl", num_frames=8, height=16, width=16, fps=10,
                                   random_start=True, seed=1)
    assert torch.equal(ds[0]["video"], again[0]["video"])
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        frames = ((ds[0]["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        starts.add(source_index(frames[0]))
    assert len(starts) > 1 and max(starts) <= 30 - 8


def test_an_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "gone.mp4", "caption": "x"}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no usable videos"):
            VideoFolderDataset(tmp_path, tmp_path / "captions.jsonl")
