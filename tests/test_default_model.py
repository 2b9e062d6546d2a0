"""The embedded default model: present, self-describing, small, loadable offline, streaming."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import load_model
from engine.model import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "transformer.safetensors").is_file(),
                                reason="the embedded default model has not been trained into the repo yet")


def test_default_model_files_are_small_and_say_how_they_were_made():
    config = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert config["name"] == "shapes-default"
    assert config["provenance"]["command"].startswith("framecast distill")
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert total < 56 * 2**20, f"{total / 2**20:.1f} MiB shipped"
    # the transformer in bf16 (the `shapes` preset's weights_dtype): 31 MB, not 63
    from safetensors import safe_open
    with safe_open(DEFAULT_MODEL_DIR / "transformer.safetensors", "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}


def test_default_model_is_what_the_shapes_preset_makes():
    """`framecast distill student --preset shapes` writes this config: the wide teacher's network,
    trained and streamed with 4, 3, then 2 steps a chunk of 3 latent frames, each chunk re-run at
    t=0 into the cache; only the measured runtime and the provenance differ."""
    from distill.student import PRESETS, served_model
    from engine.config import ModelConfig

    shipped = ModelConfig.load(DEFAULT_MODEL_DIR / "model.json")
    assert shipped.sampler.steps_per_chunk == (4, 3, 2) and shipped.sampler.refresh_context
    assert shipped.attention.chunk_frames == 3 and shipped.transformer.num_attention_heads == 6
    assert shipped.model_copy(update={"runtime": "eager", "provenance": {}}) == served_model(PRESETS["shapes"])
    assert {k: shipped.provenance["run"][k] for k in ("serve_chunk_frames", "serve_refresh_context", "seed")} == \
        {"serve_chunk_frames": 0, "serve_refresh_context": True, "seed": 1}


def test_default_model_was_trained_by_the_shapes_preset_as_it_stands():
    """The run the shipped provenance records is the `shapes` preset, field for field: a preset
    changed without retraining (or a model trained off-preset) fails here. A field the trainer
    gained after the run (absent from the provenance) must be at its default, which is the
    recipe the run had."""
    from dataclasses import replace

    from distill.common import run_to_json
    from distill.student import PRESETS, StudentRun

    provenance = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())["provenance"]
    preset = run_to_json(replace(PRESETS["shapes"], teacher="distill/weights/shapes-teacher"))
    default = run_to_json(StudentRun())
    recorded = {k: v for k, v in preset.items() if k in provenance["run"]}
    assert provenance["run"] == recorded
    assert {k: v for k, v in preset.items() if k not in recorded and k != "model"} == \
        {k: default[k] for k in preset if k not in recorded and k != "model"}
    assert provenance["command"].startswith("framecast distill student --preset shapes --teacher "
                                            "distill/weights/shapes-teacher ")


def test_default_model_was_distilled_from_the_shipped_teacher():
    """The teacher the provenance names is distill/weights/shapes-teacher, and the weights the
    run read (their sha256, recorded) are the ones shipped there: the documented command
    remakes this model from what the repo holds."""
    from engine.text_encoder import sha256_file

    provenance = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())["provenance"]
    teacher = Path(__file__).resolve().parent.parent / provenance["run"]["teacher"] / "transformer.safetensors"
    assert sha256_file(teacher) == provenance["teacher_sha256"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The default model as `load_model()` gives it, with its engine cache in a temporary
    directory (ONNX Runtime's graphs are built on the first load)."""
    return load_model(engine_cache_dir=tmp_path_factory.mktemp("engines"))


def test_default_model_runs_on_its_measured_backend_and_equals_eager(model):
    """model.json's runtime is ONNX Runtime: on the CPU it streams this model faster than
    eager (docs/backends.md, "The default model's backend"); it must stream the same video."""
    assert model.step_fn.backend == "onnxruntime" and model.device.type == "cpu"
    def stream(m):  # until the cache (sink 3 + window 6 latent frames) is full, then a chunk that evicts
        att = m.config.attention
        chunks = (att.sink_frames + att.window_frames) // att.chunk_frames + 1
        session = m.open_session("a green circle on a white background", seed=2)
        return torch.cat([session.next_chunk().latents for _ in range(chunks)], dim=2)

    # measured 7.1e-5 (bench/backends.py, v3); float32 graph vs eager, same seed
    assert (stream(model) - stream(load_model(backend="eager"))).abs().max() < 1e-2


def test_default_model_loads_with_no_name_and_streams_128px_at_16fps(model):
    assert model.name == "shapes-default"
    assert (model.width, model.height, model.fps) >= (128, 128, 16)
    session = model.open_session("a red ball bouncing on a blue background", seed=0)
    chunks = [session.next_chunk() for _ in range(2)]
    assert chunks[0].frames.shape == (model.frames_per_chunk, model.height, model.width, 3)
    # same seed, same frames
    again = model.open_session("a red ball bouncing on a blue background", seed=0).next_chunk()
    assert np.array_equal(again.frames, chunks[0].frames)


def stream(model, prompt: str, seed: int = 0, seconds: float = 2.25) -> np.ndarray:
    session = model.open_session(prompt, seed=seed)
    chunks = -(-round(seconds * model.fps) // model.frames_per_chunk)
    return np.concatenate([session.next_chunk().frames for _ in range(chunks)])


def test_default_model_paints_the_background_the_prompt_asks_for(model):
    """The background colour (README), judged by the evaluator, and against a swapped
    prompt so a lucky colour cannot pass."""
    from distill.eval import evaluate_frames

    prompts = {"blue": "a red ball bouncing on a blue background",
               "green": "a small yellow star moves left on a green background",
               "black": "a large pink square moves up on a black background",
               "white": "a cyan triangle moves right on a white background"}
    videos = {}
    for colour, prompt in prompts.items():
        videos[colour] = stream(model, prompt)
        assert evaluate_frames(videos[colour], prompt, fps=model.fps)["background_accuracy"] >= 0.9, colour
    swapped = evaluate_frames(videos["blue"], prompts["green"], fps=model.fps)
    assert swapped["background_accuracy"] <= 0.1


# Held-out phrasings (colour words, word orders and fillers no caption template writes), each
# with a control prompt of another object colour. v1 failed every one (colour accuracy 0.0).
NEW_PHRASINGS = {
    "a crimson ball drifting slowly to the left on a white background": "a green ball on a white background",
    "a lime square sitting still on a black background": "a red square on a black background",
    "a cobalt disc that circles on gray": "a yellow disc on a gray background",
    "a tangerine box, not moving at all, on a blue background": "a pink box on a blue background",
    "a scarlet star floating upward against a black backdrop": "a cyan star on a black background",
    "a lemon colored ball falling down on a purple background": "a red ball on a purple background",
}


def test_default_model_colours_the_object_as_asked_in_new_phrasings(model):
    """The object comes in the asked colour when the prompt is phrased in ways the captions
    never were (held-out set: colour 0.93); scored against another colour, the same video fails."""
    from distill.eval import evaluate_frames

    for prompt, control in NEW_PHRASINGS.items():
        video = stream(model, prompt)
        assert evaluate_frames(video, prompt, fps=model.fps)["colour_accuracy"] >= 0.9, prompt
        assert evaluate_frames(video, control, fps=model.fps)["colour_accuracy"] <= 0.1, control


def test_default_model_sets_the_object_apart_when_no_background_is_named(model):
    """A prompt that names no background gets one that differs from the object (the
    evaluator's contrast score); v1 painted the object's colour over the frame (3 of these 4)."""
    from distill.eval import evaluate_frames

    for prompt in ("a crimson ball drifting slowly to the left", "just a green star",
                   "a yellow triangle sliding down the screen", "a big cobalt star contracting"):
        scores = evaluate_frames(stream(model, prompt), prompt, fps=model.fps)
        assert scores["contrast_accuracy"] >= 0.75, (prompt, scores["contrast_accuracy"])


def test_default_model_draws_the_triangle_or_the_square_asked(model):
    """Shape where the model has it (bench/shape_confusion.py, v9, still objects in the middle,
    2 seeds: squares 16 of 16, triangles 13, circles 8, diamonds 6, stars 6; v8: 16, 16, 3, 3,
    4): a still triangle is seen as a triangle and a still square as a square, and each
    video scored against the other shape fails, so a model that draws one blob for both cannot pass."""
    from distill.eval import evaluate_frames

    for colour, background in (("red", "white"), ("green", "black")):
        triangle = f"a large {colour} triangle stays still on a {background} background"
        square = f"a large {colour} square stays still on a {background} background"
        videos = {triangle: stream(model, triangle), square: stream(model, square)}
        for asked, other in ((triangle, square), (square, triangle)):
            assert evaluate_frames(videos[asked], asked, fps=model.fps)["shape_accuracy"] == 1.0, asked
            assert evaluate_frames(videos[asked], other, fps=model.fps)["shape_accuracy"] == 0.0, (asked, other)


# Single-object prompts on striped backgrounds on which v9 drew a second object in both seeds of
# the standard set (count 0.00) and v10 one (1.00), each with a control that asks for two.
ONE_OBJECT = {
    "a medium red star bounces on a gray striped background":
        "a medium red star bounces and a small green circle stays still on a gray striped background",
    "a purple triangle grows on a white striped background":
        "a purple triangle grows and a small yellow square stays still on a white striped background",
    "a medium red diamond moves down and to the left on a white striped background":
        "a medium red diamond moves down and to the left and a small blue circle stays still on a white "
        "striped background",
}


def test_default_model_draws_one_object_when_one_is_asked(model):
    """DMD2's head (docs/default-model.md, "Measured: v10") taught the student to draw as many
    objects as asked: standard-set count 0.875, v9 0.781. On these prompts v9 drew two; scored
    against a prompt that asks for two, the same video fails, so a model that draws any number
    regardless cannot pass. The evaluator's 1.5 s (two chunks): the head judges the first chunk,
    and a third chunk often brings a second object back (bench/stream_count.py: 18 of 20 clips
    right at 1.5 s, 8 at 2.25 s; v9 2 and 0)."""
    from distill.eval import evaluate_frames

    for prompt, control in ONE_OBJECT.items():
        video = stream(model, prompt, seconds=1.5)
        assert evaluate_frames(video, prompt, fps=model.fps)["count_accuracy"] == 1.0, prompt
        assert evaluate_frames(video, control, fps=model.fps)["count_accuracy"] == 0.0, control


def straight_motion_steps(model, clips: int = 8) -> tuple[list[float], list[float]]:
    """Pixels a latent frame along the asked direction (bench/latent_motion.py) of the first
    `clips` straight motions of the standard set, 1.5 s each, seed 0: first frame to first frame
    (`advance`) and from each latent frame's last frame to the next one's first (`between`)."""
    from distill.eval.detect import analyse
    from tests.test_eval import _latent_motion_bench

    bench = _latent_motion_bench()
    advance, between = [], []
    for prompt, scene in bench.straight_scenes()[:clips]:
        analysis = analyse(stream(model, prompt, seconds=1.5), model.fps)
        track = analysis.tracks.get(scene.objects[0].colour)
        steps = bench.latent_steps(bench.along_direction(track, scene.objects[0].motion, analysis.width,
                                                         analysis.height), 4) if track is not None else {}
        advance.append(steps.get("advance", float("nan")))
        between.append(steps.get("between", float("nan")))
    return advance, between


def test_default_model_carries_a_moving_object_on(model):
    """An object asked to move goes that way from one latent frame to the next, not only within
    each, and does not jump back at the boundary (docs/default-model.md, "Measured: v6"): v5
    streamed in chunks of 3 from its last pass's context drew a saw-tooth, +1.5 px a latent frame
    along the asked direction on the standard set's straight motions; v5.1, a latent frame a chunk
    from clean context, +4.5 with a jump back of -1.5 between latent frames; v6, whose teacher was
    carried on, +7.5 and +1.1 forward (the world: +5.7 and +1.5). Over 8 of them here (7 found
    whole), measured: v6 advance 9.1, median step between latent frames +2.6; v5.1 5.4 and -2.5;
    v9 (chunks of 3, refreshed: a little back inside a chunk, on at its boundary) 7.3 and +0.9;
    v10 6.8 and +0.8; v11 (trained on refreshed rollouts: slower, holding its place at the
    boundary) 4.6 and -0.25, all 8 found. So: on at the asked way, and no saw-tooth (a jump back
    of a pixel or more between latent frames, as v5.1's)."""
    advance, between = (np.array(a) for a in straight_motion_steps(model))
    found = np.isfinite(advance) & np.isfinite(between)
    assert found.sum() >= 6 and advance[found].mean() > 3.5, advance
    assert np.median(between[found]) > -1.0, between


def test_framecast_demo_streams_the_default_model_and_switches(tmp_path, capsys):
    """`framecast demo` as the README shows it: the embedded model, a switch mid-stream; the
    PNG grid's rows are chunks, and the background follows the prompt."""
    from PIL import Image

    from framecast.cli import main
    from distill.eval.colour import COLOUR_NAMES, classify_pixels

    out = tmp_path / "demo.png"
    assert main(["demo", "a red ball bouncing on a blue background", "--seconds", "3", "--seed", "1",
                 "--switch", "1.5:a red ball bouncing on a yellow background", "-o", str(out)]) == 0
    assert "shapes-default" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("RGB"))
    model = load_model()
    rows = grid.reshape(-1, model.height, grid.shape[1], 3)
    assert len(rows) == 3 * model.fps / model.frames_per_chunk  # 3 s of chunks
    assert grid.shape[1] == model.frames_per_chunk * model.width

    def main_colour(image):
        counts = np.bincount(classify_pixels(image).ravel(), minlength=len(COLOUR_NAMES) + 1)
        return COLOUR_NAMES[int(counts[: len(COLOUR_NAMES)].argmax())]

    assert main_colour(rows[0]) == "blue"
    assert main(["demo", "a red ball", "--seconds", "0", "-o", str(out)]) == 2  # bad input: a clear error


def test_conditioning_probe_reports_each_attribute_against_the_true_caption(tmp_path):
    """bench/teacher_conditioning.py on the default model: every attribute row, with an
    interval around its mean, and a text pathway that matters (no text fits differently)."""
    import subprocess
    import sys

    out = tmp_path / "cond.json"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "bench" / "teacher_conditioning.py"), "--model",
                           str(DEFAULT_MODEL_DIR), "--clips", "6", "--levels", "0.7,0.9", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [result] = json.loads(out.read_text())
    assert result["clips"] == 6 and set(result["levels"]) == {"0.7", "0.9"}
    for row in result["levels"].values():
        assert row["object_error_true"] > 0
        for name in ("colour", "shape", "motion", "no text"):
            low, high = row[name]["interval"]
            assert low <= row[name]["increase"] <= high
        assert abs(row["no text"]["increase"]) > 0.01
    true, shape = result["examples"]["true"][0], result["examples"]["shape"][0]
    assert true != shape and len(true.split()) == len(shape.split())
    bad = subprocess.run([sys.executable, str(repo / "bench" / "teacher_conditioning.py"), "--model",
                          str(DEFAULT_MODEL_DIR), "--levels", "1.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--levels" in bad.stderr


def test_conditioning_probe_from_blurred_single_frames_scores_the_sharp_frame():
    """--seconds 0.25 --blur: one latent frame, noised from a blurred copy, the model scored on
    the sharp frame: the same clips, noise and captions fit differently once the input is blurred."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from teacher_conditioning import measure, single_object_clips

    torch.set_num_threads(1)
    clips = single_object_clips(6, 5, 4, 128, 16)
    assert all(c.frames.shape[0] == 4 for c in clips)
    sharp = measure(str(DEFAULT_MODEL_DIR), clips, [0.3], 5)
    blurred = measure(str(DEFAULT_MODEL_DIR), clips, [0.3], 5, blur=3.0)
    assert blurred["blur"] == 3.0 and sharp["blur"] == 0.0
    a, b = sharp["levels"]["0.3"], blurred["levels"]["0.3"]
    assert abs(b["object_error_true"] / a["object_error_true"] - 1) > 0.01
    assert a["shape"]["increase"] != b["shape"]["increase"]


def test_attention_probe_measures_how_sharply_each_head_attends():
    """bench/teacher_attention.py: with its q/k gains at 0 every head attends uniformly (all
    tokens, own-frame share 1/frames, every prompt token); with large gains far fewer."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from teacher_attention import measure_model

    from distill.teacher import load_autoencoder
    from engine import load_model

    def set_qk_norm_gain(transformer, gain: float) -> None:
        with torch.no_grad():
            for block in transformer.blocks:
                for attn in (block.attn1, block.attn2):
                    attn.norm_q.weight.fill_(gain)
                    attn.norm_k.weight.fill_(gain)

    model = load_model(str(DEFAULT_MODEL_DIR), device="cpu", backend="eager")
    autoencoder = load_autoencoder(DEFAULT_MODEL_DIR)
    trained = measure_model(model, autoencoder, 2, [0.5], 0)
    n, frames, prompt = trained["tokens"], trained["frames"], trained["prompt_tokens"]
    assert (n, frames, prompt) == (6 * 64, 6, 32)
    for row in trained["levels"]["0.5"]:
        assert all(1 <= t <= n + 1e-3 for t in row["self_tokens"]) and all(0 <= s <= 1 for s in row["own_frame"])
        assert all(1 <= t <= prompt + 1e-3 for t in row["cross_tokens"])
    set_qk_norm_gain(model.transformer, 0.0)
    uniform = measure_model(model, autoencoder, 2, [0.5], 0)
    heads = model.config.transformer.num_attention_heads
    for row in uniform["levels"]["0.5"]:
        assert row["self_tokens"] == pytest.approx([n] * heads, rel=1e-4)
        assert row["own_frame"] == pytest.approx([1 / frames] * heads, rel=1e-4)
        assert row["cross_tokens"] == pytest.approx([prompt] * heads, rel=1e-4)
        assert row["on_words"] == pytest.approx([uniform["words"] / prompt] * heads, rel=1e-4)
    assert uniform["gains"][0]["self"] == [0.0, 0.0]
    from engine.transformer import CrossAttnProcessor

    model.transformer.mask_text_padding = True  # as attention.text_padding: mask builds it
    for block in model.transformer.blocks:
        block.attn2.set_processor(CrossAttnProcessor("native"))
    masked = measure_model(model, autoencoder, 2, [0.5], 0)
    for row in masked["levels"]["0.5"]:
        assert row["on_words"] == pytest.approx([1.0] * heads)
        assert row["cross_tokens"] == pytest.approx([masked["words"]] * heads, rel=1e-4)  # uniform over the words
    set_qk_norm_gain(model.transformer, 20.0)
    sharp = measure_model(model, autoencoder, 2, [0.5], 0)
    assert max(max(row["self_tokens"]) for row in sharp["levels"]["0.5"]) < n / 4


def test_pixel_space_control_trains_the_shared_transformer_on_frames_and_resumes(tmp_path, capsys, monkeypatch):
    """bench/teacher_pixel_space.py: the preset's transformer reading 64x64 RGB frames in
    8x8 patches (a token covers 16x16 px of the 128x128 frame, as a latent teacher's does),
    the evaluator's ground-truth ceiling at 64x64, training that resumes where it stopped, and
    the --object-scale and --prediction controls."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from teacher_pixel_space import build_pool, down, main, pixel_config, scale_objects, train, up

    from distill.data.shapes import ShapesWorld
    from distill.eval import evaluate_frames, standard_prompts, standard_scenes
    from engine.transformer import build_transformer

    torch.set_num_threads(1)
    config = pixel_config()
    model = build_transformer(config)
    x = torch.randn(2, 3, 1, 64, 64)
    context = model.embed_text(torch.randn(2, 5, config.transformer.text_dim))
    assert model.denoise(x, torch.tensor([500.0, 900.0]), context, model.full_attention(1)).shape == x.shape
    assert model.patch_embedding.weight.shape[-2:] == (8, 8)  # 8 tokens a side, as the latent teacher's

    prompt, scene = standard_prompts()[0], standard_scenes()[0]
    frames = up(down(ShapesWorld().render(scene, 4)))
    assert frames.shape == (4, 128, 128, 3) and frames.dtype == np.uint8
    assert evaluate_frames(frames, prompt, fps=16)["prompt_accuracy"] >= 0.8  # 64x64 keeps what it shows

    pool, captions = build_pool(tmp_path, 3, 0)
    assert pool.shape == (3, 6, 3, 64, 64) and len(captions) == 3 and all(captions)
    again, _ = build_pool(tmp_path, 3, 0)  # cached
    assert torch.equal(pool, again)
    args = argparse.Namespace(seed=0, scenes=3, ema_decay=0.99, lr=1e-3, warmup=1, decay_from=2, steps=2, batch=4,
                              object_scale=1.0)
    first, mean, std = train(args, config, tmp_path)
    assert (tmp_path / "checkpoint-0000002.safetensors").is_file() and (std > 0).all()
    args.steps = 3
    capsys.readouterr()
    resumed, _, _ = train(args, config, tmp_path)  # one more step from the checkpoint, not three
    assert "at step 2" in capsys.readouterr().err
    assert (tmp_path / "checkpoint-0000003.safetensors").is_file()
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), resumed.parameters()))

    # --object-scale: the same scene drawn with wider objects, its pool cached apart
    from engine.shapes import vocab

    red = lambda f: int(((f[..., 0] > 180) & (f[..., 1] < 80) & (f[..., 2] < 80)).sum())  # noqa: E731
    before, sizes = red(ShapesWorld().render(scene, 1)), dict(vocab.SIZES)
    try:
        scale_objects(1.6)
        assert 2.2 < red(ShapesWorld().render(scene, 1)) / before < 2.9  # area ~1.6^2
        big, _ = build_pool(tmp_path, 3, 0, 1.6)
        assert (tmp_path / "pixel-pool-0-3-x1.6.npz").is_file() and not torch.equal(big, pool)
    finally:
        vocab.SIZES.update(sizes)
    assert pixel_config(8, "sample").prediction == "sample"
    for bad in (["--object-scale", "3"], ["--prediction", "eps"]):
        with pytest.raises(SystemExit) as exit_info:
            monkeypatch.setattr(sys, "argv", ["teacher_pixel_space.py", "--run-dir", str(tmp_path), *bad])
            main()
        assert exit_info.value.code == 2
    # a run dir keeps its settings: resuming it with another patch is refused before any work
    (tmp_path / "settings.json").write_text(json.dumps({"patch": 8, "prediction": "flow", "object_scale": 1.0,
                                                         "scenes": 6144, "seed": 0}))
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["teacher_pixel_space.py", "--run-dir", str(tmp_path), "--patch", "4"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "patch 8 -> 4" in capsys.readouterr().err
