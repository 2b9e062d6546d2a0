"""A text encoder that reads a prompt as the Shapes world's slots: one token per object and
one for the background, each the one-hot codes of what the prompt says of it.

MiniLM gives the transformer a sentence as contextual word features, and a small teacher
reads them as a thin average of the words (docs/default-model.md, "How the teacher reads
its prompt"): colour survives, which shape goes with which object does not. Here binding is
by construction: object i's colour, shape, size and motion sit in one token, with i in it,
so a cross-attention head that finds the object's token has all of it. The prompt is read
with the world's own parser (`parse_prompt`, the evaluator's); what the prompt leaves
unsaid is an empty block, and a prompt naming nothing of the world encodes to all zeros,
which is what caption dropout trains as "no prompt". No weights: the codes are fixed.
"""

from __future__ import annotations

import itertools

import torch

from . import vocab
from .captions import PromptIntent, parse_prompt

MAX_OBJECTS = 3
OBJECT_COLOURS = tuple(vocab.OBJECT_COLOURS)
ALL_COLOURS = tuple(vocab.ALL_COLOURS)
SIZES = tuple(vocab.SIZES)
PATTERNS = ("gradient", "stripes")  # a plain background: neither

# Token layout: [what it is (background, object 1..MAX_OBJECTS)] [object: colour | shape |
# size | motion] [background: colour | pattern]. Blocks never overlap, so codes add up.
_BLOCKS = (("kind", 1 + MAX_OBJECTS), ("colour", len(OBJECT_COLOURS)), ("shape", len(vocab.SHAPES)),
           ("size", len(SIZES)), ("motion", len(vocab.MOTIONS)), ("bg_colour", len(ALL_COLOURS)),
           ("pattern", len(PATTERNS)))
_OFFSET = dict(zip((name for name, _ in _BLOCKS), itertools.accumulate((w for _, w in _BLOCKS), initial=0)))
CODE_DIM = sum(w for _, w in _BLOCKS)


def _set(row: torch.Tensor, block: str, options: tuple[str, ...], value: str | None) -> None:
    if value is not None and value in options:
        row[_OFFSET[block] + options.index(value)] = 1.0


def encode_intent(intent: PromptIntent, out: torch.Tensor) -> None:
    """Write the slot tokens of `intent` into `out` [max_tokens, dim] (zeros beyond them)."""
    if intent.objects and len(intent.objects) <= MAX_OBJECTS:
        bg = out[0]
        bg[_OFFSET["kind"]] = 1.0
        _set(bg, "bg_colour", ALL_COLOURS, intent.background)
        _set(bg, "pattern", PATTERNS, intent.pattern)
        for i, o in enumerate(intent.objects[: out.shape[0] - 1]):
            row = out[1 + i]
            row[_OFFSET["kind"] + 1 + i] = 1.0
            _set(row, "colour", OBJECT_COLOURS, o.colour)
            _set(row, "shape", vocab.SHAPES, o.shape)
            _set(row, "size", SIZES, o.size)
            _set(row, "motion", vocab.MOTIONS, o.motion)


class ShapesTextEncoder:
    """`text_encoder.kind: shapes`: [B, max_tokens, dim] slot codes (dim >= CODE_DIM; the rest
    zero). `feature_norm: rms` scales each token to unit root-mean-square, as for MiniLM."""

    def __init__(self, dim: int, max_tokens: int, feature_norm: str = "none"):
        if dim < CODE_DIM:
            raise ValueError(f"text_encoder.dim {dim} is below the {CODE_DIM} the Shapes slot codes need")
        if max_tokens < 1 + MAX_OBJECTS:
            raise ValueError(f"text_encoder.max_tokens {max_tokens} holds fewer than a background and "
                             f"{MAX_OBJECTS} objects")
        self.dim, self.max_tokens, self.feature_norm = dim, max_tokens, feature_norm

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.max_tokens, self.dim)
        for i, prompt in enumerate(prompts):
            encode_intent(parse_prompt(prompt), out[i])
        if self.feature_norm == "rms":  # exactly unit RMS: a lone one-hot is far below MiniLM's eps
            rms = out.pow(2).mean(-1, keepdim=True).sqrt()
            out = torch.where(rms > 0, out / rms.clamp_min(1e-12), out)
        return out
