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

`--frames F` (> 1) learns and samples the scenes' first F latent frames as clips with the
teachers' clip attention instead, and also scores motion: the object's centroid path over
the decoded clip, target against sample (the distance between their last-frame centroids,
and whether the sample's displacement points the target's way: cosine > 0.7, or both under
4 px for objects that do not travel). IoU is over every decoded frame (a latent frame
decodes to 4 video frames; before clips, it was over the first of them only).

`--causal C` learns the clips as the student streams them instead: chunks of C latent frames,
each from its own noise level given the clean chunks before it (CausVid's teacher forcing,
`distill.rollout.teacher_forcing_mask`), and samples them chunk after chunk, each chunk's 50
steps given the chunks already sampled, the first from noise alone; the same model is then
sampled again given the target's first chunk (and scored, with its own PNG). `--context-noise S`
noises the given chunks in training to a level drawn from U(0, S), and in sampling to S/2 (the
noise augmentation GameNGen found keeps an autoregressive model from drifting on its own
output).

`--first-frames K` (with `--clean-first`) trains the same transformer on K single first latent
frames a step beside the clips, from noise, so that one model both draws a first frame from its
caption and continues it (image-to-video); it then samples clips that way, the first frame as
an image and the rest given it, and also given the target's first frame, to compare with a
`--clean-first` model of clips alone. This is the split the rows above pointed at: layout from
a single-frame task, motion from a continuation.

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


def centroids(masks: np.ndarray) -> np.ndarray:
    """[T, H, W] bool -> [T, 2] (y, x) mean of each frame's mask (the frame's centre where empty)."""
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append((ys.mean(), xs.mean()) if len(ys) else ((m.shape[0] - 1) / 2, (m.shape[1] - 1) / 2))
    return np.asarray(out, dtype=np.float64)


def compare_paths(target: np.ndarray, sample: np.ndarray, still_px: float = 4.0) -> dict:
    """Object masks [T, H, W] of a target clip and a sample: how far each object's centroid
    travels, how far apart they end, and whether the sample goes the target's way (cosine of
    the two displacements > 0.7 and the sample travelling >= still_px), or both stay within
    still_px of where they started."""
    pt, ps = centroids(target), centroids(sample)
    dt, ds = pt[-1] - pt[0], ps[-1] - ps[0]
    nt, ns = float(np.linalg.norm(dt)), float(np.linalg.norm(ds))
    still = nt < still_px and ns < still_px
    cosine = float(dt @ ds / max(1e-6, nt * ns))
    return {"target_px": nt, "sample_px": ns, "end_error_px": float(np.linalg.norm(pt[-1] - ps[-1])),
            "agrees": bool(still or (cosine > 0.7 and ns >= still_px))}


def main() -> None:
    from PIL import Image
    from safetensors import safe_open
    from tqdm import tqdm

    from distill.common import autocast
    from distill.eval.evaluate import evaluate_frames
    from distill.eval.judge import mean_or_none
    from distill.losses import add_noise, flow_matching_loss, sample_sigmas
    from distill.rollout import teacher_forcing_mask
    from distill.teacher import TeacherRun, load_autoencoder, lr_at
    from engine.components import build_text_encoder
    from engine.config import ModelConfig
    from engine.model import load_transformer_weights, save_model
    from engine.sampler import shift_sigma
    from engine.session import to_uint8_frames
    from engine.transformer import build_transformer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a teacher model dir: its config, text encoder and autoencoder")
    ap.add_argument("--pool", required=True, help="a teacher run's latent pool, without .safetensors/.json")
    ap.add_argument("--scenes", type=int, default=16, help="N: one-object plain-background scenes learnt")
    ap.add_argument("--world", action="store_true",
                    help="learn the first N scenes of the whole pool (two objects, gradients and all) instead "
                         "of one-object plain-background ones; scored on the same 16 unseen scenes as N = 840")
    ap.add_argument("--paraphrases", action="store_true",
                    help="each step draws one of a scene's captions, as the teacher trainer does (else its first)")
    ap.add_argument("--any-frame", action="store_true",
                    help="single frames (--frames 1) from any of a clip's 6 latent frames, as the teacher "
                         "trainer's image_batch draws them (else the first); scored on first frames")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32, help="frames a step, drawn from the N with replacement")
    ap.add_argument("--lr", type=float, default=6e-4, help="AdamW lr (20 warm-up steps, then held)")
    ap.add_argument("--eval", choices=("train", "held"), default="train")
    ap.add_argument("--frames", type=int, default=1, help="latent frames a sample (1: single frames; >1: clips)")
    ap.add_argument("--frame-noise", type=float, default=0.0,
                    help="clips: this share of a step's clips is noised to an independent level per latent "
                         "frame (Diffusion Forcing); the rest at one level, as the teachers train")
    ap.add_argument("--clean-first", action="store_true",
                    help="clips: the first latent frame is given clean in training and sampling (image-to-"
                         "video), so only where the object goes is learnt and scored")
    ap.add_argument("--first-frames", type=int, default=0, metavar="K",
                    help="--clean-first: also K single first latent frames a step, from noise; samples the "
                         "first frame as an image, then the rest given it")
    ap.add_argument("--causal", type=int, default=0, metavar="C",
                    help="clips: learn and sample them in chunks of C latent frames, each given the clean "
                         "chunks before it (teacher forcing; sampled chunk after chunk)")
    ap.add_argument("--context-noise", type=float, default=0.0, metavar="S",
                    help="--causal: the clean chunks a chunk is given are noised to a level drawn from "
                         "U(0, S) in training and seen at S/2 in sampling (GameNGen's noise augmentation)")
    ap.add_argument("--init", default=None, metavar="DIR",
                    help="start from a saved transformer (DIR/transformer.safetensors, of --model's config) "
                         "instead of from scratch; with --steps 0, only sample and score it")
    ap.add_argument("--guidance", type=float, default=1.0,
                    help="classifier-free guidance in sampling (the unconditional branch reads zero text "
                         "features, as the teacher trainer's caption dropout teaches; 1: conditional only)")
    ap.add_argument("--save", default=None, help="a dir: the trained transformer's weights and config, as engine.model.save_model writes them")
    ap.add_argument("--text-encoder", choices=("model", "shapes"), default="model",
                    help="shapes: read captions as the world's slot codes (engine/shapes/slots.py: one token "
                         "per object, one for the background) instead of --model's text encoder")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast for the training forwards")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--png", default=None, help="targets above samples")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.causal and (args.frames % args.causal or args.frame_noise or args.clean_first):
        raise SystemExit("--causal C needs --frames a multiple of C, without --frame-noise or --clean-first")
    clean_first = args.clean_first and args.frames > 1  # image-to-video: frame 0 given clean
    if args.first_frames and not clean_first:
        raise SystemExit("--first-frames needs --clean-first and --frames > 1")
    if args.context_noise and not args.causal:
        raise SystemExit("--context-noise needs --causal")
    context_at = torch.tensor(args.context_noise / 2)  # the level sampling gives the chunks so far

    config = ModelConfig.load(Path(args.model) / "model.json")
    if args.text_encoder == "shapes":  # same width, so the transformer is the same
        te = config.text_encoder.model_copy(update={"kind": "shapes", "path": None, "sha256": None, "feature_norm": "rms"})
        config = config.model_copy(update={"text_encoder": te})
    captions = json.loads(Path(args.pool + ".json").read_text())
    eligible = [i for i, c in enumerate(captions) if " and a" not in c[0] and ONE_OBJECT.match(c[0])]
    learnt = eligible[:args.scenes]
    held = eligible[args.scenes:args.scenes + 16]
    if args.world:
        held = eligible[840:856]
        learnt = [i for i in range(len(captions)) if i not in set(held)][:args.scenes]
    if args.any_frame and args.frames != 1:
        raise SystemExit("--any-frame is for single frames (--frames 1)")
    if len(learnt) < args.scenes or (args.eval == "held" and len(held) < 16):
        raise SystemExit(f"the pool has {len(eligible)} one-object plain-background scenes: too few for "
                         f"--scenes {args.scenes} and --eval {args.eval}")
    with safe_open(args.pool + ".safetensors", "pt") as f:
        first_frames = f.get_slice("latents")[:, :, :6 if args.any_frame else args.frames]  # [pool, C, F, h, w]
    encoder = build_text_encoder(config, args.model, "cpu")
    x0 = first_frames[learnt]
    per_scene = len(captions[learnt[0]]) if args.paraphrases else 1
    feats = torch.stack([encoder.encode([captions[i][k] for i in learnt]) for k in range(per_scene)], 1)
    first_frames = first_frames[:, :, :args.frames]  # scored on

    torch.manual_seed(0)
    model = build_transformer(config, seed=0).train()
    if args.init:
        load_transformer_weights(model, Path(args.init) / "transformer.safetensors")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    attention = model.full_attention(args.frames)
    frame_attention = model.full_attention(1)  # --first-frames: a first frame on its own
    if args.causal:  # [clean frames | noisy frames] at positions 0..F-1 each
        tf_mask = teacher_forcing_mask(args.frames, args.causal, config.tokens_per_frame)
        attention = model.full_attention(2 * args.frames, tf_mask, torch.arange(args.frames).repeat(2))
    schedule = TeacherRun(model=config, lr=args.lr, warmup=20, steps=args.steps)  # warm-up, then held
    gen = torch.Generator().manual_seed(0)
    started, losses = time.time(), []
    for step in tqdm(range(args.steps), desc="memorise", unit="step"):
        pick = torch.randint(0, len(learnt), (args.batch,), generator=gen)
        x, text = x0[pick], feats[pick, 0]
        if args.paraphrases:  # drawn after the scenes, so runs without keep their random stream
            text = feats[pick, torch.randint(0, per_scene, (args.batch,), generator=gen)]
        if args.any_frame:
            at = torch.randint(0, x0.shape[2], (args.batch,), generator=gen)
            x = x[torch.arange(args.batch), :, at][:, :, None]
        noise = torch.randn(x.shape, generator=gen)
        sigma = sample_sigmas(args.batch, config.sampler.shift, gen)
        if args.frame_noise > 0 and args.frames > 1:  # Diffusion Forcing: each frame its own level
            own = sample_sigmas(args.batch * args.frames, config.sampler.shift, gen).view(args.batch, args.frames)
            pick_own = torch.rand(args.batch, generator=gen) < args.frame_noise
            sigma = torch.where(pick_own[:, None], own, sigma[:, None].expand(-1, args.frames))
        if clean_first:
            sigma = (sigma[:, None].expand(-1, args.frames) if sigma.ndim == 1 else sigma).clone()
            sigma[:, 0] = 0
        if args.causal:  # each chunk its own level, given the clean chunks before it
            chunks = args.frames // args.causal
            sigma = sample_sigmas(args.batch * chunks, config.sampler.shift, gen).view(args.batch, chunks)
            sigma = sigma.repeat_interleave(args.causal, dim=1)  # [B, F]
            with autocast(model, args.autocast):
                context = torch.zeros_like(sigma)  # no draws without context noise (same random stream)
                seen = x
                if args.context_noise:
                    context = torch.rand(args.batch, 1, generator=gen).expand(-1, args.frames) * args.context_noise
                    seen = add_noise(x, torch.randn(x.shape, generator=gen), context)
                both = torch.cat([seen, add_noise(x, noise, sigma)], dim=2)
                level = torch.cat([context, sigma], dim=1) * 1000
                v = model.denoise(both, level, model.embed_text(text), attention)[:, :, args.frames:]
        else:
            with autocast(model, args.autocast):
                v = model.denoise(add_noise(x, noise, sigma), sigma * 1000, model.embed_text(text), attention)
        given = int(clean_first)  # no loss on a frame given clean
        loss = flow_matching_loss(v[:, :, given:], x[:, :, given:], noise[:, :, given:])
        if args.first_frames:  # single first frames from noise; a frame weighs as a clip's frame
            pick = torch.randint(0, len(learnt), (args.first_frames,), generator=gen)
            f0 = x0[pick, :, :1]
            f_noise = torch.randn(f0.shape, generator=gen)
            f_sigma = sample_sigmas(args.first_frames, config.sampler.shift, gen)
            with autocast(model, args.autocast):
                vf = model.denoise(add_noise(f0, f_noise, f_sigma), f_sigma * 1000, model.embed_text(feats[pick, 0]),
                                   frame_attention)
            clip_frames = args.batch * (args.frames - given)
            loss = (loss * clip_frames + flow_matching_loss(vf, f0, f_noise) * args.first_frames) / (
                clip_frames + args.first_frames)
        for group in opt.param_groups:
            group["lr"] = lr_at(schedule, step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    train_s = time.time() - started

    model.eval()
    if args.save:
        save_model(args.save, config, model)
    autoencoder = load_autoencoder(args.model)
    scored = learnt[:16] if args.eval == "train" else held
    target, text = first_frames[scored], encoder.encode([captions[i][0] for i in scored])
    sigmas = shift_sigma(torch.linspace(1, 0, 51), config.sampler.shift)
    with torch.no_grad():
        cond = model.embed_text(text)
        uncond = model.embed_text(torch.zeros_like(text))
        targets = [to_uint8_frames(autoencoder.decode(target[j:j + 1])) for j in range(len(target))]  # [T, H, W, 3]

    def velocity(x: torch.Tensor, level: torch.Tensor, attention) -> torch.Tensor:
        """The sampler's flow at `level` (x1000), guided when --guidance is not 1."""
        if args.guidance == 1.0:
            return model.denoise(x, level, cond, attention)
        both = model.denoise(torch.cat([x, x]), torch.cat([level, level]), torch.cat([cond, uncond]), attention)
        v_cond, v_uncond = both.chunk(2)
        return v_uncond + args.guidance * (v_cond - v_uncond)

    def sample_joint(first: torch.Tensor | None = None) -> torch.Tensor:
        """Every frame from noise at once, or, given a first latent frame [B, C, 1, h, w]
        (--clean-first), the rest given it."""
        x = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
        for i in range(50):
            level = sigmas[i].expand(len(x))
            if first is not None:
                x[:, :, :1] = first
                level = torch.cat([torch.zeros(len(x), 1), level[:, None].expand(-1, args.frames - 1)], dim=1)
            x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x, level * 1000, attention)
        if first is not None:
            x[:, :, :1] = first
        return x

    def sample_first_frame() -> torch.Tensor:
        """--first-frames: a first latent frame from noise, as an image."""
        x = torch.randn(target[:, :, :1].shape, generator=torch.Generator().manual_seed(2))
        for i in range(50):
            x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x, sigmas[i].expand(len(x)) * 1000, frame_attention)
        return x

    def sample_causal(given_chunks: int) -> torch.Tensor:
        """Chunk after chunk, each from noise given the chunks before it (the first
        `given_chunks` are the target's), those seen at the context noise level."""
        gen = torch.Generator().manual_seed(1)
        x, context_noise = torch.randn(target.shape, generator=gen), torch.randn(target.shape, generator=gen)
        x[:, :, :given_chunks * args.causal] = target[:, :, :given_chunks * args.causal]
        for c in range(given_chunks, args.frames // args.causal):
            now = slice(c * args.causal, (c + 1) * args.causal)
            past = torch.zeros_like(x)  # the chunks so far; the rest is masked from chunk `now`
            past[:, :, :now.start] = add_noise(x[:, :, :now.start], context_noise[:, :, :now.start], context_at)
            level = torch.zeros(len(x), 2 * args.frames)  # only chunk `now` is read from the noisy half
            level[:, :now.start] = context_at
            for i in range(50):
                level[:, args.frames + now.start:args.frames + now.stop] = sigmas[i]
                v = velocity(torch.cat([past, x], dim=2), level * 1000, attention)[:, :, args.frames:]
                x[:, :, now] = x[:, :, now] + (sigmas[i + 1] - sigmas[i]) * v[:, :, now]
        return x

    def judge(x: torch.Tensor, label: str) -> tuple[dict, list[np.ndarray]]:
        """Decode, then IoU, centroid paths and the project's evaluator (on the targets too:
        the ceiling) against each scene's caption; prints them."""
        with torch.no_grad():
            samples = [to_uint8_frames(autoencoder.decode(x[j:j + 1])) for j in range(len(x))]
        ious, moves = [], []
        for t, s in zip(targets, samples):
            mt, ms = np.stack([object_mask(f) for f in t]), np.stack([object_mask(f) for f in s])
            ious.append(float((mt & ms).sum() / max(1, (mt | ms).sum())))
            if args.frames > 1:
                moves.append(compare_paths(mt, ms))
        keys = ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "count_accuracy")
        judged = {who: [evaluate_frames(np.ascontiguousarray(v), captions[i][0], config.latent.fps)
                        for v, i in zip(videos, scored)] for who, videos in (("sample", samples), ("target", targets))}
        evaluator = {who: {k: mean_or_none([r[k] for r in rs if r.get(k) is not None]) for k in keys}
                     for who, rs in judged.items()}
        part = {"evaluator": evaluator, "mean_iou": float(np.mean(ious)), "iou": ious}
        print(f"{label}: mean IoU {part['mean_iou']:.3f}")
        for who, scores in evaluator.items():
            print(f"  evaluator, {who}s: " + ", ".join(f"{k.split('_')[0]} {v:.3f}" for k, v in scores.items()
                                                      if v is not None))
        if moves:
            part["motion"] = moves
            part["motion_agrees"] = float(np.mean([m["agrees"] for m in moves]))
            part["end_error_px"] = float(np.mean([m["end_error_px"] for m in moves]))
            print(f"  motion: the sample travels the target's way in {part['motion_agrees']:.3f} of clips; "
                  f"last-frame centroid error {part['end_error_px']:.1f} px "
                  f"(targets travel {np.mean([m['target_px'] for m in moves]):.1f} px, "
                  f"samples {np.mean([m['sample_px'] for m in moves]):.1f} px)")
        return part, samples

    def grid(samples: list[np.ndarray], path: str) -> None:
        """One column a scene: target above sample, at the first decoded frame (clips: and
        the middle and last)."""
        keep = sorted({0, len(targets[0]) // 2, len(targets[0]) - 1}) if args.frames > 1 else [0]
        rows = [np.concatenate([np.concatenate([t[k], s[k]], axis=0) for k in keep], axis=0)
                for t, s in zip(targets, samples)]
        Image.fromarray(np.concatenate(rows, axis=1).astype(np.uint8)).save(path)

    last = f"{np.mean(losses[-50:]):.4f}" if losses else "-"
    print(f"{len(learnt)} scenes, {args.steps} steps at lr {args.lr:g}, {args.eval}: "
          f"flow loss (last 50 steps) {last}, {train_s:.0f} s")
    with torch.no_grad():
        if args.causal:
            x, label = sample_causal(0), "sampled chunk after chunk, from noise"
        elif args.first_frames:
            x, label = sample_joint(sample_first_frame()), "sampled: the first frame as an image, then the rest given it"
        else:
            x, label = sample_joint(target[:, :, :1] if clean_first else None), "sampled"
    report, samples = judge(x, label)
    report.update({"scenes": len(learnt), "eval": args.eval, "steps": args.steps, "batch": args.batch,
                   "lr": args.lr, "init": args.init, "guidance": args.guidance, "frame_noise": args.frame_noise, "clean_first": args.clean_first,
                   "first_frames": args.first_frames, "world": args.world, "paraphrases": args.paraphrases,
                   "text_encoder": args.text_encoder,
                   "any_frame": args.any_frame,
                   "causal": args.causal, "context_noise": args.context_noise, "train_s": train_s,
                   "loss_last_50": float(np.mean(losses[-50:])) if losses else None, "captions": [captions[i][0] for i in scored],
                   "frames": args.frames})
    if args.png:
        grid(samples, args.png)
    if args.causal:  # the same model given the target's first chunk: is a good start enough?
        with torch.no_grad():
            x = sample_causal(1)
        report["given_first_chunk"], samples = judge(x, "sampled chunk after chunk, the first chunk given")
        if args.png:
            grid(samples, str(Path(args.png).with_suffix("")) + "-given.png")
    if args.first_frames:  # the same model given the target's first frame: the continuation alone
        with torch.no_grad():
            x = sample_joint(target[:, :, :1])
        report["given_first_frame"], samples = judge(x, "sampled given the target's first frame")
        if args.png:
            grid(samples, str(Path(args.png).with_suffix("")) + "-given.png")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
