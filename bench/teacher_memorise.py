"""Can the teacher's transformer learn N single frames from their captions, and at which lr?

A fresh transformer of a teacher's config (its text encoder and autoencoder too) is trained
from scratch with the teacher's frames-only flow loss on the first latent frames of N
one-object, plain-background scenes of a teacher run's clip pool, each with its first
caption; then 16 frames are sampled (50 conditional Euler steps at the config's shift),
decoded, and each sampled object's mask (pixels far from the frame's border colour) is
compared with the scene's own: mean IoU. `--eval train` scores 16 of the N scenes it learnt
(memorising), `--eval held` 16 scenes of the pool it never saw (generalising: with the
canonical layout, place, size and colour follow from the caption, the 3 % jitter aside).
A PNG puts the targets above the samples.

    python bench/teacher_memorise.py --model runs/k-joint/model \\
        --pool runs/k-joint/latent-pool-canonical-start0-0-4096x24 --scenes 16 --lr 2e-3
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

ONE_OBJECT = re.compile(r"^an? (small|medium|large) \w+ (circle|square|triangle|star|diamond)\b"
                        r".* on an? \w+ background$")


def object_mask(frame: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Pixels of an RGB frame [H, W, 3] farther than `threshold` from its border's median colour."""
    a = frame.astype(np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return np.linalg.norm(a - np.median(border, axis=0), axis=-1) > threshold


def main() -> None:
    from PIL import Image
    from safetensors import safe_open
    from tqdm import tqdm

    from distill.losses import add_noise, flow_matching_loss, sample_sigmas
    from distill.teacher import TeacherRun, load_autoencoder, lr_at
    from engine.components import build_text_encoder
    from engine.config import ModelConfig
    from engine.sampler import shift_sigma
    from engine.session import to_uint8_frames
    from engine.transformer import build_transformer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a teacher model dir: its config, text encoder and autoencoder")
    ap.add_argument("--pool", required=True, help="a teacher run's latent pool, without .safetensors/.json")
    ap.add_argument("--scenes", type=int, default=16, help="N: one-object plain-background scenes learnt")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32, help="frames a step, drawn from the N with replacement")
    ap.add_argument("--lr", type=float, default=6e-4, help="AdamW lr (20 warm-up steps, then held)")
    ap.add_argument("--eval", choices=("train", "held"), default="train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--png", default=None, help="targets above samples")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    config = ModelConfig.load(Path(args.model) / "model.json")
    captions = json.loads(Path(args.pool + ".json").read_text())
    eligible = [i for i, c in enumerate(captions) if " and a" not in c[0] and ONE_OBJECT.match(c[0])]
    learnt = eligible[:args.scenes]
    held = eligible[args.scenes:args.scenes + 16]
    if len(learnt) < args.scenes or (args.eval == "held" and len(held) < 16):
        raise SystemExit(f"the pool has {len(eligible)} one-object plain-background scenes: too few for "
                         f"--scenes {args.scenes} and --eval {args.eval}")
    with safe_open(args.pool + ".safetensors", "pt") as f:
        first_frames = f.get_slice("latents")[:, :, :1]  # [pool, C, 1, h, w]
    encoder = build_text_encoder(config, args.model, "cpu")
    x0, feats = first_frames[learnt], encoder.encode([captions[i][0] for i in learnt])

    torch.manual_seed(0)
    model = build_transformer(config, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    attention = model.full_attention(1)
    schedule = TeacherRun(model=config, lr=args.lr, warmup=20, steps=args.steps)  # warm-up, then held
    gen = torch.Generator().manual_seed(0)
    started, losses = time.time(), []
    for step in tqdm(range(args.steps), desc="memorise", unit="step"):
        pick = torch.randint(0, len(learnt), (args.batch,), generator=gen)
        x, text = x0[pick], feats[pick]
        noise = torch.randn(x.shape, generator=gen)
        sigma = sample_sigmas(args.batch, config.sampler.shift, gen)
        v = model.denoise(add_noise(x, noise, sigma), sigma * 1000, model.embed_text(text), attention)
        loss = flow_matching_loss(v, x, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(schedule, step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    train_s = time.time() - started

    model.eval()
    autoencoder = load_autoencoder(args.model)
    scored = learnt[:16] if args.eval == "train" else held
    target, text = first_frames[scored], encoder.encode([captions[i][0] for i in scored])
    with torch.no_grad():
        x = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
        sigmas = shift_sigma(torch.linspace(1, 0, 51), config.sampler.shift)
        cond = model.embed_text(text)
        for i in range(50):
            x = x + (sigmas[i + 1] - sigmas[i]) * model.denoise(x, sigmas[i].expand(len(x)) * 1000, cond, attention)
        targets = [to_uint8_frames(autoencoder.decode(target[j:j + 1]))[0] for j in range(len(x))]
        samples = [to_uint8_frames(autoencoder.decode(x[j:j + 1]))[0] for j in range(len(x))]
    ious = []
    for t, s in zip(targets, samples):
        mt, ms = object_mask(np.asarray(t)), object_mask(np.asarray(s))
        ious.append(float((mt & ms).sum() / max(1, (mt | ms).sum())))
    report = {"scenes": len(learnt), "eval": args.eval, "steps": args.steps, "batch": args.batch, "lr": args.lr,
              "train_s": train_s, "loss_last_50": float(np.mean(losses[-50:])), "mean_iou": float(np.mean(ious)),
              "iou": ious, "captions": [captions[i][0] for i in scored]}
    print(f"{len(learnt)} scenes, {args.steps} steps at lr {args.lr:g}, {args.eval}: "
          f"mean IoU {report['mean_iou']:.3f}, flow loss (last 50 steps) {report['loss_last_50']:.4f}, {train_s:.0f} s")
    if args.png:
        rows = [np.concatenate([np.asarray(t), np.asarray(s)], axis=0) for t, s in zip(targets, samples)]
        Image.fromarray(np.concatenate(rows, axis=1).astype(np.uint8)).save(args.png)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
