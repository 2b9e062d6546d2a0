"""float32 vs bfloat16 on this CPU: the figures behind engine.model.model_dtype.

    python bench/cpu_precision.py                 # all cases, one thread, 7 interleaved reps
    python bench/cpu_precision.py --big           # plus one Wan2.1-1.3B block at 832x480 (~30 s a rep)
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python bench/cpu_precision.py --cases wan
                                                  # as a CPU without bfloat16 instructions runs it

Cases, each timed fp32 then bf16 then bf16 then fp32 ... (interleaved, medians):
  default-stream  the shipped default model streaming (steady state, decoding included):
                  float32; bfloat16 transformer; bfloat16 transformer and decoder
  wan             a Wan2.1-T2V-1.3B-width causal step (2 blocks, 160x96, window full)
  taehv           TAEHV at taew2_1's widths decoding one 160x96 chunk (3 latent frames)
Random weights except the default model's; speeds do not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.components import build_decoder, build_text_encoder  # noqa: E402
from engine.config import AttentionConfig, LatentConfig, ModelConfig, TextEncoderConfig, TransformerConfig  # noqa: E402
from engine.model import (DEFAULT_MODEL_DIR, StreamModel, cpu_has_bf16, load_transformer_weights,  # noqa: E402
                          resolve_model)
from engine.taehv import TAEHVDecoder  # noqa: E402
from engine.cache import KVCache, policy_class  # noqa: E402
from engine.step import Stepper  # noqa: E402
from engine.transformer import build_transformer  # noqa: E402

PROMPT = "a red ball bouncing on a blue background"
FP32, BF16 = torch.float32, torch.bfloat16


def interleaved(variants: dict, reps: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, in alternating order so a drifting load hits all alike."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(reps):
        for name in (list(variants) if rep % 2 == 0 else list(reversed(variants))):
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
    return times


def default_stream(reps: int, chunks: int = 6) -> dict:
    config, directory = resolve_model(str(DEFAULT_MODEL_DIR))
    text = build_text_encoder(config, directory, "cpu")

    def model(transformer_dtype, decoder_dtype) -> StreamModel:
        transformer = build_transformer(config, "cpu", transformer_dtype)
        load_transformer_weights(transformer, directory / "transformer.safetensors")
        return StreamModel(config, transformer, text, build_decoder(config, directory, "cpu").to(decoder_dtype))

    models = {"float32": model(FP32, FP32), "bf16 transformer": model(BF16, FP32),
              "bf16 transformer+decoder": model(BF16, BF16)}
    att = config.attention
    warm = (att.sink_frames + att.window_frames + att.chunk_frames - 1) // att.chunk_frames

    def steady_seconds(m: StreamModel) -> float:
        """A fresh stream filled to its window, then `chunks` chunks timed."""
        session = m.open_session(PROMPT, seed=0)
        for _ in range(warm):
            session.next_chunk()
        started = time.perf_counter()
        for _ in range(chunks):
            session.next_chunk()
        return time.perf_counter() - started

    def frames(m: StreamModel) -> np.ndarray:
        session = m.open_session(PROMPT, seed=1)
        return np.concatenate([session.next_chunk().frames for _ in range(4)]).astype(np.float64)

    fps: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        m.open_session("warm-up", seed=0).next_chunk()
    for rep in range(reps):
        for name in (list(models) if rep % 2 == 0 else list(reversed(models))):
            fps[name].append(chunks * config.frames_per_chunk / steady_seconds(models[name]))
    reference = frames(models["float32"])
    psnr = {name: float(10 * np.log10(255**2 / max(((reference - frames(m)) ** 2).mean(), 1e-12)))
            for name, m in models.items() if name != "float32"}
    median = {name: statistics.median(v) for name, v in fps.items()}
    return {"median_fps": median, "x_float32": {n: v / median["float32"] for n, v in median.items()},
            "fps": fps, "psnr_db_vs_float32": psnr}


def wan_step(height: int, width: int, layers: int, dtype: torch.dtype):
    config = ModelConfig(
        name="wan-width", dtype="bfloat16",
        transformer=TransformerConfig(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=layers,
                                      text_dim=4096),
        attention=AttentionConfig(policy="sink_window", chunk_frames=3, sink_frames=3, window_frames=9),
        latent=LatentConfig(height=height, width=width), text_encoder=TextEncoderConfig(kind="hash", dim=4096,
                                                                                        max_tokens=512))
    transformer = build_transformer(config, "cpu", dtype)
    cache = KVCache.for_model(config, transformer.rope_tables, 1, "cpu", dtype)
    step = Stepper(transformer, policy_class(config.attention))
    att, lat = config.attention, config.latent
    latents = torch.randn(1, 16, att.chunk_frames, lat.latent_height, lat.latent_width, dtype=dtype)
    context = torch.randn(1, 512, 1536, dtype=dtype)
    timestep = torch.tensor([500.0])
    with torch.no_grad():
        for _ in range((att.sink_frames + att.window_frames) // att.chunk_frames):  # fill the window
            step(cache, [0], latents, timestep, context, [True])

    def run():
        with torch.no_grad():
            step(cache, [0], latents, timestep, context, [False])
    return run


def taehv_decode(dtype: torch.dtype):
    decoder = TAEHVDecoder().to(dtype)
    latents = torch.randn(1, 16, 3, 12, 20)
    return lambda: decoder.decode_chunk(latents, None)


def ratio(times: dict[str, list[float]]) -> dict:
    median = {name: statistics.median(v) for name, v in times.items()}
    return {"median_s": median, "bf16_speedup": median["float32"] / median["bfloat16"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="default-stream,wan,taehv", help="which cases, comma-separated")
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    ap.add_argument("--big", action="store_true", help="also one full-size block at 832x480 (3 reps)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    result: dict = {"threads": torch.get_num_threads(), "reps": args.reps, "cpu_has_bf16": cpu_has_bf16(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    if "default-stream" in cases:
        result["default-stream"] = default_stream(args.reps)
    if "wan" in cases:
        result["wan 2 blocks 160x96"] = ratio(interleaved(
            {"float32": wan_step(96, 160, 2, FP32), "bfloat16": wan_step(96, 160, 2, BF16)}, args.reps))
        if args.big:
            result["wan 1 block 832x480"] = ratio(interleaved(
                {"float32": wan_step(480, 832, 1, FP32), "bfloat16": wan_step(480, 832, 1, BF16)}, 3))
    if "taehv" in cases:
        result["taehv 160x96"] = ratio(interleaved({"float32": taehv_decode(FP32), "bfloat16": taehv_decode(BF16)},
                                                   args.reps))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
