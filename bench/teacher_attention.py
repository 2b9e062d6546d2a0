"""How sharply does a model attend? Per layer and head, on real Shapes clips at fixed noise:
the effective number of tokens a query attends to (exp of the attention entropy; a
uniform head over the clip's tokens scores all of them), the share of its attention on
its own latent frame (uniform: 1 / frames), and, for the cross-attention, the effective
number of prompt tokens and the share of attention on the prompt's words rather than on
the zero padding after them (every padding position has the same key: together they act
as one "nothing" token with the weight of their count). Also the gains of the q/k RMS
norms, which bound how sharp a head can be (max logit ~ gain_q * gain_k * sqrt(head_dim)).

A head that spreads over most of the clip averages it: it can carry the clip's colours,
not where an object is or which way it moves.

    python bench/teacher_attention.py --model runs/v2-teacher-14k/model
    python bench/teacher_attention.py --model A --model B --levels 0.5 0.9 --json runs/attention.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine.shapes.captions import scene_caption  # noqa: E402
from distill.losses import add_noise  # noqa: E402
from engine.attention import apply_rope  # noqa: E402
from teacher_conditioning import single_object_clips  # noqa: E402


def effective_tokens(p: torch.Tensor) -> torch.Tensor:
    """p [..., keys] attention probabilities -> exp(entropy) [...]."""
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum(-1))


def measure(model_dir: str, count: int, levels: list[float], seed: int) -> dict:
    """Attention statistics of the model at `model_dir` (see `measure_model`)."""
    from distill.teacher import load_autoencoder
    from engine import load_model

    return measure_model(load_model(model_dir, device="cpu", backend="eager"), load_autoencoder(model_dir), count,
                         levels, seed)


@torch.no_grad()
def measure_model(model, autoencoder, count: int, levels: list[float], seed: int) -> dict:
    """Attention statistics of a loaded model on `count` single-object clips of its training
    length, per noise level."""
    tr = model.transformer.eval()
    latent = model.config.latent
    latent_frames = int(model.config.provenance.get("run", {}).get("latent_frames", 6))
    clips = single_object_clips(count, seed, latent_frames * latent.temporal_compression, latent.height,
                                int(latent.fps))
    video = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    x0 = autoencoder.encode(video)
    frames = x0.shape[2]
    tokens_per_frame = tr.rope_tables.tokens_per_frame
    feats = model.text_encoder.encode([scene_caption(c.scene) for c in clips])
    words = (feats.abs().sum(-1) > 0).float()  # [B, L]: 1 on the prompt's tokens, 0 on padding
    context = tr.embed_text(feats)
    attention = tr.full_attention(frames)
    frame_of = torch.arange(frames * tokens_per_frame) // tokens_per_frame
    same_frame = (frame_of[:, None] == frame_of[None, :]).float()
    found: dict = {}

    def self_probs(attn, hidden):
        q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden)).unflatten(2, (attn.heads, -1))
        q, k = apply_rope(q, attention.cos, attention.sin), apply_rope(k, attention.cos, attention.sin)
        return (torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5).softmax(-1)

    def cross_probs(attn, hidden, ctx):
        q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(ctx)).unflatten(2, (attn.heads, -1))
        logits = torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5
        if tr.mask_text_padding:  # as engine.transformer.CrossAttnProcessor: the words only
            logits = logits.masked_fill(~words.bool()[:, None, None, :], float("-inf"))
        return logits.softmax(-1)

    hooks = []
    for i, block in enumerate(tr.blocks):
        def on_self(module, args, kwargs, i=i):
            p = self_probs(module, args[0] if args else kwargs["hidden_states"])
            found[("self", i)] = (effective_tokens(p).mean((0, 2)), (p * same_frame).sum(-1).mean((0, 2)))

        def on_cross(module, args, kwargs, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            ctx = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
            p = cross_probs(module, hidden, ctx)  # [B, H, N, L]
            found[("cross", i)] = (effective_tokens(p).mean((0, 2)), (p * words[:, None, None]).sum(-1).mean((0, 2)))

        hooks += [block.attn1.register_forward_pre_hook(on_self, with_kwargs=True),
                  block.attn2.register_forward_pre_hook(on_cross, with_kwargs=True)]
    out: dict = {"tokens": frames * tokens_per_frame, "frames": frames, "prompt_tokens": context.shape[1],
                 "words": float(words.sum(-1).mean()),
                 "gains": [{"self": [float(b.attn1.norm_q.weight.abs().mean()), float(b.attn1.norm_k.weight.abs().mean())],
                            "cross": [float(b.attn2.norm_q.weight.abs().mean()), float(b.attn2.norm_k.weight.abs().mean())]}
                           for b in tr.blocks], "levels": {}}
    try:
        for level in levels:
            found.clear()
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
            sigma = torch.full((len(clips),), level)
            tr.denoise(add_noise(x0, noise, sigma), sigma * 1000, context, attention)
            out["levels"][str(level)] = [
                {"self_tokens": found[("self", i)][0].tolist(), "own_frame": found[("self", i)][1].tolist(),
                 "cross_tokens": found[("cross", i)][0].tolist(), "on_words": found[("cross", i)][1].tolist()}
                for i in range(len(tr.blocks))]
    finally:
        for h in hooks:
            h.remove()
    return out


def table(name: str, result: dict) -> str:
    lines = [f"\n{name}: {result['tokens']} tokens over {result['frames']} latent frames "
             f"(uniform own-frame share {1 / result['frames']:.2f}), {result['prompt_tokens']} prompt tokens of "
             f"which {result['words']:.1f} words on average",
             "| s | layer | q/k gain (self) | tokens attended, per head | own-frame share | q/k gain (cross) "
             "| prompt tokens attended | share on words |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda xs, f="{:.0f}": " / ".join(f.format(x) for x in xs)  # noqa: E731
    for level, layers in result["levels"].items():
        for i, row in enumerate(layers):
            g = result["gains"][i]
            lines.append(f"| {level} | {i} | {fmt(g['self'], '{:.2f}')} | {fmt(row['self_tokens'])} | "
                         f"{fmt(row['own_frame'], '{:.2f}')} | {fmt(g['cross'], '{:.2f}')} | "
                         f"{fmt(row['cross_tokens'], '{:.1f}')} | {fmt(row['on_words'], '{:.2f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="model dir (repeatable)")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.9])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for model_dir in args.model:
        results[model_dir] = measure(model_dir, args.clips, args.levels, args.seed)
        print(table(model_dir, results[model_dir]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
