"""Real checkpoint layouts at toy size: each student format converts and loads with every
key in place and computes what Wan's original network computes from the original-layout
weights; the diffusers-format base loads as is and streams; umT5, the Wan VAE and TAEHV
behave as streaming components; bad files fail with a CheckpointError naming the fault.

The files are written here from the released repositories' layouts (tests/checkpoint_fixtures.py),
never produced by the code under test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import CheckpointError, load_model
from engine.checkpoints import FORMATS, ConvertOptions, convert, describe, transformer_parameters
from engine.components import build_decoder
from tests.checkpoint_fixtures import (DIM, original_wan_weights, peft_lora, reference_wan_forward,
                                       taehv_weights, tiny_wan_diffusers)

SIZE = (32, 32)  # frames of 32x32 px: 4x4 latents, 2x2 tokens per frame
ATOL = 1e-4


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_wan_diffusers(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny-Diffusers")


def prefixed(weights: dict, prefix: str = "model.") -> dict:
    return {prefix + k: v for k, v in weights.items()}


def critic() -> dict:
    return prefixed(original_wan_weights(seed=99, layers=1), "model.")


def run_convert(tmp_path: Path, base: Path, fmt: str, input: Path, **kw) -> Path:
    out = tmp_path / f"model-{fmt}"
    convert(ConvertOptions(format=fmt, input=input, base=base, output=out, size=SIZE, **kw))
    return out


def forward_pair(model_dir: Path, weights: dict, **lora):
    """(converted model's full-attention forward, reference forward of the original weights),
    in float32: the conversion must be exact, whatever dtype the model would serve in."""
    model = load_model(str(model_dir), dtype="float32")
    gen = torch.Generator().manual_seed(5)
    x, t = torch.randn(2, 16, 3, 4, 4, generator=gen), torch.tensor([999.0, 317.0])
    text = torch.randn(2, 6, 32, generator=gen)
    tr = model.transformer
    with torch.no_grad():
        got = tr.denoise(x, t, tr.embed_text(text), tr.full_attention(3))
        expected = reference_wan_forward(weights, x, t, text, **lora)
    return got, expected


# --- each released layout -------------------------------------------------------------------

RAW, EMA = original_wan_weights(seed=1), original_wan_weights(seed=2)


def write_self_forcing(d: Path) -> tuple[dict, Path]:
    # trainer/distillation.py: {"generator": fsdp full state dict, "critic": ..., "generator_ema": EMA_FSDP shadow}
    torch.save({"generator": prefixed(RAW), "critic": critic(), "generator_ema": prefixed(EMA)}, d / "sf.pt")
    return EMA, d / "sf.pt"  # the README's inference runs --use_ema


def write_causvid(d: Path) -> tuple[dict, Path]:
    torch.save({"generator": prefixed(RAW), "critic": critic()}, d / "model.pt")
    return RAW, d / "model.pt"


def write_reward_forcing(d: Path) -> tuple[dict, Path]:
    torch.save(prefixed(RAW), d / "rewardforcing.pt")  # inference.py: generator.load_state_dict(torch.load(path))
    return RAW, d / "rewardforcing.pt"


def write_reward_forcing_safetensors(d: Path) -> tuple[dict, Path]:
    save_file(prefixed(RAW), str(d / "rewardforcing.safetensors"))
    return RAW, d / "rewardforcing.safetensors"


def write_rolling_forcing(d: Path) -> tuple[dict, Path]:
    # EMA keys still carry FSDP's wrapper segment (its inference.py strips "_fsdp_wrapped_module.")
    ema = {k.replace("blocks.", "_fsdp_wrapped_module.blocks."): v for k, v in prefixed(EMA).items()}
    torch.save({"generator": prefixed(RAW), "generator_ema": ema, "critic": critic()}, d / "rf.pt")
    return EMA, d / "rf.pt"


WRITERS = {"self-forcing": write_self_forcing, "causvid": write_causvid, "reward-forcing": write_reward_forcing,
           "reward-forcing-safetensors": write_reward_forcing_safetensors, "rolling-forcing": write_rolling_forcing}


@pytest.mark.parametrize("case", sorted(WRITERS))
def test_student_converts_and_equals_original_forward(case, base, tmp_path):
    fmt = case.removesuffix("-safetensors")
    weights, path = WRITERS[case](tmp_path)
    model_dir = run_convert(tmp_path, base, fmt, path)
    got, expected = forward_pair(model_dir, weights)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    config = load_model(str(model_dir)).config
    assert (config.attention, config.sampler) == (FORMATS[fmt].attention, FORMATS[fmt].sampler)
    assert config.provenance["format"] == fmt


def test_weights_option_picks_the_raw_generator(base, tmp_path):
    _, path = write_self_forcing(tmp_path)
    got, expected = forward_pair(run_convert(tmp_path, base, "self-forcing", path, weights="generator"), RAW)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    other, _ = forward_pair(run_convert(tmp_path, base, "self-forcing", path, weights="generator_ema", name="ema",
                                        force=True), RAW)
    assert (other - expected).abs().max() > 0.1  # EMA and raw really are different weights


def test_longlive_lora_merge_equals_runtime_lora(base, tmp_path):
    rank = 4
    lora = {k: v * (0.02 if "lora_B" in k else 1.0) for k, v in peft_lora(seed=3, rank=rank).items()}
    torch.save({"generator": prefixed(RAW), "critic": critic()}, tmp_path / "longlive_base.pt")
    torch.save({"generator_lora": lora, "critic_lora": peft_lora(seed=4, rank=rank), "step": 3000},
               tmp_path / "lora.pt")
    model_dir = run_convert(tmp_path, base, "longlive", tmp_path / "longlive_base.pt", lora=tmp_path / "lora.pt")
    scale = FORMATS["longlive"].lora_alpha / rank  # PEFT: lora_alpha / r
    got, expected = forward_pair(model_dir, RAW, lora=lora, lora_scale=scale)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    _, without = forward_pair(model_dir, RAW)
    assert (expected - without).abs().max() > 0.05  # the adapter changes the output


# --- the diffusers-format base ---------------------------------------------------------------

def test_wan_diffusers_loads_as_teacher_unchanged(base, tmp_path):
    from diffusers import WanTransformer3DModel

    out = tmp_path / "teacher"
    config = convert(ConvertOptions(format="wan-diffusers", input=base, output=out, size=SIZE))
    model = load_model(str(out), dtype="float32")
    # diffusers' own model from the folder (from_pretrained needs `accelerate` for Wan; read the shards by hand)
    folder = base / "transformer"
    reference = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(str(folder))).eval()
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    reference.load_state_dict({k: v for shard in shards for k, v in load_file(str(folder / shard)).items()})
    x, t, text = torch.randn(1, 16, 2, 4, 4), torch.tensor([640.0]), torch.randn(1, 5, 32)
    with torch.no_grad():
        expected = reference(x, t, text, return_dict=False)[0]
        got = model.transformer.denoise(x, t, model.transformer.embed_text(text), model.transformer.full_attention(2))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert config.attention.policy == "full" and config.sampler.shift == 3.0  # scheduler_config's flow_shift
    assert model.text_encoder.encode(["a red ball"]).shape == (1, 512, 32)
    with pytest.raises(CheckpointError, match="apply to the students"):
        convert(ConvertOptions(format="wan-diffusers", input=base, output=tmp_path / "t2", lora=tmp_path / "l.pt"))


def test_student_streams_chunks_end_to_end(base, tmp_path):
    _, path = write_self_forcing(tmp_path)
    model = load_model(str(run_convert(tmp_path, base, "self-forcing", path)))
    session = model.open_session("a red ball bouncing", seed=0)
    first, second = session.next_chunk(), session.next_chunk()
    session.update_prompt("a blue square moving left")
    third = session.next_chunk()
    for chunk in (first, second, third):
        assert chunk.frames.shape == (12, 32, 32, 3) and chunk.frames.dtype.name == "uint8"
    assert first.frames.std() > 1 and not (second.frames == third.frames).all()
    assert (first.frames[:4] == first.frames[0]).all()  # Wan's first frame, held for 4 frames
    info = describe(model.config)
    assert info["frames_per_chunk"] == 12 and info["width"] == 32 and info["streaming"]
    assert info["parameters"] == transformer_parameters(model.config) == \
        sum(p.numel() for p in model.transformer.parameters())


# --- components --------------------------------------------------------------------------------

def test_umt5_zero_pads_past_the_prompt_and_batches_independently(base):
    from transformers import AutoTokenizer, UMT5EncoderModel

    from engine.text_umt5 import UMT5TextEncoder

    enc = UMT5TextEncoder(base, max_tokens=512)
    short, long = "a red ball", "the green  square   moving left slowly"
    both = enc.encode([short, long])
    assert both.shape == (2, 512, 32)
    # 3 words + </s>, and 6 words + </s>; exactly zero after
    assert (both[0, :4].abs().sum(-1) > 0).all() and (both[0, 4:] == 0).all()
    assert (both[1, :7].abs().sum(-1) > 0).all() and (both[1, 7:] == 0).all()
    torch.testing.assert_close(both[:1], enc.encode([short]), atol=1e-5, rtol=0)
    # the encoder's own states for the prompt's tokens
    tok = AutoTokenizer.from_pretrained(str(base / "tokenizer"))
    model = UMT5EncoderModel.from_pretrained(str(base / "text_encoder")).eval()
    ids = tok([short], return_tensors="pt")
    with torch.no_grad():
        direct = model(**ids).last_hidden_state
    torch.testing.assert_close(both[0, :4], direct[0], atol=1e-5, rtol=0)


def test_wan_vae_streams_chunkwise_equal_to_whole_and_to_diffusers(base):
    from diffusers import AutoencoderKLWan

    from engine.wan_vae import WanVAEDecoder

    dec = WanVAEDecoder.load(base / "vae")
    latents = torch.randn(1, 16, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    whole, _ = dec.decode_chunk(latents, dec.init_decoder_state(1))
    state = dec.init_decoder_state(1)
    a, state = dec.decode_chunk(latents[:, :, :1], state)
    b, state = dec.decode_chunk(latents[:, :, 1:], state)
    assert whole.shape == (1, 3, 16, 16, 16)
    torch.testing.assert_close(torch.cat([a, b], 2), whole, atol=1e-6, rtol=0)
    # diffusers' WanPipeline: latents / (1 / std) + mean, then vae.decode -> 1 + 4 * 3 frames
    vae = AutoencoderKLWan.from_pretrained(str(base / "vae")).eval()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        expected = vae.decode(latents / inv_std + mean).sample
    assert expected.shape[2] == 13
    torch.testing.assert_close(whole[:, :, 4:], expected[:, :, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(whole[:, :, :4], expected[:, :, :1].expand(-1, -1, 4, -1, -1), atol=1e-5, rtol=0)


def taehv_sequential(dec, latents: torch.Tensor) -> torch.Tensor:
    """The decoder one frame at a time, every MemBlock reading its previous input frame:
    [B, C, F, h, w] -> raw RGB [B, 3, 4F, H, W] in [0, 1] (no warm-up handling)."""
    from engine.taehv import MemBlock, TimeGrow

    memory: dict[int, torch.Tensor] = {}

    def run(x, start):  # x [B, c, h, w] entering layer `start`
        outs = []
        for i in range(start, len(dec.decoder)):
            layer = dec.decoder[i]
            if isinstance(layer, MemBlock):
                past = memory.get(i, torch.zeros_like(x))
                memory[i] = x
                x = layer(x, past)
            elif isinstance(layer, TimeGrow):
                grown = layer.conv(x).chunk(layer.stride, dim=1)
                return [frame for g in grown for frame in run(g, i + 1)]
            else:
                x = layer(x)
        outs.append(x)
        return outs

    frames = [f for t in range(latents.shape[2]) for f in run(latents[:, :, t], 0)]
    return torch.stack(frames, dim=2).clamp(0, 1)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_taehv_loads_real_key_names_and_streams(suffix, tmp_path):
    from engine.config import DecoderConfig
    from engine.model import PRESETS

    weights = taehv_weights(seed=7)
    path = tmp_path / f"taew2_1{suffix}"
    if suffix == ".pth":
        torch.save(weights, path)
    else:
        save_file(weights, str(path))
    config = PRESETS["tiny-random"].model_copy(update={"decoder": DecoderConfig(kind="taehv", path=str(path))})
    dec = build_decoder(config, None, "cpu")
    latents = torch.randn(1, 16, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    whole, _ = dec.decode_chunk(latents, dec.init_decoder_state(1))
    state = dec.init_decoder_state(1)
    parts = []
    for start in (0, 2, 3):
        end = {0: 2, 2: 3, 3: 6}[start]
        part, state = dec.decode_chunk(latents[:, :, start:end], state)
        parts.append(part)
    assert whole.shape == (1, 3, 24, 32, 32) and whole.std() > 0.01
    torch.testing.assert_close(torch.cat(parts, 2), whole, atol=1e-5, rtol=0)
    with torch.no_grad():
        raw = taehv_sequential(dec, latents) * 2 - 1
    torch.testing.assert_close(whole[:, :, 3:], raw[:, :, 3:], atol=1e-5, rtol=0)
    assert (whole[:, :, :3] == whole[:, :, 3:4]).all()  # warm-up frames replaced by the first real one


# --- bad checkpoints -------------------------------------------------------------------------

def _sf(tmp_path, weights) -> Path:
    torch.save({"generator_ema": prefixed(weights)}, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


def _saved(tmp_path, name, content) -> Path:
    torch.save(content, tmp_path / name)
    return tmp_path / name


def _truncated(tmp_path, suffix) -> Path:
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt":
        torch.save(prefixed(RAW), good)
    else:
        save_file(prefixed(RAW), str(good))
    data = good.read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    return bad


BAD = {
    "missing key": (lambda d: _sf(d, {k: v for k, v in RAW.items() if k != "blocks.1.ffn.2.bias"}),
                    "self-forcing", ["missing", "blocks.1.ffn.2.bias"]),
    "wrong shape": (lambda d: _sf(d, RAW | {"blocks.0.self_attn.q.weight": torch.zeros(DIM, DIM - 8)}),
                    "self-forcing", ["blocks.0.self_attn.q.weight", "(48, 40)"]),
    "unexpected key": (lambda d: _sf(d, RAW | {"blocks.0.self_attn.extra.weight": torch.zeros(3)}),
                       "self-forcing", ["unexpected", "blocks.0.self_attn.extra.weight"]),
    "truncated pickle": (lambda d: _truncated(d, ".pt"), "reward-forcing", ["truncated", "bad.pt"]),
    "truncated safetensors": (lambda d: _truncated(d, ".safetensors"), "reward-forcing",
                              ["truncated", "bad.safetensors"]),
    "not weights": (lambda d: _saved(d, "obj.pt", {"generator": argparse.Namespace(x=1)}),
                    "self-forcing", ["obj.pt", "weights_only"]),
    "not a Wan model": (lambda d: _saved(d, "m.pt", {"generator": {"model.fc.weight": torch.zeros(2)}}),
                        "causvid", ["patch_embedding.weight"]),
    "no generator": (lambda d: _saved(d, "c.pt", {"critic": prefixed(RAW)}), "causvid", ["'generator'", "critic"]),
    "deeper than the base": (lambda d: _sf(d, original_wan_weights(seed=1, layers=3)), "self-forcing",
                             ["num_layers 3 != base 2"]),
    "unknown format": (lambda d: _sf(d, RAW), "open-sora", ["unknown checkpoint format", "open-sora"]),
    "longlive without lora": (lambda d: _sf(d, RAW), "longlive", ["--lora"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_is_named(case, base, tmp_path):
    make, fmt, words = BAD[case]
    with pytest.raises(CheckpointError) as err:
        run_convert(tmp_path, base, fmt, make(tmp_path))
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert not (tmp_path / f"model-{fmt}" / "model.json").exists()


def test_bad_lora_and_missing_base_are_named(base, tmp_path):
    path = _sf(tmp_path, RAW)
    lora = peft_lora(seed=3)
    lora["base_model.model.blocks.0.ffn.0.lora_B.weight"] = torch.zeros(7, 4)
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.0.*\(7, 4\)"):
        run_convert(tmp_path, base, "longlive", path, lora=tmp_path / "lora.pt")
    with pytest.raises(CheckpointError, match="--base is required"):
        convert(ConvertOptions(format="causvid", input=path, output=tmp_path / "x"))


def test_convert_refuses_a_non_empty_output(base, tmp_path):
    _, path = write_causvid(tmp_path)
    run_convert(tmp_path, base, "causvid", path)
    with pytest.raises(CheckpointError, match="not empty"):
        run_convert(tmp_path, base, "causvid", path)


# --- the command line ------------------------------------------------------------------------

def test_cli_convert_success_and_one_line_errors(base, tmp_path, capsys):
    from framecast.cli import main

    _, path = write_causvid(tmp_path)
    out = tmp_path / "cli-model"
    assert main(["convert", "--format", "causvid", "--input", str(path), "--base", str(base), "--size", "32x32",
                 "-o", str(out)]) == 0
    assert "causvid-dmd" in capsys.readouterr().out and (out / "model.json").is_file()

    bad = _sf(tmp_path, {k: v for k, v in RAW.items() if k != "head.modulation"})
    cases = [
        (["--format", "sora"], "unknown --format 'sora'"),
        (["--format", "self-forcing", "--input", str(bad), "--base", str(base)], "head.modulation"),
        (["--format", "causvid", "--input", str(path), "--base", str(base), "--size", "big"], "WIDTHxHEIGHT"),
    ]
    for extra, needle in cases:
        argv = ["convert", "--input", str(path), "-o", str(tmp_path / "never")] + extra
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "never").exists()
