"""The Shapes slot text encoder (`text_encoder.kind: shapes`): a prompt read with the world's
parser into one token per object and one for the background, so that what is said of an
object stays bound to it whatever the phrasing."""

from __future__ import annotations

import pytest
import torch

from engine.components import build_text_encoder
from engine.config import ModelConfig, TextEncoderConfig
from engine.shapes import vocab
from engine.shapes.slots import CODE_DIM, MAX_OBJECTS, ShapesTextEncoder


def test_a_paraphrase_reads_as_its_canonical_caption():
    enc = ShapesTextEncoder(64, 8)
    canonical, paraphrase = enc.encode(["a medium red circle moves left on a cyan background",
                                        "on a cyan backdrop, a medium-sized crimson ball drifts to the left"])
    assert torch.equal(canonical, paraphrase)
    assert canonical.count_nonzero() == 2 + 5  # background: kind, colour; object: kind, colour, shape, size, motion


def test_each_attribute_moves_only_its_own_object_token():
    enc = ShapesTextEncoder(64, 8)
    base = "a small green star moves up and a large yellow square bounces on a black background"
    variants = {"shape": base.replace("star", "circle"), "colour": base.replace("yellow", "purple"),
                "motion": base.replace("bounces", "moves down"), "background": base.replace("black", "white")}
    codes = enc.encode([base, *variants.values()])
    changed = {name: sorted({t for t, _ in (codes[0] - codes[1 + i]).nonzero().tolist()})
               for i, name in enumerate(variants)}
    assert changed == {"shape": [1], "colour": [2], "motion": [2], "background": [0]}
    # the two objects' tokens say which object they are: swapping the objects swaps the tokens
    swapped = enc.encode(["a large yellow square bounces and a small green star moves up on a black background"])[0]
    assert not torch.equal(swapped[1], codes[0][1]) and torch.equal(swapped[1][MAX_OBJECTS + 1:],
                                                                    codes[0][2][MAX_OBJECTS + 1:])


def test_nothing_of_the_world_reads_as_no_prompt_and_rms_scales_tokens():
    enc = ShapesTextEncoder(384, 32, "rms")
    corgi, ball = enc.encode(["a corgi surfing a wave", "a red ball"])
    assert corgi.count_nonzero() == 0  # what caption dropout trains as the unconditional branch
    said = ball.abs().sum(-1) > 0
    assert said.tolist()[:3] == [True, True, False]
    assert torch.allclose(ball[said].pow(2).mean(-1), torch.ones(2))


def test_built_from_a_model_config_and_checked():
    config = ModelConfig(text_encoder=TextEncoderConfig(kind="shapes", dim=64, max_tokens=8),
                         transformer=ModelConfig().transformer.model_copy(update={"text_dim": 64}))
    encoder = build_text_encoder(config, None, "cpu")
    assert encoder.encode([f"a {vocab.SHAPES[2]}"]).shape == (1, 8, 64)
    with pytest.raises(ValueError, match="slot codes need"):
        ShapesTextEncoder(CODE_DIM - 1, 8)
    with pytest.raises(ValueError, match="fewer than a background"):
        ShapesTextEncoder(64, MAX_OBJECTS)


def test_a_model_reading_slots_streams_and_its_prompt_decides_the_video():
    from engine import PRESETS
    from engine.model import StreamModel, build_decoder, build_transformer

    base = PRESETS["tiny-random"]
    config = base.model_copy(update={
        "text_encoder": TextEncoderConfig(kind="shapes", dim=64, max_tokens=8, feature_norm="rms"),
        "transformer": base.transformer.model_copy(update={"text_dim": 64})})
    config = config.model_validate(config.model_dump())
    model = StreamModel(config, build_transformer(config), build_text_encoder(config, None, "cpu"),
                        build_decoder(config, None, "cpu"))

    def first_chunk(prompt: str):
        session = model.open_session(prompt, seed=1)
        try:
            return session.next_chunk().frames
        finally:
            session.close()

    ball, paraphrase, square = (first_chunk(p) for p in ("a red circle on a blue background",
                                                         "on a blue backdrop, a crimson ball", "a red square on a blue background"))
    assert ball.shape[0] > 0 and (ball == paraphrase).all()  # the same slots: the same video
    assert (ball != square).any()
