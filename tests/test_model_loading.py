"""How `load_model` places a model: the device it picks, the dtype each part runs in (and
the float32 parameters diffusers keeps in a bfloat16 model), and weight files that other
users can read."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from engine import PRESETS, InvalidConfig, load_model, save_model
from engine import model as engine_model
from engine.model import default_device, model_dtype
from engine.transformer import CausalWanTransformer, build_transformer

BF16 = PRESETS["tiny-random"].model_copy(update={"dtype": "bfloat16"})


def kept_in_fp32(name: str) -> bool:
    return bool(set(CausalWanTransformer._keep_in_fp32_modules) & set(name.split(".")))


def test_bf16_build_keeps_diffusers_float32_parts_and_does_not_warn(capfd):
    model = build_transformer(BF16, dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["scale_shift_table"] == dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    assert dtypes["blocks.0.attn1.to_q.weight"] == dtypes["blocks.0.ffn.net.2.weight"] == torch.bfloat16
    assert all((dtype == torch.float32) == kept_in_fp32(name) for name, dtype in dtypes.items())
    assert model.dtype == torch.bfloat16
    # RoPE built while bfloat16 was the default dtype still equals a float32 build's
    reference = build_transformer(PRESETS["tiny-random"])
    assert torch.equal(model.rope.freqs_cos, reference.rope.freqs_cos)
    assert "Casting directly" not in capfd.readouterr().err


def test_bf16_weights_fill_float32_parameters_exactly(tmp_path):
    source = build_transformer(BF16, dtype=torch.bfloat16, seed=4)
    save_model(tmp_path / "m", BF16, source)
    loaded = load_model(str(tmp_path / "m"), device="cpu", dtype="bfloat16")
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.transformer.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_weights_stored_in_bf16_load_into_a_float32_model_as_their_rounding(tmp_path):
    """save_model(weights_dtype="bfloat16") (a run's `weights_dtype`, how the default model ships)
    halves the file; loading fills the float32 model with exactly the bf16-rounded weights."""
    from safetensors import safe_open

    fp32 = PRESETS["tiny-random"]
    source = build_transformer(fp32, seed=5)
    save_model(tmp_path / "full", fp32, source)
    save_model(tmp_path / "half", fp32, source, weights_dtype="bfloat16")
    with safe_open(tmp_path / "half" / "transformer.safetensors", "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    sizes = [(tmp_path / d / "transformer.safetensors").stat().st_size for d in ("full", "half")]
    assert sizes[1] < 0.55 * sizes[0], sizes
    loaded = load_model(str(tmp_path / "half"), device="cpu", backend="eager")
    assert loaded.transformer.dtype == torch.float32
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.transformer.state_dict().items()):
        assert b.dtype == torch.float32 and torch.equal(a.to(torch.bfloat16).float(), b), name
    assert any(not torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                    loaded.transformer.state_dict().values()))
    with pytest.raises(ValueError, match="weights_dtype"):
        save_model(tmp_path / "bad", fp32, source, weights_dtype="fp8")


def test_model_dtype_follows_the_config_and_the_cpu(monkeypatch):
    fp32 = PRESETS["tiny-random"]
    assert model_dtype(BF16, "cuda") == torch.bfloat16 and model_dtype(fp32, "cuda:1") == torch.float32
    monkeypatch.setattr(engine_model, "cpu_has_bf16", lambda: True)
    assert model_dtype(BF16, "cpu") == torch.bfloat16
    assert model_dtype(fp32, "cpu") == torch.float32  # the default model's config: float32
    assert model_dtype(BF16, "cpu", backend="onnxruntime") == torch.float32  # no bfloat16 MatMul on its CPU EP
    assert model_dtype(BF16, "cuda", backend="onnxruntime") == torch.bfloat16
    monkeypatch.setattr(engine_model, "cpu_has_bf16", lambda: False)  # oneDNN would emulate: 0.6-0.8x
    assert model_dtype(BF16, "cpu") == torch.float32
    assert model_dtype(BF16, "cpu", override="bfloat16") == torch.bfloat16  # asked for: honoured
    assert model_dtype(fp32, "cpu", override="float16") == torch.float32
    assert model_dtype(BF16, "cpu", override="float32") == torch.float32
    with pytest.raises(InvalidConfig, match="unknown dtype"):
        model_dtype(fp32, "cpu", override="float64")


def test_load_model_picks_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    model = load_model("tiny-random")
    assert model.device.type == "cpu" and model.dtype == torch.float32


def test_load_model_can_leave_out_text_encoder_and_decoder():
    model = load_model("tiny-random", text_encoder=False, decoder=False)
    assert model.text_encoder is None and model.decoder is None
    assert model.weights_bytes() == sum(p.numel() * p.element_size() for p in model.transformer.parameters())


def test_saved_weights_are_readable_by_other_users(tmp_path):
    """safetensors writes 0600; a model converted by one user is served by another (the
    GPU image runs as uid 10001)."""
    from engine.checkpoints.convert import WEIGHTS_NAME, _write

    config = PRESETS["tiny-random"]
    transformer = build_transformer(config)
    previous = os.umask(0o022)
    try:
        save_model(tmp_path / "saved", config, transformer)
        _write(tmp_path / "converted", config, transformer.state_dict())  # what `framecast convert` writes
    finally:
        os.umask(previous)
    for folder in ("saved", "converted"):
        assert stat.S_IMODE((tmp_path / folder / WEIGHTS_NAME).stat().st_mode) == 0o644


def test_build_engines_builds_in_the_dtype_the_server_will_load(tmp_path, monkeypatch):
    """A bfloat16 model served on ONNX Runtime on a CPU runs in float32 (its CPU provider
    has no bfloat16 MatMul): build-engines must export that, or the server's engine key
    would not match (and ONNX Runtime could not even optimise a bfloat16 graph)."""
    import engine.runtime as runtime
    from framecast.cli import main as cli_main

    config = BF16.model_copy(update={"runtime": "onnxruntime"})
    save_model(tmp_path / "m", config, build_transformer(config, dtype=torch.bfloat16))
    built = {}
    monkeypatch.setattr(runtime, "build_engines", lambda model, options: built.update(dtype=model.dtype) or [])
    assert cli_main(["build-engines", "--model", str(tmp_path / "m"), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "engines")]) == 0
    assert built["dtype"] == torch.float32 == model_dtype(config, "cpu")
