"""The Shapes world: procedural captioned videos to train on, generated on the fly.

    world = ShapesWorld(ShapesConfig(height=128, width=128, fps=16))
    clip = world.sample(seed=3, num_frames=16)
    clip.frames    # np.uint8 [T, H, W, 3]
    clip.caption   # one paraphrase, e.g. "red ball rolling to the left, blue backdrop"
    clip.captions  # all paraphrases; [0] is canonical and names everything
    clip.scene     # the structured Scene (objects, motions, background)
    switch = world.sample_switch(seed=3, num_frames=48, switch_frame=24)
    switch.caption, switch.caption_after  # the prompt before and after the change

    ds = ShapesDataset(ShapesConfig(), num_frames=16, seed=0)  # torch IterableDataset
    item = next(iter(ds))  # {"video": float [3, T, H, W] in [-1, 1], "caption": str, "scene": JSON str}

The same seed always gives the same clip (scene, captions and pixels), on any
machine and in any worker; any window of an endless stream can be rendered alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from engine.shapes.captions import scene_captions
from distill.data.render import render_timeline
from engine.shapes.scene import (
    Scene, SceneSampling, carried_on, random_background, random_object, random_scene, state_at, with_motion,
)

SWITCH_KINDS: tuple[str, ...] = ("motion", "colour", "shape", "background", "object")


@dataclass(frozen=True)
class ShapesConfig:
    height: int = 128
    width: int = 128
    fps: int = 16
    num_captions: int = 6  # paraphrases written per clip
    sampling: SceneSampling = field(default_factory=SceneSampling)


@dataclass
class ShapesClip:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    caption: str  # a random paraphrase from `captions`
    captions: list[str]  # [0] canonical
    scene: Scene
    fps: int


@dataclass
class ShapesSwitchClip:
    """A clip whose scene changes at `switch_frame` (one of SWITCH_KINDS)."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    switch_frame: int
    kind: str
    caption: str  # before the switch
    captions: list[str]
    scene: Scene
    caption_after: str
    captions_after: list[str]
    scene_after: Scene
    fps: int


class ShapesWorld:
    """Samples and renders Shapes scenes; stateless apart from its config."""

    def __init__(self, config: ShapesConfig = ShapesConfig()):
        self.config = config

    def scene(self, seed: int) -> Scene:
        """The scene of `seed` (what `sample(seed, ...)` renders)."""
        c = self.config
        return random_scene(np.random.default_rng(seed), c.sampling, aspect=c.width / c.height)

    def render(self, scenes: Scene | list[Scene], num_frames: int, start_frame: int = 0) -> np.ndarray:
        """Frames [start_frame, start_frame + num_frames) of a scene or of a timeline of
        scenes (each from its start_frame on). -> uint8 [T, H, W, 3]"""
        timeline = [scenes] if isinstance(scenes, Scene) else list(scenes)
        c = self.config
        return render_timeline(timeline, start_frame, num_frames, c.height, c.width, c.fps)

    def sample(self, seed: int, num_frames: int, start_frame: int = 0) -> ShapesClip:
        """A clip of the scene of `seed`; start_frame > 0 takes a later window of the
        same endless stream (the scene and captions do not depend on it)."""
        rng = np.random.default_rng(seed)
        c = self.config
        scene = random_scene(rng, c.sampling, aspect=c.width / c.height)
        captions = scene_captions(scene, rng, c.num_captions)
        caption = captions[int(rng.integers(len(captions)))]
        frames = self.render(scene, num_frames, start_frame)
        return ShapesClip(frames=frames, caption=caption, captions=captions, scene=scene, fps=c.fps)

    def stream(self, seed: int, chunk_frames: int) -> Iterator[np.ndarray]:
        """Endless chunks of uint8 [chunk_frames, H, W, 3] of the scene of `seed`."""
        scene = self.scene(seed)
        start = 0
        while True:
            yield self.render(scene, chunk_frames, start)
            start += chunk_frames

    def sample_switch(self, seed: int, num_frames: int, switch_frame: int, kind: str | None = None) -> ShapesSwitchClip:
        """A clip whose scene changes at `switch_frame`: one object's motion, colour or
        shape, the background colour, or one object replaced by a new one (`kind`, or
        random). Objects carry on from where they are; the second caption describes
        the scene after the change."""
        rng = np.random.default_rng(seed)
        c = self.config
        before = random_scene(rng, c.sampling, aspect=c.width / c.height)
        kind = kind or str(rng.choice(SWITCH_KINDS))
        if kind not in SWITCH_KINDS:
            raise ValueError(f"unknown switch kind {kind!r}; one of {SWITCH_KINDS}")
        t = switch_frame / c.fps
        objects = [carried_on(o, t) for o in before.objects]
        background = before.background
        i = int(rng.integers(len(objects)))
        taken = {o.colour for o in objects} | {background.colour}
        if kind == "motion":
            motion = str(rng.choice([m for m in c.sampling.motions if m != objects[i].motion]))
            objects[i] = with_motion(state_at(before.objects[i], t, c.height, c.width), motion, rng, c.sampling)
        elif kind == "colour":
            objects[i] = replace(objects[i], colour=str(rng.choice([k for k in c.sampling.colours if k not in taken])))
        elif kind == "shape":
            objects[i] = replace(objects[i], shape=str(rng.choice([s for s in c.sampling.shapes if s != objects[i].shape])))
        elif kind == "background":
            background = random_background(rng, c.sampling, sorted(taken))
        else:  # object: a new one takes the place of object i
            colour = str(rng.choice([k for k in c.sampling.colours if k not in taken]))
            objects[i] = random_object(rng, c.sampling, colour, aspect=c.width / c.height)
        after = Scene(objects=tuple(objects), background=background, start_frame=switch_frame)
        captions = scene_captions(before, rng, c.num_captions)
        captions_after = scene_captions(after, rng, c.num_captions)
        frames = self.render([before, after], num_frames)
        return ShapesSwitchClip(
            frames=frames, switch_frame=switch_frame, kind=kind,
            caption=captions[int(rng.integers(len(captions)))], captions=captions, scene=before,
            caption_after=captions_after[int(rng.integers(len(captions_after)))],
            captions_after=captions_after, scene_after=after, fps=c.fps,
        )


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """The clip seed of sample `index` of `epoch`: independent streams per index, the
    same on every worker and rank (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([base_seed, epoch, index]).generate_state(1)[0])


class ShapesDataset(IterableDataset):
    """Endless (or `length`-long) Shapes clips for training, generated on the fly.

    Yields {"video": float32 [3, T, H, W] in [-1, 1], "caption": str, "scene": str
    (the Scene as JSON, so the default collate keeps it)}. Sample i of an epoch always
    has seed `sample_seed(seed, epoch, i)`; DataLoader workers and distributed ranks
    take interleaved indices, so together they see each index once and never repeat
    one another. Call `set_epoch` between epochs for new clips."""

    def __init__(self, config: ShapesConfig = ShapesConfig(), num_frames: int = 16, seed: int = 0,
                 length: int | None = None, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self.world = ShapesWorld(config)
        self.num_frames = num_frames
        self.seed = seed
        self.length = length
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.world_size = world_size if world_size is not None else (torch.distributed.get_world_size() if dist else 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless ShapesDataset has no length")
        return self.length

    def item(self, index: int) -> dict:
        clip = self.world.sample(sample_seed(self.seed, self.epoch, index), self.num_frames)
        video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)  # [3, T, H, W]
        return {"video": video, "caption": clip.caption, "scene": json.dumps(clip.scene.to_dict())}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        stride = workers * self.world_size
        index = self.rank * workers + worker
        while self.length is None or index < self.length:
            yield self.item(index)
            index += stride
