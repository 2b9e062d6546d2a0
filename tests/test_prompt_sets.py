"""The named prompt sets: the held-out set is outside what training captions can say, and
the evaluator reads every prompt of both sets."""

from distill.data.captions import caption_vocabulary, caption_words, parse_prompt
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
