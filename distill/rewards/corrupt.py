"""The negatives the Shapes reward learns from: what a bad video looks like, per dimension.

Visual (each frame looks worse, the motion is intact): blur, noise, colour shift, blocks
(lost resolution), flicker (per-frame brightness and gain jumps).
Motion (each frame is a real frame, their order or timing is wrong): shuffle, freeze
(the clip stops part-way, the failure attention sinks cause), stutter (frames held for
several steps), jitter (the whole frame shakes), pingpong (the clip runs forward then
backward, so a straight motion turns round).
Text (the clip is real, the caption is wrong): the caption of another scene, or this
scene's caption with one attribute swapped (an object's colour, shape or motion, or the
background colour). Time-reversed clips are not used as motion negatives: a reversed
Shapes clip is a plausible clip of the opposite motion; the caption swaps cover
direction instead.

All video functions take float [B, 3, T, H, W] in [-1, 1], one kind per sample, and draw
their severities from a torch.Generator, so a step's negatives are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from engine.shapes import vocab
from engine.shapes.captions import NUM_TEMPLATES, scene_caption
from engine.shapes.scene import Scene, random_scene

VISUAL_KINDS: tuple[str, ...] = ("blur", "noise", "colour", "blocks", "flicker")
MOTION_KINDS: tuple[str, ...] = ("shuffle", "freeze", "stutter", "jitter", "pingpong")
CAPTION_KINDS: tuple[str, ...] = ("other", "colour", "shape", "motion", "background")


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=gen))


# --- visual ----------------------------------------------------------------------------------


def blur(clip: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every frame. [3, T, H, W] -> same"""
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=clip.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c, t, h, w = clip.shape
    frames = clip.reshape(c * t, 1, h, w)
    frames = F.conv2d(F.pad(frames, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    frames = F.conv2d(F.pad(frames, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return frames.view(c, t, h, w)


def corrupt_visual_one(clip: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """One clip [3, T, H, W] made to look worse in one way, severity drawn from gen."""
    if kind == "blur":
        out = blur(clip, _uniform(gen, 0.8, 2.0))
    elif kind == "noise":
        out = clip + _uniform(gen, 0.04, 0.15) * torch.randn(clip.shape, generator=gen)
    elif kind == "colour":
        sign = torch.randint(0, 2, (3, 1, 1, 1), generator=gen) * 2 - 1
        offset = sign * (0.1 + 0.2 * torch.rand((3, 1, 1, 1), generator=gen))
        out = clip * _uniform(gen, 0.8, 1.2) + offset
    elif kind == "blocks":
        k = (4, 8)[_randint(gen, 0, 1)]
        c, t, h, w = clip.shape
        small = F.avg_pool2d(clip.reshape(c * t, 1, h, w), k)
        out = F.interpolate(small, size=(h, w), mode="nearest").view(c, t, h, w)
    elif kind == "flicker":
        t = clip.shape[1]
        strength = _uniform(gen, 0.06, 0.18)
        offset = strength * torch.randn((1, t, 1, 1), generator=gen)
        gain = 1 + 0.5 * strength * torch.randn((1, t, 1, 1), generator=gen)
        out = clip * gain + offset
    else:
        raise ValueError(f"unknown visual corruption {kind!r}; one of {VISUAL_KINDS}")
    return out.clamp(-1, 1)


# --- motion ------------------------------------------------------------------------------------


def motion_indices(kind: str, t: int, gen: torch.Generator) -> torch.Tensor | None:
    """The frame order of a re-timed clip [T] (None for kinds that are not re-timings)."""
    if kind == "shuffle":
        order = torch.randperm(t, generator=gen)
        if torch.equal(order, torch.arange(t)):
            order = order.flip(0)
        return order
    if kind == "freeze":  # runs normally until `stop`, then holds that frame
        stop = _randint(gen, 0, t // 2)
        return torch.arange(t).clamp(max=stop)
    if kind == "stutter":  # each frame held for `hold` steps: the same span at 1/hold the frame rate
        hold = _randint(gen, 2, 4)
        return torch.arange(t) // hold * hold
    if kind == "pingpong":  # forward to `turn`, then back the way it came
        turn = _randint(gen, t // 3, 2 * t // 3)
        idx = torch.arange(t)
        return torch.where(idx <= turn, idx, (2 * turn - idx).clamp(min=0))
    return None


def corrupt_motion_one(clip: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """One clip [3, T, H, W] with real frames in a wrong order or place."""
    if kind == "jitter":  # the frame shifts by a few pixels each step (the Shapes world wraps)
        t = clip.shape[1]
        shifts = torch.randint(-4, 5, (t, 2), generator=gen)
        return torch.stack([clip[:, i].roll((int(dy), int(dx)), dims=(-2, -1)) for i, (dy, dx) in enumerate(shifts)],
                           dim=1)
    order = motion_indices(kind, clip.shape[1], gen)
    if order is None:
        raise ValueError(f"unknown motion corruption {kind!r}; one of {MOTION_KINDS}")
    return clip[:, order]


def corrupt(video: torch.Tensor, kinds: list[str], gen: torch.Generator) -> torch.Tensor:
    """Sample b of video [B, 3, T, H, W] corrupted by kinds[b] (visual or motion)."""
    out = []
    for clip, kind in zip(video, kinds):
        out.append(corrupt_visual_one(clip, kind, gen) if kind in VISUAL_KINDS else corrupt_motion_one(clip, kind, gen))
    return torch.stack(out)


# --- captions ------------------------------------------------------------------------------------


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A paraphrase in a random template (positives and negatives are written alike, so
    the wording never tells them apart)."""
    return scene_caption(scene, rng, int(rng.integers(NUM_TEMPLATES)))


def swapped_scene(scene: Scene, kind: str, rng: np.random.Generator) -> Scene:
    """The scene with one attribute changed (kind in CAPTION_KINDS), or another scene."""
    objects = list(scene.objects)
    i = int(rng.integers(len(objects)))
    taken = {o.colour for o in objects} | {scene.background.colour}
    if kind == "other":  # redrawn in the (rare) case it says what this scene says
        while scene_caption(other := random_scene(rng)) == scene_caption(scene):
            pass
        return other
    if kind == "colour":
        free = [c for c in vocab.OBJECT_COLOURS if c not in taken]
        objects[i] = replace(objects[i], colour=str(rng.choice(free)))
    elif kind == "shape":
        objects[i] = replace(objects[i], shape=str(rng.choice([s for s in vocab.SHAPES if s != objects[i].shape])))
    elif kind == "motion":
        objects[i] = replace(objects[i], motion=str(rng.choice([m for m in vocab.MOTIONS if m != objects[i].motion])))
    elif kind == "background":
        free = [c for c in vocab.ALL_COLOURS if c not in taken]
        return replace(scene, background=replace(scene.background, colour=str(rng.choice(free))))
    else:
        raise ValueError(f"unknown caption swap {kind!r}; one of {CAPTION_KINDS}")
    return replace(scene, objects=tuple(objects))


def mismatched_caption(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[str, Scene]:
    """A caption that does not describe `scene` (another scene's, or one attribute off),
    and the scene it does describe. Some paraphrases leave the background out; a
    background swap redraws until the caption names the new background (or takes the
    canonical form, which always does), else it would be a true caption labelled false."""
    wrong = swapped_scene(scene, kind, rng)
    if kind != "background":
        return random_caption(wrong, rng), wrong
    for _ in range(8):
        caption = random_caption(wrong, rng)
        if wrong.background.colour in caption.split():
            return caption, wrong
    return scene_caption(wrong), wrong
