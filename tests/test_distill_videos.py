"""The training chain on real video: a folder of mp4s (written here with PyAV) and their
captions.jsonl train the autoencoder, then the teacher on its latents, then a student from
the folder's captions as a prompt file, all through `framecast distill`."""

import json

import av
import numpy as np
import pytest

from framecast.cli import main
from engine import load_model

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def write_mp4(path, colour: str, direction: int, seconds: float = 1.5, fps: int = 16) -> None:
    """A square of `colour` sliding across a grey frame, H.264 in MP4."""
    height, width = 48, 64
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.full((height, width, 3), 128, np.uint8)
            x = (8 + 2 * i * direction) % (width - 16)
            img[16:32, x : x + 16] = COLOURS[colour]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    lines = []
    for i, (colour, direction) in enumerate([("red", 1), ("green", -1), ("blue", 1), ("red", -1)]):
        name = f"clips/{i}.mp4"
        (folder / "clips").mkdir(exist_ok=True)
        write_mp4(folder / name, colour, direction)
        lines.append({"file": name, "caption": f"a {colour} square moving {'right' if direction > 0 else 'left'}"})
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": line["caption"]}) for line in lines) + "\n")
    return folder


def test_video_clips_are_a_function_of_seed_and_step(videos):
    from dataclasses import replace

    from distill.train_autoencoder import PRESETS, clip_source, training_batch

    run = replace(PRESETS["tiny"], data=str(videos))
    clips, again = clip_source(run, run.num_frames), clip_source(run, run.num_frames)
    a, b, c = training_batch(clips, run, 3), training_batch(again, run, 3), training_batch(clips, run, 4)
    assert len(clips) == 4 and a.shape == (2, 3, 8, 32, 32)
    assert (a == b).all() and not (a == c).all()  # a resumed run sees the clips it would have seen
    # the frames are the videos' own: grey background with a coloured square somewhere
    assert float(a.std()) > 0.05 and np.isclose(float(a.median()), 128 / 127.5 - 1, atol=0.03)


def test_the_whole_chain_trains_on_a_folder_of_videos(videos, tmp_path):
    common = ["--preset", "tiny", "--no-progress", "--threads", "1"]
    assert main(["distill", "autoencoder", *common, "--data", str(videos), "--run-dir", str(tmp_path / "ae"),
                 "--set", "steps=4", "--set", "eval_every=4", "--set", "ckpt_every=4", "--set", "stats_clips=2"]) == 0
    assert main(["distill", "teacher", *common, "--data", str(videos), "--autoencoder",
                 str(tmp_path / "ae" / "autoencoder"), "--run-dir", str(tmp_path / "teacher"),
                 "--set", "steps=6", "--set", "pool_size=4"]) == 0
    teacher = json.loads((tmp_path / "teacher" / "model" / "model.json").read_text())
    assert str(videos) in teacher["provenance"]["data"] and teacher["provenance"]["run"]["data"] == str(videos)
    assert list((tmp_path / "teacher").glob("latent-pool-videos-*.safetensors"))
    assert main(["distill", "student", *common, "--teacher", str(tmp_path / "teacher" / "model"), "--prompts",
                 str(videos / "prompts.jsonl"), "--run-dir", str(tmp_path / "student"),
                 "--set", "ode_iters=4", "--set", "dmd_iters=2"]) == 0
    model = load_model(str(tmp_path / "student" / "model"))
    assert "prompts.jsonl" in model.config.provenance["data"]
    chunk = model.open_session("a blue square moving right", seed=0).next_chunk()
    assert chunk.frames.shape == (model.frames_per_chunk, 32, 32, 3)


def test_data_needs_a_captions_file(tmp_path, capsys):
    assert main(["distill", "teacher", "--preset", "tiny", "--data", str(tmp_path), "--autoencoder",
                 "engine/models/shapes-default"]) == 2
    assert "captions.jsonl" in capsys.readouterr().err
