"""The batches the Shapes reward trains and is judged on: real clips, their corrupted
copies, true and mismatched captions, and the scene labels of the attribute heads.

Imports nothing heavy at import time (the training command registers without torch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .train import RewardRun

# Held-out clips are Shapes seeds [0, EVAL_SEEDS); training draws seeds at or above
# TRAIN_SEED_MIN, so the two never meet (the autoencoder trainer splits the same way).
EVAL_SEEDS = 1 << 20
TRAIN_SEED_MIN = 1 << 32


@dataclass
class Batch:
    video: "torch.Tensor"  # [B, 3, T, H, W] real clips in [-1, 1]
    visual_negative: "torch.Tensor"  # [B, 3, T, H, W]
    motion_negative: "torch.Tensor"  # [B, 3, T, H, W]
    captions: list[str]  # B matching captions
    wrong_captions: list[list[str]]  # caption_negatives lists of B mismatched captions
    visual_kinds: list[str]
    motion_kinds: list[str]
    caption_kinds: list[list[str]]
    shown: "torch.Tensor"  # [B, A] multi-hot: the attributes each clip's scene has
    named: "torch.Tensor"  # [(1 + K) * B, A]: the attributes each caption names, true captions first
    attribute_names: tuple[str, ...]  # A


def scene_attributes(scene, names: tuple[str, ...], caption: str | None = None) -> list[float]:
    """Multi-hot [A] of a scene's attributes (names as ShapesRewardConfig.attributes); with a
    caption, only those it names: every object attribute, the background only if its
    colour is in the caption."""
    have = {f"colour:{o.colour}" for o in scene.objects} | {f"shape:{o.shape}" for o in scene.objects}
    have |= {f"motion:{o.motion}" for o in scene.objects}
    if caption is None or scene.background.colour in caption.split():
        have.add(f"background:{scene.background.colour}")
    return [float(a in have) for a in names]


def shapes_world(run: RewardRun):
    from distill.data.shapes import ShapesConfig, ShapesWorld

    return ShapesWorld(ShapesConfig(height=run.model.height, width=run.model.width))


def make_batch(world, run: RewardRun, seeds: list[int], starts: list[int], key: tuple[int, int],
               kinds: tuple[list[str], list[str], list[list[str]]] | None = None) -> Batch:
    """Real clips of `seeds` from `starts`, each with a visual and a motion negative and
    caption_negatives mismatched captions, all drawn from generators keyed by `key`.
    kinds (visual, motion, [captions per negative]) default to cycling through each
    table from a random offset."""
    import numpy as np
    import torch

    from distill.common import step_generator

    from .corrupt import CAPTION_KINDS, MOTION_KINDS, VISUAL_KINDS, corrupt, mismatched_caption, random_caption

    rng = np.random.default_rng(list(key))
    gen = step_generator(*key)
    clips = [world.sample(s, run.num_frames, o) for s, o in zip(seeds, starts)]
    video = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1

    def cycle(table: tuple[str, ...]) -> list[str]:
        offset = int(rng.integers(len(table)))
        return [table[(offset + i) % len(table)] for i in range(len(clips))]

    visual_kinds, motion_kinds, caption_kinds = kinds or (
        cycle(VISUAL_KINDS), cycle(MOTION_KINDS), [cycle(CAPTION_KINDS) for _ in range(run.caption_negatives)])
    names = run.model.attributes
    captions = [random_caption(c.scene, rng) for c in clips]
    wrong = [[mismatched_caption(c.scene, k, rng) for c, k in zip(clips, ks)] for ks in caption_kinds]
    named = [scene_attributes(c.scene, names, text) for c, text in zip(clips, captions)]
    named += [scene_attributes(scene, names, text) for row in wrong for text, scene in row]
    return Batch(
        video=video,
        visual_negative=corrupt(video, visual_kinds, gen),
        motion_negative=corrupt(video, motion_kinds, gen),
        captions=captions,
        wrong_captions=[[text for text, _ in row] for row in wrong],
        visual_kinds=visual_kinds, motion_kinds=motion_kinds, caption_kinds=caption_kinds,
        shown=torch.tensor([scene_attributes(c.scene, names) for c in clips]),
        named=torch.tensor(named),
        attribute_names=names,
    )


def training_batch(world, run: RewardRun, step: int) -> Batch:
    """The batch of `step`: deterministic in (seed, step), so a resumed run sees what it
    would have seen."""
    import numpy as np

    rng = np.random.default_rng([run.seed, step])
    seeds = [int(s) for s in rng.integers(TRAIN_SEED_MIN, 2**62, size=run.batch_size)]
    starts = [int(s) for s in rng.integers(0, run.max_start_frame + 1, size=run.batch_size)]
    return make_batch(world, run, seeds, starts, (run.seed, step))


def heldout_batch(world, run: RewardRun, index: int) -> Batch:
    """Held-out clip `index` (a seed training never draws) against every negative kind:
    sample i of the batch is the clip with visual kind i, motion kind i, caption kind i."""
    from .corrupt import CAPTION_KINDS, MOTION_KINDS, VISUAL_KINDS

    if not 0 <= index < EVAL_SEEDS:
        raise ValueError(f"held-out index must be in [0, {EVAL_SEEDS})")
    n = len(VISUAL_KINDS)
    if not n == len(MOTION_KINDS) == len(CAPTION_KINDS):
        raise ValueError("held-out batches pair kind i of each table: the tables must be equally long")
    start = index * 37 % (run.max_start_frame + 1)
    held = dataclasses.replace(run, num_frames=run.eval_frames)
    return make_batch(world, held, [index] * n, [start] * n, (index, 1 << 40),
                      kinds=(list(VISUAL_KINDS), list(MOTION_KINDS), [list(CAPTION_KINDS)]))
