"""The procedural evaluator is valid: ground truth scores at the top (also through
what a small autoencoder does to it), wrong prompts score at chance, noise and blank
videos at the bottom; the temporal metrics see jitter, flicker and drift; the prompt
parser reads what people type; the report and the CLI produce their files."""

from __future__ import annotations

import json
from dataclasses import replace

import av
import numpy as np
import pytest
from PIL import Image

from framecast import CommandError
from framecast.cli import main
from engine.shapes import vocab
from engine.shapes.captions import ObjectIntent, PromptIntent, parse_prompt
from distill.data.render import render_background
from engine.shapes.scene import Background
from distill.data.shapes import ShapesConfig, ShapesWorld
from distill.eval import EvalConfig, evaluate_frames, evaluate_generator, evaluate_video, standard_prompts
from distill.eval.colour import COLOUR_NAMES, classify_pixels
from distill.eval.judge import TrackSummary, prompt_scores
from distill.eval.media import write_mp4
from distill.eval.perturb import autoencoder_like, blank_video, noise_video
from distill.eval.prompts import standard_scenes

WORLD = ShapesWorld(ShapesConfig(height=128, width=128, fps=16))
NUM_CLIPS = 24


@pytest.fixture(scope="module")
def clips():
    return [WORLD.sample(1000 + i, 16) for i in range(NUM_CLIPS)]


def mean(results, key):
    return float(np.mean([r[key] for r in results if r[key] is not None]))


# --- prompt parser -------------------------------------------------------------------

@pytest.mark.parametrize("prompt, objects, background", [
    ("a red ball rolls to the left", [("red", "circle", None, "left")], None),
    ("red circle moving left", [("red", "circle", None, "left")], None),
    ("a small red circle moves left on a blue background", [("red", "circle", "small", "left")], "blue"),
    ("On a black backdrop, a tiny crimson dot drifts toward the top right", [("red", "circle", "small", "up-right")],
     "black"),
    ("a yellow triangle goes round in circles over a grey striped background",
     [("yellow", "triangle", None, "circle")], "gray"),
    ("The violet rhombus gets smaller.", [("purple", "diamond", None, "shrink")], None),
    ("a cyan circle moves in a circle", [("cyan", "circle", None, "circle")], None),
    ("an orange box moves up and to the left, a big green star bounces", [
        ("orange", "square", None, "up-left"), ("green", "star", "large", "bounce")], None),
    ("white background with a pink star sitting still and a lime block falling",
     [("pink", "star", None, "stop"), ("green", "square", None, "down")], "white"),
    ("a blue square", [("blue", "square", None, None)], None),
])
def test_parser_reads_typed_prompts(prompt, objects, background):
    got = parse_prompt(prompt)
    assert got.objects == tuple(ObjectIntent(*o) for o in objects)
    assert got.background == background


def test_parser_finds_no_objects_in_unrelated_text():
    assert parse_prompt("a cat sleeping on a sofa").objects == ()


# --- validity ------------------------------------------------------------------------

def test_ground_truth_scores_at_the_top(clips):
    results = [evaluate_frames(c.frames, c.captions[0], 16) for c in clips]
    assert mean(results, "prompt_accuracy") >= 0.97
    assert min(r["prompt_accuracy"] for r in results) >= 0.8
    for key in ("colour_accuracy", "shape_accuracy", "motion_accuracy", "background_accuracy"):
        assert mean(results, key) >= 0.95, key
    assert mean(results, "smoothness") >= 0.85
    assert all(r["flicker"] == 0.0 and r["background_stability"] == 1.0 for r in results)


def test_ground_truth_through_an_autoencoder_like_degradation_still_scores_high(clips):
    results = [evaluate_frames(autoencoder_like(c.frames), c.captions[0], 16) for c in clips]
    assert mean(results, "prompt_accuracy") >= 0.93
    assert mean(results, "colour_accuracy") >= 0.95 and mean(results, "motion_accuracy") >= 0.9
    assert mean(results, "shape_accuracy") >= 0.85


def test_a_prompt_without_background_asks_for_contrast(clips):
    """No background asked: the frames must still set the object off. Ground truth does;
    a frame painted in the object's colour (what a model that ignores the missing
    background does) scores zero contrast and loses prompt accuracy for it."""
    clip = next(c for c in clips if len(c.scene.objects) == 1)
    obj = clip.scene.objects[0]
    prompt = f"a {obj.colour} {obj.shape}"
    truth = evaluate_frames(clip.frames, prompt, 16)
    assert truth["background_accuracy"] is None and truth["contrast_accuracy"] == 1.0
    painted = np.broadcast_to(np.array(vocab.ALL_COLOURS[obj.colour], np.uint8), clip.frames.shape).copy()
    flooded = evaluate_frames(painted, prompt, 16)
    assert flooded["contrast_accuracy"] == 0.0 and flooded["prompt_accuracy"] == 0.0
    with_bg = evaluate_frames(clip.frames, clip.captions[0], 16)
    assert with_bg["contrast_accuracy"] is None  # a named background is scored by background_accuracy


def true_contents(clip) -> tuple[list[TrackSummary], np.ndarray]:
    """What a perfect detector would report for a clip."""
    found = [TrackSummary(o.colour, 1.0, o.shape, o.motion, o.size, None) for o in clip.scene.objects]
    return found, np.array([clip.scene.background.colour] * len(clip.frames))


def test_wrong_prompts_score_at_chance(clips):
    # Each clip judged against another clip's caption; chance is what the clip's true
    # contents score against that caption, so the two must agree.
    shuffled, chance = [], []
    for i, clip in enumerate(clips):
        other = clips[(i + 5) % len(clips)].captions[0]
        shuffled.append(evaluate_frames(clip.frames, other, 16))
        chance.append(prompt_scores(parse_prompt(other), *true_contents(clip)))
    truth = [evaluate_frames(c.frames, c.captions[0], 16) for c in clips[:6]]
    assert mean(shuffled, "prompt_accuracy") <= mean(truth, "prompt_accuracy") - 0.5
    for key in ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy"):
        assert abs(mean(shuffled, key) - mean(chance, key)) <= 0.08, key
    assert mean(shuffled, "motion_accuracy") <= 0.25 and mean(shuffled, "shape_accuracy") <= 0.45


def test_noise_and_blank_videos_score_at_the_bottom(clips):
    for i, clip in enumerate(clips[:8]):
        prompt = clip.captions[0]
        noise = evaluate_frames(noise_video(16, 128, 128, seed=i), prompt, 16)
        assert noise["prompt_accuracy"] == 0.0 and noise["smoothness"] == 0.0
        assert noise["flicker"] > 0.2 and noise["stability"] == 0.0 and noise["background_stability"] == 0.0
        blank = evaluate_frames(blank_video(16, 128, 128, value=128), prompt, 16)
        # Only the background colour can be right by luck (a gray background was asked).
        lucky = clip.scene.background.colour == "gray"
        assert blank["prompt_accuracy"] <= (0.3 if lucky else 0.0)
        assert blank["colour_accuracy"] == 0.0 and blank["count_accuracy"] == 0.0


def test_background_shades_keep_their_colour_name():
    for colour in vocab.ALL_COLOURS:
        for pattern in vocab.BACKGROUND_PATTERNS:
            for bg in (Background(colour, pattern, angle=45.0), Background(colour, pattern, angle=90.0)):
                pixels = render_background(bg, 64, 64)
                for frame in (pixels, autoencoder_like(pixels[None])[0]):
                    names = classify_pixels(frame)
                    assert (names == COLOUR_NAMES.index(colour)).mean() >= 0.99, bg


def test_jittering_objects_score_low_smoothness():
    clip = WORLD.sample(4, 24)
    rng = np.random.default_rng(0)
    jittered = np.stack([
        WORLD.render(replace(clip.scene, objects=tuple(
            replace(o, x=o.x + rng.normal(0, 0.03), y=o.y + rng.normal(0, 0.03)) for o in clip.scene.objects)), 1,
            start_frame=t)[0]
        for t in range(24)
    ])
    smooth = evaluate_frames(clip.frames, clip.captions[0], 16)["smoothness"]
    rough = evaluate_frames(jittered, clip.captions[0], 16)["smoothness"]
    assert smooth >= 0.85 and rough <= 0.5


def test_flicker_and_background_stability_see_a_changing_background():
    clip = WORLD.sample(6, 32)
    noisy = np.clip(clip.frames.astype(int) + np.random.default_rng(1).normal(0, 12, clip.frames.shape), 0, 255)
    scores = evaluate_frames(noisy.astype(np.uint8), clip.captions[0], 16)
    assert scores["flicker"] > 0.02 and scores["stability"] < 0.9
    # Half way through, the background turns another colour.
    clip = next(c for c in (WORLD.sample(s, 32) for s in range(50)) if c.scene.background.pattern == "solid")
    recoloured = clip.frames.copy()
    bg = np.array(vocab.ALL_COLOURS[clip.scene.background.colour], np.uint8)
    other = next(c for c in vocab.NEUTRAL_COLOURS if c != clip.scene.background.colour)
    recoloured[16:][(recoloured[16:] == bg).all(-1)] = vocab.ALL_COLOURS[other]
    assert evaluate_frames(clip.frames, clip.captions[0], 16)["background_stability"] == 1.0
    assert evaluate_frames(recoloured, clip.captions[0], 16)["background_stability"] <= 0.6


def test_prompt_switches_are_scored_per_segment():
    world = ShapesWorld(ShapesConfig(height=96, width=96))
    for seed, kind in enumerate(("colour", "motion", "background")):
        clip = world.sample_switch(seed, 48, switch_frame=24, kind=kind)
        scores = evaluate_frames(clip.frames, clip.captions[0], 16, switches=[(1.5, clip.captions_after[0])])
        first, second = scores["segments"]
        assert first["prompt_accuracy"] >= 0.9 and second["prompt_accuracy"] >= 0.9
        assert second["start_s"] == pytest.approx(1.5 + EvalConfig().switch_settle_seconds)
        # Ignoring the switch, the second half misses what changed.
        stale = evaluate_frames(clip.frames[24:], clip.captions[0], 16)
        assert stale["prompt_accuracy"] < second["prompt_accuracy"]


def test_drift_windows_compare_later_stretches_with_the_start():
    world = ShapesWorld(ShapesConfig(height=64, width=64))
    config = EvalConfig(reference_seconds=1, window_seconds=1, window_every_seconds=3)
    clip = world.sample(2, 16 * 10)
    steady = evaluate_frames(clip.frames, clip.captions[0], 16, config=config)
    assert [w["start_s"] for w in steady["windows"]] == [0, 3, 6, 9]
    assert max(abs(d) for d in steady["drift"]["prompt_accuracy"]) <= 0.1
    decaying = clip.frames.copy()
    decaying[16 * 5:] = noise_video(16 * 5, 64, 64)
    drift = evaluate_frames(decaying, clip.captions[0], 16, config=config)["drift"]["prompt_accuracy"]
    assert abs(drift[0]) <= 0.1 and drift[1] >= 0.8 and drift[2] >= 0.8


# --- files, generator reports and the CLI --------------------------------------------

def test_video_files_are_judged_like_their_frames(tmp_path, clips):
    path = tmp_path / "clip.mp4"
    write_mp4(path, clips[0].frames, 16)
    scores = evaluate_video(path, clips[0].captions[0])
    assert scores["prompt_accuracy"] >= 0.9 and scores["seconds"] == pytest.approx(1.0)


def test_standard_prompts_cover_the_vocabulary_and_parse_back():
    prompts, scenes = standard_prompts(), standard_scenes()
    assert prompts == standard_prompts() and len(set(prompts)) == len(prompts) == 48
    objects = [o for s in scenes for o in s.objects]
    assert {o.colour for o in objects} == set(vocab.OBJECT_COLOURS)
    assert {o.shape for o in objects} == set(vocab.SHAPES) and {o.motion for o in objects} == set(vocab.MOTIONS)
    assert {s.background.pattern for s in scenes} == set(vocab.BACKGROUND_PATTERNS)
    assert all(parse_prompt(p) == PromptIntent.from_scene(s) for p, s in zip(prompts, scenes))


def test_generator_report_writes_json_plots_grid_and_video(tmp_path):
    world = ShapesWorld(ShapesConfig(height=64, width=64))
    scenes = dict(zip(standard_prompts(), standard_scenes()))
    calls = []

    def generate(prompt, seconds, seed):
        calls.append((prompt, seconds, seed))
        return world.render(scenes[prompt], int(seconds * 16), start_frame=16 * seed)

    prompts = standard_prompts()[:3]
    report = evaluate_generator(generate, prompts, seeds=2, seconds=1.0, out_dir=tmp_path, fps=16)
    assert calls == [(p, 1.0, s) for p in prompts for s in (0, 1)]
    assert report["summary"]["prompt_accuracy"] >= 0.9 and len(report["samples"]) == 6
    assert [p["prompt"] for p in report["per_prompt"]] == prompts
    assert json.loads((tmp_path / "report.json").read_text())["summary"] == report["summary"]
    for name in ("metrics.png", "grid.png"):
        assert Image.open(tmp_path / name).size[0] > 100
    assert Image.open(tmp_path / "samples.gif").n_frames == 16
    with av.open(str(tmp_path / "samples.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16


def test_generator_report_tracks_drift_over_long_streams(tmp_path):
    world = ShapesWorld(ShapesConfig(height=64, width=64))
    scene = standard_scenes()[0]

    def fading(prompt, seconds, seed):  # true to the prompt for 2 s, then noise
        frames = world.render(scene, int(seconds * 16))
        frames[32:] = noise_video(len(frames) - 32, 64, 64, seed)
        return frames

    config = EvalConfig(reference_seconds=1, window_seconds=1, window_every_seconds=2)
    report = evaluate_generator(fading, standard_prompts()[:1], seeds=[5], seconds=4, out_dir=tmp_path, config=config)
    assert [w["start_s"] for w in report["windows"]] == [0, 2]
    assert report["drift"]["prompt_accuracy"][0] >= 0.8
    assert Image.open(tmp_path / "drift.png").size[0] > 100


def test_cli_judges_a_video_file(tmp_path, clips, capsys):
    path = tmp_path / "clip.mp4"
    write_mp4(path, clips[1].frames, 16)
    assert main(["eval", "--video", str(path), "--prompt", clips[1].captions[0], "--json", "--out",
                 str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[: printed.rindex("}") + 1])
    assert report["summary"]["prompt_accuracy"] >= 0.9
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "grid.png").is_file()
    assert main(["eval", "--video", str(tmp_path / "missing.mp4"), "--prompt", "a red ball"]) == 2
    assert main(["eval", "--video", str(path)]) == 2


def test_cli_switch_flag_is_validated():
    from distill.commands import _switches

    assert _switches(["2:a blue square moving up"]) == [(2.0, "a blue square moving up")]
    with pytest.raises(CommandError):
        _switches(["soon:a blue square"])


def test_cli_samples_a_model_through_the_engine(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball rolls to the left on a blue background\n")
    assert main(["eval", "--model", "tiny-random", "--prompts", str(prompts), "--seeds", "1", "--seconds", "0.5",
                 "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # Untrained weights draw no red ball on a blue background.
    assert len(report["samples"]) == 1 and report["summary"]["prompt_accuracy"] <= 0.3


def test_bootstrap_interval_of_the_mean():
    from distill.eval.report import bootstrap_interval

    assert bootstrap_interval([1.0]) is None and bootstrap_interval([None, 0.5]) is None
    assert bootstrap_interval([0.7] * 10) == [0.7, 0.7]  # no spread, no doubt
    coin = [float(i % 2) for i in range(40)]  # mean 0.5, sd 0.5: +-1.96 * 0.5 / sqrt(40) = 0.155
    low, high = bootstrap_interval(coin)
    assert 0.32 < low < 0.38 and 0.62 < high < 0.68
    wide = bootstrap_interval(coin[:8])
    assert wide[0] < low and wide[1] > high  # fewer samples, a wider interval


def _bench(name: str):
    """bench/NAME.py loaded as a module (bench/ is scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _latent_motion_bench():
    return _bench("latent_motion")


def test_latent_motion_tells_a_saw_tooth_from_an_object_carried_on():
    """bench/latent_motion.py splits a path into motion inside each latent frame (4 video
    frames) and the step between latent frames. The world's own straight motion advances
    by its speed in both; frames re-ordered as a model that draws the velocity but does not
    carry the object on (1-4, 2-5, 3-6, ...) move inside each latent frame and jump back
    between them, advancing a quarter as fast."""
    bench = _latent_motion_bench()
    prompt, scene = bench.straight_scenes()[0]
    world = ShapesWorld()
    rendered = world.render(scene, 40)
    saw = np.concatenate([rendered[k : k + 4] for k in range(6)])  # latent frame k shows frames k..k+3
    gens = {"carried": lambda p, s, seed: rendered[:24], "saw": lambda p, s, seed: saw}
    unit = min(rendered.shape[1], rendered.shape[2])
    per_frame = scene.objects[0].speed * unit / 16  # px per video frame at 16 fps
    got = {name: bench.measure(g, [(prompt, scene)], 1, 1.5, 16.0, 4)["summary"] for name, g in gens.items()}
    carried, tooth = got["carried"], got["saw"]
    assert carried["found"] == tooth["found"] == 1
    assert carried["advance"] == pytest.approx(4 * per_frame, rel=0.05)
    assert carried["within"] == pytest.approx(3 * per_frame, rel=0.05)
    assert carried["between"] == pytest.approx(per_frame, rel=0.1)
    assert tooth["within"] == pytest.approx(3 * per_frame, rel=0.05)
    assert tooth["between"] == pytest.approx(-2 * per_frame, rel=0.1)
    assert tooth["advance"] == pytest.approx(per_frame, rel=0.1)


def test_latent_motion_tells_a_jump_at_the_chunk_boundary_from_one_inside_chunks():
    """With a student's chunk length, `between` is split into the boundaries inside a chunk
    and those between chunks: frames that carry the object on inside each chunk of 3 latent
    frames and start every chunk back at the scene's first frame step +1 video frame inside
    and jump 11 frames back between chunks."""
    bench = _latent_motion_bench()
    prompt, scene = bench.straight_scenes()[0]
    rendered = ShapesWorld().render(scene, 40)
    restart = np.concatenate([rendered[o : o + 4] for o in (0, 4, 8, 0, 4, 8)])
    unit = min(rendered.shape[1], rendered.shape[2])
    per_frame = scene.objects[0].speed * unit / 16
    got = bench.measure(lambda p, s, seed: restart, [(prompt, scene)], 1, 1.5, 16.0, 4, chunk_frames=3)["summary"]
    assert got["between_in_chunk"] == pytest.approx(per_frame, rel=0.1)
    assert got["between_chunks"] == pytest.approx(-11 * per_frame, rel=0.05)
    plain = bench.measure(lambda p, s, seed: restart, [(prompt, scene)], 1, 1.5, 16.0, 4)["summary"]
    assert "between_chunks" not in plain and plain["between"] == pytest.approx(got["between"])


def test_latent_motion_unwraps_an_object_across_the_frame_edge():
    from distill.eval.detect import Track

    bench = _latent_motion_bench()
    x = np.array([120.0, 124.0, 2.0, 6.0])  # moving right through the right edge of a 128 px frame
    track = Track("red", np.ones(4, bool), x, np.full(4, 64.0), np.full(4, 50.0), np.zeros(4, bool), np.zeros((4, 1)))
    assert bench.along_direction(track, "right", 128, 128).tolist() == [120.0, 124.0, 130.0, 134.0]
    assert bench.along_direction(track, "left", 128, 128).tolist() == [-120.0, -124.0, -130.0, -134.0]


def _report(scores: dict) -> dict:
    """A report as evaluate_generator writes it: {(prompt, seed): {metric: value}}."""
    return {"samples": [{"prompt": p, "seed": s, **m} for (p, s), m in scores.items()]}


def test_paired_difference_tells_apart_what_side_by_side_intervals_cannot():
    """Two models on the same (prompt, seed) pairs: each pair's difficulty is shared, so the
    paired interval is narrow where each model's own interval is wide and they overlap."""
    from distill.eval.report import bootstrap_interval, paired_difference

    rng = np.random.default_rng(0)
    hard = rng.uniform(0.2, 0.9, size=40)  # each scene's difficulty, shared by both models
    keys = [(f"prompt {i // 2}", i % 2) for i in range(40)]
    before = _report({k: {"prompt_accuracy": float(h), "contrast_accuracy": None} for k, h in zip(keys, hard)})
    after = _report({k: {"prompt_accuracy": float(h) + 0.05, "contrast_accuracy": None} for k, h in zip(keys, hard)})
    own = [bootstrap_interval([s["prompt_accuracy"] for s in r["samples"]]) for r in (before, after)]
    assert own[1][0] < own[0][1]  # side by side the intervals overlap
    diff = paired_difference(before, after, metrics=("prompt_accuracy", "contrast_accuracy"))
    d = diff["prompt_accuracy"]
    assert d["difference"] == pytest.approx(0.05) and d["samples"] == 40
    assert d["interval"][0] > 0 and d["interval"][1] == pytest.approx(0.05)  # the same gain everywhere
    assert "contrast_accuracy" not in diff  # no pair has it
    # a mixed change: as often worse as better, so the interval holds 0
    mixed = _report({k: {"prompt_accuracy": float(h) + (0.1 if i % 2 else -0.1), "contrast_accuracy": None}
                     for i, (k, h) in enumerate(zip(keys, hard))})
    lo, hi = paired_difference(before, mixed, metrics=("prompt_accuracy",))["prompt_accuracy"]["interval"]
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(before, _report({k: {"prompt_accuracy": 1.0} for k in keys[:-1]}))


def test_compare_reports_bench_prints_the_paired_difference_and_refuses_unpaired_reports(tmp_path, capsys):
    bench = _bench("compare_reports")
    keys = [(f"p{i}", s) for i in range(6) for s in (0, 1)]
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_report({k: {"prompt_accuracy": 0.5, "motion_accuracy": 0.0} for k in keys})))
    b.write_text(json.dumps(_report({k: {"prompt_accuracy": 0.5, "motion_accuracy": 1.0} for k in keys})))
    c.write_text(json.dumps(_report({k: {"prompt_accuracy": 0.5} for k in keys[:3]})))
    assert bench.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    motion = next(line for line in out.splitlines() if "motion_accuracy" in line)
    assert "+1.000 [+1.000, +1.000]" in motion and "differs" in motion
    prompt = next(line for line in out.splitlines() if "prompt_accuracy" in line)
    assert "+0.000" in prompt and "differs" not in prompt
    assert bench.main([str(a), str(c)]) == 2
    assert "same prompts" in capsys.readouterr().err
    assert bench.main([str(a), str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_shape_confusion_bench_counts_each_clip_under_the_shape_asked_and_the_shape_found():
    """bench/shape_confusion.py: the world's own still shapes land on the diagonal; the same
    clips with every shape drawn as the next one in the vocabulary land off it, each in the next
    shape's column, and score 0."""
    from dataclasses import replace

    from distill.data.shapes import ShapesWorld
    from engine.shapes import vocab

    bench = _bench("shape_confusion")
    scenes = bench.still_scenes(sizes=("large",))
    by_prompt, world = dict(scenes), ShapesWorld()

    def drawn_as(shift: int):
        def generate(prompt, seconds, seed):
            obj = by_prompt[prompt].objects[0]
            shape = vocab.SHAPES[(vocab.SHAPES.index(obj.shape) + shift) % len(vocab.SHAPES)]
            return world.render(replace(by_prompt[prompt], objects=(replace(obj, shape=shape),)), round(seconds * 16))
        return generate

    right = bench.confusion(drawn_as(0), scenes, seeds=1, seconds=1.0, fps=16)
    assert right["overall"][0] == 1.0 and len(scenes) == len(vocab.SHAPES) * len(bench.PAIRS)
    wrong = bench.confusion(drawn_as(1), scenes, seeds=1, seconds=1.0, fps=16)
    assert wrong["overall"][0] == 0.0
    for i, shape in enumerate(vocab.SHAPES):
        assert wrong["matrix"][shape][vocab.SHAPES[(i + 1) % len(vocab.SHAPES)]] == len(bench.PAIRS), wrong["matrix"]
