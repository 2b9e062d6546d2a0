"""The named prompt sets: the held-out set is outside what training captions can say, and
the evaluator reads every prompt of both sets."""

import subprocess
import sys

import torch

from engine.shapes.captions import caption_vocabulary, caption_words, parse_prompt
from distill.data.shapes import ShapesWorld
from distill.eval.prompts import PROMPT_SETS, heldout_prompts


def test_caption_vocabulary_covers_every_training_caption():
    """The word list the held-out check relies on is complete: sampled captions (every
    template, synonyms, dropped motions) use no word outside it."""
    vocabulary, world = caption_vocabulary(), ShapesWorld()
    for seed in range(1500):
        for caption in world.sample(seed, 1).captions:
            assert set(caption_words(caption)) <= vocabulary, caption


def test_no_training_caption_can_produce_a_heldout_prompt():
    vocabulary = caption_vocabulary()
    prompts = heldout_prompts()
    assert len(prompts) >= 40 and len(set(prompts)) == len(prompts)
    for prompt in prompts:
        assert set(caption_words(prompt)) - vocabulary, f"only template words: {prompt!r}"


def test_heldout_prompts_cover_what_people_type():
    intents = [parse_prompt(p) for p in heldout_prompts()]
    assert all(i.objects and all(o.colour and o.shape for o in i.objects) for i in intents)
    assert sum(i.background is None for i in intents) >= 10  # no background named
    assert sum(any(o.motion is None for o in i.objects) for i in intents) >= 4  # no motion named
    assert sum(len(i.objects) == 2 for i in intents) >= 5  # two objects
    synonyms = {"crimson", "scarlet", "azure", "cobalt", "violet", "lilac", "ball", "disc", "dot", "box", "block"}
    assert sum(bool(synonyms & set(caption_words(p))) for p in heldout_prompts()) >= 20


def test_named_sets_through_the_cli(capsys):
    assert set(PROMPT_SETS) == {"standard", "heldout"}
    from distill.commands import _read_prompts

    assert _read_prompts("heldout", 3) == heldout_prompts()[:3]


def test_canonical_prompt_says_what_a_prompt_asks_in_the_canonical_words():
    from engine.shapes import vocab
    from engine.shapes.captions import canonical_prompt
    from distill.eval.prompts import standard_prompts

    assert all(canonical_prompt(p) == p for p in standard_prompts())  # canonical already: unchanged
    for prompt in heldout_prompts() + ["a ball", "red ball on red background", "a big cobalt star contracting"]:
        asked, rewritten = parse_prompt(prompt), canonical_prompt(prompt)
        assert rewritten is not None and rewritten in {canonical_prompt(rewritten)}, prompt  # a fixed point
        got = parse_prompt(rewritten)
        assert len(got.objects) == len(asked.objects), (prompt, rewritten)
        for a, g in zip(asked.objects, got.objects):  # everything said is kept; the unsaid is filled
            assert g.shape == a.shape and g.colour == (a.colour or g.colour) and g.colour is not None
            assert g.motion == (a.motion or "stop")
            # (a size is not said of an object that grows or shrinks, as the captions do)
            assert g.size == (None if g.motion in ("grow", "shrink") else a.size or "medium")
        assert got.pattern == (None if asked.pattern == "solid" else asked.pattern)  # a plain one goes unsaid
        if asked.background is None:  # a background that differs from every object
            assert got.background in vocab.ALL_COLOURS and got.background not in {o.colour for o in got.objects}
        else:
            assert got.background == asked.background
    # no object the world draws, or more than its canonical slots: left as it is (None)
    assert canonical_prompt("a beautiful sunset over the sea") is None and canonical_prompt("") is None
    assert canonical_prompt("a red ball, a blue box, a green star and a pink dot") is None


def test_a_model_with_prompt_rewrite_reads_the_canonical_caption():
    from engine.config import ModelConfig
    from engine.model import read_prompt
    from tests.engine_helpers import tiny_model

    prompt = "a crimson ball drifting slowly to the left"
    rewritten = "a medium red circle moves left on a cyan background"
    shipped = ModelConfig.load("engine/models/shapes-default/model.json")
    assert shipped.prompt_rewrite == "shapes" and read_prompt(shipped, prompt) == rewritten
    assert read_prompt(shipped, "a corgi surfing a wave") == "a corgi surfing a wave"  # nothing of the world
    plain = tiny_model()
    assert plain.config.prompt_rewrite == "none" and plain.read_prompt(prompt) == prompt
    rewriting = tiny_model()
    rewriting.config = rewriting.config.model_copy(update={"prompt_rewrite": "shapes"})
    # the context the stream is conditioned on is the rewritten prompt's, and the prompt as written is kept
    session = rewriting.open_session(prompt, seed=0)
    assert session.prompt == prompt
    torch.testing.assert_close(session.context, plain.context_for(rewritten))
    assert not torch.allclose(session.context, plain.context_for(prompt))


def test_the_engine_imports_neither_distill_nor_server():
    """The import direction: server -> engine, distill -> engine. The prompt rewrite reads the
    Shapes world's language from engine.shapes, never from distill."""
    code = (
        "import importlib, pkgutil, sys, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ImportError as exc:\n"
        "        if 'distill' in str(exc) or 'server' in str(exc): raise\n"  # optional GPU wheels may be absent
        "from engine.config import ModelConfig\n"
        "from engine.model import read_prompt\n"
        "read_prompt(ModelConfig(prompt_rewrite='shapes'), 'a red ball')\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('distill', 'server'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
