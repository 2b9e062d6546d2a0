"""The named prompt sets of the evaluator.

standard  48 canonical captions that cover every colour, shape, motion, size and
          background pattern, built by a fixed arithmetic rule (no random generator), so
          the set is identical on every machine and numpy version; `standard_scenes`
          gives the scenes they describe, for ground-truth checks.
heldout   44 prompts written by hand the way people type them (synonyms, other word
          orders, no background, no motion, two objects), which no training caption can
          produce (heldout_prompts.txt).
"""

from __future__ import annotations

from pathlib import Path

from engine.shapes import vocab
from engine.shapes.captions import scene_caption
from engine.shapes.scene import Background, ObjectSpec, Scene

NUM_STANDARD = 48


def _object(i: int, colour: str, slot: int) -> ObjectSpec:
    motions, shapes, sizes = vocab.MOTIONS, vocab.SHAPES, tuple(vocab.SIZES)
    motion = motions[(i + 5 * slot) % len(motions)]
    return ObjectSpec(
        colour=colour,
        shape=shapes[(i + i // len(shapes) + 2 * slot) % len(shapes)],
        size=sizes[(i // 2 + slot) % len(sizes)],
        motion=motion,
        x=0.3 + 0.4 * slot,
        y=0.7 if motion == "bounce" else 0.35 + 0.3 * slot,
        period=0.75 if motion == "bounce" else 1.8 if motion == "circle" else 3.0,
        amplitude=0.25 if motion == "bounce" else 0.18,
        clockwise=bool(i % 2),
    )


def standard_scenes(count: int = NUM_STANDARD) -> list[Scene]:
    """Every 4th scene has two objects; colours and backgrounds rotate so that each
    object colour meets several backgrounds and no scene repeats a colour."""
    colours, backgrounds = tuple(vocab.OBJECT_COLOURS), tuple(vocab.ALL_COLOURS)
    scenes = []
    for i in range(count):
        used = [colours[(3 * i) % len(colours)]]
        if i % 4 == 3:
            used.append(colours[(3 * i + 1 + (i // 4) % 7) % len(colours)])  # offset 1..7: never the first
        objects = tuple(_object(i, c, slot) for slot, c in enumerate(used))
        k = (5 * i + 3) % len(backgrounds)
        while backgrounds[k] in used:
            k = (k + 1) % len(backgrounds)
        pattern = vocab.BACKGROUND_PATTERNS[(i // 4) % len(vocab.BACKGROUND_PATTERNS)]
        scenes.append(Scene(objects, Background(backgrounds[k], pattern, angle=45.0 * (i % 4))))
    return scenes


def standard_prompts(count: int = NUM_STANDARD) -> list[str]:
    """The canonical captions of `standard_scenes(count)`."""
    return [scene_caption(s) for s in standard_scenes(count)]


HELDOUT_FILE = Path(__file__).with_name("heldout_prompts.txt")


def heldout_prompts() -> list[str]:
    lines = (line.strip() for line in HELDOUT_FILE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


PROMPT_SETS = {"standard": standard_prompts, "heldout": heldout_prompts}
