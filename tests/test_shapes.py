"""The Shapes world: determinism, rendering geometry, captions that say what is
drawn, endless streams, scene switches, and the torch dataset's seeding."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from engine.shapes import vocab
from engine.shapes.captions import PromptIntent, parse_prompt
from distill.data.render import SHAPE_AREA, draw_object
from engine.shapes.captions import scene_caption
from engine.shapes.scene import CANONICAL_FLOOR, CANONICAL_SLOTS, Scene, SceneSampling, object_state, random_scene
from distill.data.shapes import SWITCH_KINDS, ShapesConfig, ShapesDataset, ShapesWorld

WORLD = ShapesWorld(ShapesConfig(height=64, width=64, fps=16))


def colour_pixels(frames: np.ndarray, colour: str) -> np.ndarray:
    """[T] count of pixels exactly of a named colour (objects are drawn flat)."""
    return (frames == np.array(vocab.ALL_COLOURS[colour], np.uint8)).all(-1).sum((1, 2))


def test_same_seed_same_clip_and_different_seeds_differ():
    a, b, c = WORLD.sample(7, 12), WORLD.sample(7, 12), WORLD.sample(8, 12)
    assert np.array_equal(a.frames, b.frames)
    assert a.captions == b.captions and a.caption == b.caption and a.scene == b.scene
    assert not np.array_equal(a.frames, c.frames)


def test_frames_have_the_configured_size_and_fps():
    world = ShapesWorld(ShapesConfig(height=48, width=80, fps=8))
    clip = world.sample(3, 10)
    assert clip.frames.shape == (10, 48, 80, 3) and clip.frames.dtype == np.uint8
    # Half the fps, the same scene: frame k at 8 fps is frame 2k at 16 fps.
    fast = ShapesWorld(ShapesConfig(height=48, width=80, fps=16)).render(clip.scene, 20)
    assert np.array_equal(clip.frames, fast[::2])


@pytest.mark.parametrize("shape", vocab.SHAPES)
def test_drawn_area_matches_the_shape_geometry(shape):
    # Anti-aliased coverage summed over the frame is the shape's true area.
    frames = np.zeros((1, 96, 96, 3), np.uint8)
    d = np.array([40.0])
    draw_object(frames, (255, 255, 255), shape, np.array([48.3]), np.array([47.6]), d)
    covered = frames[..., 0].astype(float).sum() / 255
    assert covered == pytest.approx(SHAPE_AREA[shape] * 40 ** 2, rel=0.03)


def test_every_object_and_the_background_are_visible():
    for seed in range(30):
        clip = WORLD.sample(seed, 8)
        for obj in clip.scene.objects:
            assert colour_pixels(clip.frames, obj.colour).max() > 20, (seed, obj)
        if clip.scene.background.pattern == "solid":
            share = colour_pixels(clip.frames, clip.scene.background.colour).mean() / (64 * 64)
            assert share > 0.4, (seed, clip.scene.background)


def test_canonical_layout_starts_each_named_object_in_its_slot():
    """layout="canonical": the i-th object the caption names starts in slot i of its count
    (a bouncing one on the floor below it), within the jitter, and every object is seen whole
    at the start; the default layout places objects anywhere in the frame's middle."""
    sampling = SceneSampling(layout="canonical")
    world = ShapesWorld(ShapesConfig(height=64, width=64, fps=16, sampling=sampling))
    counts = set()
    for seed in range(120):
        clip = world.sample(seed, 4)
        scene = clip.scene
        counts.add(len(scene.objects))
        for obj, (x, y) in zip(scene.objects, CANONICAL_SLOTS[len(scene.objects)], strict=True):
            y = max(y, CANONICAL_FLOOR) if obj.motion == "bounce" else y
            assert abs(obj.x - x) <= sampling.jitter + 1e-9 and abs(obj.y - y) <= sampling.jitter + 1e-9, (seed, obj)
            assert colour_pixels(clip.frames[:1], obj.colour)[0] > 20, (seed, obj)
        named = [o.colour for o in parse_prompt(scene_caption(scene)).objects]
        assert named == [o.colour for o in scene.objects]
    assert counts == {1, 2, 3}
    anywhere = np.array([[o.x, o.y] for seed in range(120) for o in WORLD.scene(seed).objects])
    assert anywhere.std(0).min() > 0.12 and anywhere.min() >= 0.2 and anywhere.max() <= 0.8
    with pytest.raises(ValueError, match="layout"):
        random_scene(np.random.default_rng(0), SceneSampling(layout="tidy"))


def test_clockwise_orbits_turn_one_way_and_change_nothing_else():
    """orbit="clockwise": every circling object turns clockwise, in frames as in its spec,
    and the same seed draws the same scene otherwise (the direction is still drawn, so no
    later draw moves); the default draws both directions."""
    either, clockwise = SceneSampling(layout="canonical"), SceneSampling(layout="canonical", orbit="clockwise")
    turned, circling = set(), 0
    for seed in range(300):
        a = random_scene(np.random.default_rng(seed), either)
        b = random_scene(np.random.default_rng(seed), clockwise)
        assert a.background == b.background and len(a.objects) == len(b.objects)
        for oa, ob in zip(a.objects, b.objects, strict=True):
            assert ob.clockwise or ob.motion != "circle"
            assert dataclasses.replace(oa, clockwise=ob.clockwise) == ob
            if oa.motion == "circle":
                circling += 1
                turned.add(oa.clockwise)
                # the path's turn: with y pointing down, a clockwise path on screen turns positive
                x, y, _ = object_state(ob, np.array([0.0, 0.1, 0.2]), 128, 128)
                turn = (x[1] - x[0]) * (y[2] - y[1]) - (y[1] - y[0]) * (x[2] - x[1])
                assert turn > 0, (seed, ob)
    assert circling > 20 and turned == {True, False}
    with pytest.raises(ValueError, match="orbit"):
        random_scene(np.random.default_rng(0), SceneSampling(orbit="widdershins"))


def test_scenes_use_distinct_colours_and_a_free_background():
    for seed in range(200):
        scene = WORLD.scene(seed)
        colours = [o.colour for o in scene.objects]
        assert 1 <= len(colours) <= 3 and len(set(colours)) == len(colours)
        assert scene.background.colour not in colours


def test_every_caption_parses_back_to_the_scene():
    for seed in range(300):
        clip = WORLD.sample(seed, 1)
        truth = PromptIntent.from_scene(clip.scene)
        assert clip.caption in clip.captions and len(set(clip.captions)) == len(clip.captions)
        for caption in clip.captions:
            got = parse_prompt(caption)
            assert len(got.objects) == len(truth.objects), caption
            for g, t in zip(got.objects, truth.objects):
                assert (g.colour, g.shape) == (t.colour, t.shape), caption
                assert g.motion in (None, t.motion) and g.size in (None, t.size), caption  # unsaid, or right
            assert got.background in (None, truth.background), caption
        # The canonical caption names everything, background and pattern included.
        assert parse_prompt(clip.captions[0]) == truth


def test_training_windows_show_what_every_paraphrase_says():
    """The clips a teacher trains on are 24-frame windows anywhere in the first 30 s of a
    scene's stream (wrapped, bounced, reset); the evaluator, reading the frames alone, must
    find in each window everything each of its captions says, or the teacher is taught a
    wrong word."""
    from distill.eval import evaluate_frames

    world = ShapesWorld(ShapesConfig(height=128, width=128, fps=16))  # the teacher's world
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(6):
        clip = world.sample(int(rng.integers(0, 2**62)), 24, int(rng.integers(0, 481)))
        for caption in clip.captions:
            scores = evaluate_frames(clip.frames, caption, fps=world.config.fps)
            assert scores["prompt_accuracy"] == 1.0, (caption, scores)
            checked += 1
    assert checked >= 6 * 4


def test_scene_survives_json():
    scene = WORLD.scene(5)
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


def test_long_streams_keep_every_object_in_view():
    fps = WORLD.config.fps
    for seed in range(12):
        scene = WORLD.scene(seed)
        for minute in (1, 10, 60):
            frames = WORLD.render(scene, 16, start_frame=minute * 60 * fps)
            for obj in scene.objects:
                # Drawn whole-ish in most frames (objects wrap, bounce, orbit, cycle size).
                expected = SHAPE_AREA[obj.shape] * (vocab.SIZES[obj.size] * 64) ** 2
                seen = colour_pixels(frames, obj.colour) > 0.15 * expected
                assert seen.mean() >= 0.5, (seed, minute, obj)


def test_object_centres_stay_bounded_and_periodic_motions_repeat():
    t = np.linspace(0, 600, 2001)
    for seed in range(40):
        for obj in WORLD.scene(seed).objects:
            x, y, d = object_state(obj, t, 64, 64)
            assert np.isfinite(x).all() and np.isfinite(y).all()
            assert d.min() > 0.4 * vocab.SIZES[obj.size] * 64 and d.max() < 1.7 * vocab.SIZES[obj.size] * 64
            if obj.motion in ("bounce", "circle", "stop"):
                assert 0 <= y.min() and y.max() <= 64 + 1e-6 and np.ptp(x) <= 64


def test_stream_chunks_equal_one_long_render():
    stream = WORLD.stream(11, chunk_frames=5)
    chunks = np.concatenate([next(stream) for _ in range(4)])
    assert np.array_equal(chunks, WORLD.sample(11, 20).frames)


@pytest.mark.parametrize("kind", SWITCH_KINDS)
def test_scene_switch_changes_the_caption_and_carries_on(kind):
    for seed in range(4):
        clip = WORLD.sample_switch(seed, 24, switch_frame=12, kind=kind)
        assert clip.kind == kind and clip.frames.shape == (24, 64, 64, 3)
        before, after = PromptIntent.from_scene(clip.scene), PromptIntent.from_scene(clip.scene_after)
        assert before != after and parse_prompt(clip.captions_after[0]) == after
        assert clip.captions[0] != clip.captions_after[0]
        # Before the switch: the first scene alone.
        assert np.array_equal(clip.frames[:12], WORLD.render(clip.scene, 12))
        changed = [(a, b) for a, b in zip(clip.scene.objects, clip.scene_after.objects) if a != b]
        if kind == "background":
            assert clip.scene.background.colour != clip.scene_after.background.colour
        else:
            assert len([1 for a, b in changed if (a.colour, a.shape, a.motion) != (b.colour, b.shape, b.motion)]) == 1
        # Objects that are not replaced do not jump at the switch.
        for a, b in zip(clip.scene.objects, clip.scene_after.objects):
            if kind == "object" and a.colour != b.colour:
                continue
            xa, ya, _ = object_state(a, np.array([12 / 16]), 64, 64)
            xb, yb, _ = object_state(b, np.array([0.0]), 64, 64)
            gap = math.hypot((xa[0] - xb[0] + 32) % 64 - 32, (ya[0] - yb[0] + 32) % 64 - 32)
            assert gap < 1e-6, (kind, seed, a, b)


def test_dataset_items_and_determinism():
    ds = ShapesDataset(ShapesConfig(height=32, width=32), num_frames=6, seed=3, length=4)
    items = list(ds)
    assert len(items) == 4
    for item in items:
        assert item["video"].shape == (3, 6, 32, 32) and item["video"].dtype == torch.float32
        assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
        assert isinstance(item["caption"], str) and item["caption"]
        assert Scene.from_dict(json.loads(item["scene"])).objects
    again = list(ShapesDataset(ShapesConfig(height=32, width=32), num_frames=6, seed=3, length=4))
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(items, again))
    ds.set_epoch(1)
    assert not torch.equal(next(iter(ds))["video"], items[0]["video"])


def test_workers_and_ranks_split_the_stream_without_repeats():
    config = ShapesConfig(height=16, width=16)
    single = [i["scene"] for i in ShapesDataset(config, num_frames=2, seed=9, length=8)]
    assert len(set(single)) == 8
    loader = DataLoader(ShapesDataset(config, num_frames=2, seed=9, length=8), batch_size=None, num_workers=2)
    assert sorted(i["scene"] for i in loader) == sorted(single)
    ranks = [[i["scene"] for i in ShapesDataset(config, num_frames=2, seed=9, length=8, rank=r, world_size=2)]
             for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(single)
    batch = next(iter(DataLoader(ShapesDataset(config, num_frames=2, seed=9, length=8), batch_size=4)))
    assert batch["video"].shape == (4, 3, 2, 16, 16) and len(batch["caption"]) == 4


def test_swapped_caption_changes_one_shape_or_reverses_the_directions():
    """Hard negatives for teacher training: the swapped caption parses to a scene that differs
    in exactly the swapped attribute; motion words that have no direction stay as they are."""
    from engine.shapes.captions import swapped_caption
    from distill.data.shapes import ShapesConfig, ShapesWorld

    rng = np.random.default_rng(0)
    world = ShapesWorld(ShapesConfig(height=64, width=64, fps=16))
    seen = set()
    for seed in range(60):
        for text in world.sample(seed, 4).captions:
            result = swapped_caption(text, rng)
            if result is None:
                continue
            swapped, kind = result
            seen.add(kind)
            before, after = parse_prompt(text), parse_prompt(swapped)
            assert len(before.objects) == len(after.objects) and before.background == after.background
            pairs = list(zip(before.objects, after.objects))
            assert all(a.colour == b.colour for a, b in pairs)
            if kind == "shape":
                assert sum(a.shape != b.shape for a, b in pairs) == 1, (text, swapped)
                assert all(a.motion == b.motion for a, b in pairs)
            else:
                assert all(a.shape == b.shape for a, b in pairs)
                assert any(a.motion != b.motion for a, b in pairs), (text, swapped)
    assert seen == {"shape", "motion"}
    assert swapped_caption("a red ball bouncing up and down", rng)[1] == "shape"
    assert swapped_caption("a blue box moves in a circle", rng)[0].endswith("moves in a circle")
    assert swapped_caption("red things on a green background", rng) is None
