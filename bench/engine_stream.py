"""KV-cached streaming vs recomputing the whole context every chunk, side by side.

For a small config, measures frames/s of each at given stream positions (default 10 s
and 60 s): the cached stream is timed on the chunks at that position; the recompute
baseline re-runs every denoising step over all earlier clean frames (block-causal mask)
for a chunk at the same position. Also time to first frame and peak RSS.

    python bench/engine_stream.py                 # prints a table
    python bench/engine_stream.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from engine.config import AttentionConfig, LatentConfig, ModelConfig, TextEncoderConfig, TransformerConfig
from engine.model import StreamModel, build_decoder, build_text_encoder, build_transformer
from engine.reference import recompute_chunk


def small_config(layers: int, heads: int, size: int) -> ModelConfig:
    return ModelConfig(
        name="bench-small",
        transformer=TransformerConfig(num_attention_heads=heads, attention_head_dim=32, ffn_dim=heads * 32 * 3,
                                      num_layers=layers, text_dim=32),
        attention=AttentionConfig(policy="sink_window", chunk_frames=3, sink_frames=3, window_frames=9),
        latent=LatentConfig(height=size, width=size, fps=16.0),
        text_encoder=TextEncoderConfig(kind="hash", dim=32, max_tokens=16),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="transformer layers")
    ap.add_argument("--heads", type=int, default=4, help="attention heads (head dim 32)")
    ap.add_argument("--size", type=int, default=64, help="frame side in pixels")
    ap.add_argument("--at", type=float, nargs="+", default=[10.0, 60.0], help="stream positions (seconds)")
    ap.add_argument("--chunks", type=int, default=3, help="chunks timed at each position")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = small_config(args.layers, args.heads, args.size)
    model = StreamModel(cfg, build_transformer(cfg), build_text_encoder(cfg, None, "cpu"),
                        build_decoder(cfg, None, "cpu"))
    prompt = "a red ball bouncing on a blue background"
    per_chunk = cfg.frames_per_chunk

    t0 = time.perf_counter()
    model.open_session("warm-up prompt", seed=0).next_chunk()
    ttff_cold = time.perf_counter() - t0  # first forward of the process: kernel set-up included
    t0 = time.perf_counter()
    session = model.open_session(prompt, seed=0)
    first = session.next_chunk()
    ttff = time.perf_counter() - t0  # what a server that warmed up at start shows a new stream
    latents = [first.latents]

    rows = []
    for seconds in sorted(args.at):
        target_chunk = int(seconds * cfg.latent.fps / per_chunk)
        while session.chunk_index < target_chunk:  # stream up to the position
            latents.append(session.next_chunk().latents)
        t0 = time.perf_counter()
        for _ in range(args.chunks):
            latents.append(session.next_chunk().latents)
        cached_fps = args.chunks * per_chunk / (time.perf_counter() - t0)

        history = torch.cat(latents[:target_chunk], dim=2)
        generator = torch.Generator().manual_seed(1)
        context = model.context_for(prompt)
        t0 = time.perf_counter()
        for i in range(args.chunks):
            recompute_chunk(model, history, context, target_chunk + i, generator)
        recompute_fps = args.chunks * per_chunk / (time.perf_counter() - t0)
        rows.append({"stream_seconds": seconds, "context_latent_frames": history.shape[2],
                     "cached_fps": cached_fps, "recompute_fps": recompute_fps,
                     "ratio": cached_fps / recompute_fps})

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.transformer.parameters())
    print(f"config: {args.layers} layers, {args.heads}x32 heads, {args.size}x{args.size} px, chunk 3 latent frames "
          f"({per_chunk} video frames), sink 3 + window 9, 4 steps + refresh; {params / 1e6:.2f} M params; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'stream s':>9} {'ctx frames':>10} {'cached fps':>11} {'recompute fps':>14} {'ratio':>7}")
    for r in rows:
        print(f"{r['stream_seconds']:9.0f} {r['context_latent_frames']:10d} {r['cached_fps']:11.1f} "
              f"{r['recompute_fps']:14.2f} {r['ratio']:7.1f}x")
    print(f"time to first frame: {ttff * 1000:.0f} ms (warm process, new prompt), {ttff_cold * 1000:.0f} ms cold "
          f"(first forward of the process); peak RSS: {peak_rss_mb:.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ttff_s": ttff, "ttff_cold_s": ttff_cold, "peak_rss_mb": peak_rss_mb}, f, indent=2)


if __name__ == "__main__":
    main()
