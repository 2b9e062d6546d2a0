"""Is the autoencoder's latent what keeps the teacher from drawing shapes? A control.

Every Shapes teacher so far draws objects of the right colour as blobs on the token grid
and never their shape. This trains the same transformer (the `shapes` preset's 6 layers
of 3 x 64 heads, MiniLM context, flow matching, caption dropout, EMA, the frames-only
schedule of runs/i-frames) on single frames in **pixel space** instead of the
autoencoder's latents: 64x64 RGB frames (the world's 128x128 frames averaged 2x2), patches
of 8x8 pixels, so that a token covers the same 16x16 pixels of the 128x128 frame as a
token of the latent teacher, and the model's cost per step is about the same. Only the
representation the tokens read and write differs: raw pixels against the autoencoder's
16-channel code.

It then samples the standard prompts (50 guided steps), scales the frames back to 128x128
and scores them with the evaluator, beside the same scenes' ground truth through the same
2x down- and up-scaling (the ceiling of a 64x64 model):

    python bench/teacher_pixel_space.py --run-dir runs/p-frames --steps 1500 --threads 2

If the pixel model draws shapes where the latent one does not, the latent code is the
obstacle; if it does not either, the transformer or its training budget is. `--patch 4`
gives tokens of 8 px of the 128x128 frame instead (4x the tokens a frame). `--prediction
sample` has the network output the clean frame instead of the flow (JiT's x-prediction). `--object-scale
1.6` draws every object 1.6x as wide (vocab.SIZES scaled for the pool, the scenes scored and
the evaluator's size judgement alike), so an object spans 2-4 tokens instead of 1.3-2.4:
the same model and compute, with objects larger relative to its tokens.
Resumes from --run-dir (checkpoints every 250 steps); a run dir keeps its --patch,
--prediction, --object-scale, --scenes and --seed (settings.json) and refuses others.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = 64  # pixels a side the model works at (the world's 128 averaged 2x2)
PATCH = 8  # pixels a side a token covers at 64x64: 16x16 of the 128x128 frame


def pixel_config(patch: int = PATCH, prediction: str = "flow"):
    """The `shapes` preset's model, reading and writing 64x64x3 frames in patch x patch patches
    (predicting the flow, as the preset does, or the clean frame)."""
    from distill.teacher import SHAPES_MODEL

    return SHAPES_MODEL.model_copy(update={
        "name": "shapes-pixel-control",
        "prediction": prediction,
        "transformer": SHAPES_MODEL.transformer.model_copy(
            update={"in_channels": 3, "out_channels": 3, "patch_size": (1, patch, patch)}),
        "latent": SHAPES_MODEL.latent.model_copy(update={"channels": 3, "spatial_compression": 128 // SIZE}),
    }, deep=True)


def scale_objects(factor: float) -> None:
    """Every object `factor` times as wide, for this process: vocab.SIZES scaled in place, as
    the renderer, the standard scenes and the evaluator's size judgement all read it."""
    from engine.shapes import vocab

    for name in vocab.SIZES:
        vocab.SIZES[name] *= factor


def down(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, 128, 128, 3] -> float [N, 3, 64, 64] in [-1, 1], 2x2 means."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.avg_pool2d(x, 128 // SIZE)


def up(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, 64, 64] in [-1, 1] -> uint8 [N, 128, 128, 3], bilinear."""
    x = F.interpolate(x, scale_factor=128 // SIZE, mode="bilinear", align_corners=False)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def build_pool(run_dir: Path, scenes: int, seed: int, object_scale: float = 1.0) -> tuple[torch.Tensor, list[list[str]]]:
    """6 frames (every 4th of a 24-frame window) of each of `scenes` random scenes' streams,
    like the frames-only latent teacher's pool of 6-latent-frame clips; cached."""
    from distill.data.shapes import ShapesConfig, ShapesWorld

    path = run_dir / f"pixel-pool-{seed}-{scenes}{'' if object_scale == 1 else f'-x{object_scale:g}'}.npz"
    if path.exists():
        data = np.load(path, allow_pickle=False)
        return torch.from_numpy(data["frames"]), json.loads(str(data["captions"]))
    world = ShapesWorld(ShapesConfig(height=128, width=128, fps=16))
    rng = np.random.default_rng([seed, 7])
    frames, captions = [], []
    for _ in tqdm(range(scenes), desc="pool", unit="scene"):
        clip = world.sample(int(rng.integers(0, 2**62)), 24, int(rng.integers(0, 481)))
        frames.append(down(clip.frames[::4]).to(torch.float16))
        captions.append(list(clip.captions))
    pool = torch.stack(frames)  # [S, 6, 3, 64, 64]
    np.savez(path, frames=pool.numpy(), captions=json.dumps(captions))
    return pool, captions


def train(args, config, run_dir: Path):
    from distill.common import EMA, CaptionCache, Checkpointer, MetricsLog, step_generator
    from distill.losses import add_noise, flow_matching_loss, sample_sigmas
    from distill.teacher import TeacherRun, build_text_encoder_for, lr_at
    from engine.transformer import build_transformer

    schedule = TeacherRun(model=config, steps=args.steps, lr=args.lr, warmup=args.warmup, decay_from=args.decay_from)
    pool, pool_captions = build_pool(run_dir, args.scenes, args.seed, args.object_scale)
    flat = pool.flatten(0, 1).float()  # [S*6, 3, 64, 64]
    mean, std = flat.mean((0, 2, 3)), flat.std((0, 2, 3))  # per channel, as the autoencoder normalises
    model = build_transformer(config, seed=args.seed).train()
    ema = EMA(model, args.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    captions = CaptionCache(build_text_encoder_for(config))
    attention = model.full_attention(1)
    ckpt, metrics = Checkpointer(run_dir), MetricsLog(run_dir)
    step = 0
    if (latest := ckpt.latest()) is not None:
        step, _ = ckpt.load(latest, {"model": model, "ema": ema.shadow}, {"opt": opt})
        print(f"resumed from {latest} at step {step}", file=sys.stderr)
    bar = tqdm(total=args.steps, initial=step, desc="pixel teacher", unit="step")
    losses = []
    while step < args.steps:
        gen = step_generator(args.seed, step)
        rng = np.random.default_rng([args.seed, 2, step])
        scene = rng.integers(0, len(pool), size=args.batch)
        frame = rng.integers(0, pool.shape[1], size=args.batch)
        x0 = ((pool[scene, frame].float() - mean[:, None, None]) / std[:, None, None])[:, :, None]  # [B, 3, 1, h, w]
        texts = [pool_captions[s][int(rng.integers(len(pool_captions[s])))] for s in scene]
        feats = captions(texts)
        drop = torch.rand(len(texts), generator=gen) < 0.1
        feats = torch.where(drop[:, None, None], torch.zeros_like(feats), feats)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = sample_sigmas(len(texts), config.sampler.shift, gen)
        v = model.denoise(add_noise(x0, noise, sigma), sigma * 1000, model.embed_text(feats), attention)
        loss = flow_matching_loss(v, x0, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(schedule, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        step += 1
        losses.append(loss.item())
        if step % 25 == 0:
            metrics.log(step, {"loss/flow": sum(losses) / len(losses), "lr": lr_at(schedule, step)})
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            losses = []
        bar.update(1)
        if step % 250 == 0 or step == args.steps:
            ckpt.save(step, {"model": model, "ema": ema.shadow}, {"opt": opt})
    bar.close()
    metrics.close()
    return ema.shadow.eval(), mean, std


@torch.no_grad()
def sample(model, config, text_encoder, prompt: str, seed: int, mean, std, guidance: float, steps: int = 50):
    """The teacher's own 50-step guided sampler on one 64x64 frame -> [1, 3, 64, 64] in [-1, 1]."""
    from distill.teacher import sample_teacher

    x = sample_teacher(model, config, text_encoder.encode([prompt]), 1, steps=steps, guidance=guidance,
                       generator=torch.Generator().manual_seed(seed))
    return x[:, :, 0] * std[:, None, None] + mean[:, None, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="checkpoints, pool, metrics, reports (resumes from it)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--decay-from", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--batch", type=int, default=96, help="frames a step (runs/i-frames: 96)")
    ap.add_argument("--scenes", type=int, default=6144, help="scenes in the pool, 6 frames each")
    ap.add_argument("--ema-decay", type=float, default=0.9995)
    ap.add_argument("--guidance", type=float, default=8.0)
    ap.add_argument("--seconds", type=float, default=0.25, help="clip length scored (a still frame repeated)")
    ap.add_argument("--patch", type=int, default=PATCH, choices=(2, 4, 8),
                    help="pixels a side per token at 64x64 (8: 16 px of the 128x128 frame, as the latent "
                         "teacher's tokens; 4: 8 px, as its patch-1 variant's, 4x the tokens)")
    ap.add_argument("--prediction", choices=("flow", "sample"), default="flow",
                    help="what the network outputs: the flow (as the shapes preset) or the clean frame x0 "
                         "(JiT), turned into a flow inside denoise either way")
    ap.add_argument("--object-scale", type=float, default=1.0,
                    help="draw objects this much wider than the world's sizes (pool, scenes scored, evaluator)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 < args.warmup <= args.decay_from <= args.steps:
        ap.error("need 0 < --warmup <= --decay-from <= --steps")
    if not 0.5 <= args.object_scale <= 2.0:
        ap.error("--object-scale must be within [0.5, 2]")
    scale_objects(args.object_scale)

    from distill.data.shapes import ShapesWorld
    from distill.eval import PROMPT_SETS, evaluate_generator, standard_scenes
    from distill.teacher import build_text_encoder_for

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {"patch": args.patch, "prediction": args.prediction, "object_scale": args.object_scale,
                "scenes": args.scenes, "seed": args.seed}
    recorded = run_dir / "settings.json"
    if recorded.exists() and (before := json.loads(recorded.read_text())) != settings:
        changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v)
        ap.error(f"{run_dir} was trained with other settings ({changed}): resume it with its own, or use another --run-dir")
    recorded.write_text(json.dumps(settings, indent=2))
    config = pixel_config(args.patch, args.prediction)
    start = time.time()
    model, mean, std = train(args, config, run_dir)
    train_s = time.time() - start
    text_encoder = build_text_encoder_for(config)
    prompts = PROMPT_SETS["standard"]()
    frames = max(1, round(args.seconds * 16))
    world, scenes = ShapesWorld(), dict(zip(prompts, standard_scenes()))

    def generated(prompt, seconds, seed):
        return np.repeat(up(sample(model, config, text_encoder, prompt, seed, mean, std, args.guidance)), frames, 0)

    def ground_truth(prompt, seconds, seed):
        return up(down(world.render(scenes[prompt], frames, start_frame=seed * 7)))

    rows = {}
    for name, generate in (("ground truth at 64x64", ground_truth), ("pixel teacher", generated)):
        report = evaluate_generator(generate, prompts, 1, args.seconds, fps=16, out_dir=run_dir / name.replace(" ", "_"))
        rows[name] = {"summary": report["summary"], "intervals": report["intervals"]}
    print(f"\nstandard set: {len(prompts)} prompts x 1 seed, {args.seconds:g} s; pixel teacher trained "
          f"{args.steps} steps ({train_s / 60:.0f} min this run); mean [95 % bootstrap interval]")
    for name, row in rows.items():
        print(f"  {name}")
        for metric in ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "count_accuracy"):
            value, interval = row["summary"].get(metric), row["intervals"].get(metric)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                span = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
                print(f"    {metric:20s} {value:.3f} {span}")
    (run_dir / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
