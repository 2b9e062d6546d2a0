"""Where a student's prompts come from: the Shapes world's captions (the Shapes presets'
default) or a prompt file, as VidProM-style prompt sets come:

    prompts.txt    one prompt per line (blank lines and lines starting with # are skipped)
    prompts.jsonl  one JSON object per line with a "prompt" (or "text") field

    source = prompt_source("prompts.jsonl", world_size=8)
    source.draw(key=step, count=2, seed=0, rank=3)  # this process's 2 prompts of that step

Every draw is a pure function of (key, count, seed, rank): a resumed run draws what an
uninterrupted one would have. A file is read in epochs, each a permutation of its
prompts seeded by (seed, epoch); the `key`-th global batch is the next `count x
world_size` prompts of that order and process `rank` takes its own slice of it, so the
processes of a step never share a prompt (while the file has enough of them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a text file (one per line) or a JSONL file ("prompt" or "text" per line)."""
    path = Path(path)
    prompts = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc})") from None
            text = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f'{path}:{line_no}: a JSON line needs a non-empty "prompt" or "text" field')
            line = text.strip()
        prompts.append(line)
    if not prompts:
        raise ValueError(f"{path}: no prompts in the file")
    return prompts


def shapes_captions(key: int, count: int, seed: int, rank: int) -> list[str]:
    """`count` captions of random Shapes scenes, seeded by (seed, rank, key)."""
    from distill.data.shapes import ShapesConfig, ShapesWorld

    world = ShapesWorld(ShapesConfig(height=32, width=32))
    rng = np.random.default_rng([seed, rank, key])
    return [world.sample(int(s), 1).caption for s in rng.integers(0, 2**62, size=count)]


class ShapesPrompts:
    """Captions of random Shapes scenes (each process its own, seeded by rank)."""

    def draw(self, key: int, count: int, seed: int, rank: int) -> list[str]:
        return shapes_captions(key, count, seed, rank)


class FilePrompts:
    """The prompts of a file, read in seeded epochs and sharded over `world_size` processes."""

    def __init__(self, prompts: list[str], world_size: int = 1):
        self.prompts, self.world_size = prompts, world_size
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def order(self, seed: int, epoch: int) -> np.ndarray:
        if (seed, epoch) not in self._orders:
            if len(self._orders) >= 4:  # a few epochs in flight at most (keys of neighbouring steps)
                self._orders.pop(next(iter(self._orders)))
            self._orders[seed, epoch] = np.random.default_rng([seed, epoch]).permutation(len(self.prompts))
        return self._orders[seed, epoch]

    def draw(self, key: int, count: int, seed: int, rank: int) -> list[str]:
        n = len(self.prompts)
        first = (key * self.world_size + rank) * count  # this process's place in the key-th global batch
        return [self.prompts[int(self.order(seed, p // n)[p % n])] for p in range(first, first + count)]


def prompt_source(path: str | None, world_size: int = 1) -> ShapesPrompts | FilePrompts:
    """A prompt file's prompts (sharded over `world_size` processes), or Shapes captions for None."""
    return ShapesPrompts() if path is None else FilePrompts(read_prompt_file(path), world_size)
