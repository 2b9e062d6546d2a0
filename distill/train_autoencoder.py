"""Train the default model's autoencoder (engine/autoencoder.py) on the Shapes world, or on
a folder of your own videos.

    framecast distill autoencoder --preset shapes --run-dir runs/ae-shapes --threads 1
    framecast distill autoencoder --preset shapes --data my-videos/ --run-dir runs/ae-videos
    framecast distill autoencoder --preset tiny --run-dir /tmp/ae --dry-run

Re-running the same command resumes from the run dir's last checkpoint. The EMA weights,
with the latent statistics they were trained with, end up in <run-dir>/autoencoder/
(autoencoder.safetensors + autoencoder.json), the files a model directory ships.

Loss: L1 on pixels plus L1 on horizontal and vertical pixel differences (the edges of
the shapes carry most of the error that PSNR sees). The decoder is trained on latents
with Gaussian noise added, scaled by each channel's (detached) batch std, so it
tolerates a generator's imperfect latents and the encoder cannot outgrow the noise by
scaling its output. The per-channel latent statistics are measured once at the end
with the EMA weights and written to the config. Training clips are random crops of
random windows of Shapes streams (or of the folder's videos, at the model's frame size
and fps); the network is fully convolutional, so crops cost less and the shipped model
runs at the full frame size. With a folder, the PSNR figure is measured on its first
`eval_clips` videos from their start (not held out: a folder has no split).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from distill.common import EMA, Checkpointer, TrainResult, autocast, resolve_device, run_to_json, warmup_cosine_lr
from distill.data.shapes import ShapesConfig, ShapesWorld
from engine.autoencoder import AutoencoderConfig, ShapesAutoencoder

# Held-out clips are Shapes seeds [0, EVAL_SEEDS); training draws seeds at or above
# TRAIN_SEED_MIN, so the two never meet.
EVAL_SEEDS = 1 << 20
TRAIN_SEED_MIN = 1 << 32


@dataclass(frozen=True)
class AutoencoderRun:
    """One training run: the network's config plus how to train it."""

    model: AutoencoderConfig
    data: str | None = None  # a folder of your videos with captions.jsonl; None: the Shapes world
    steps: int = 3600
    batch_size: int = 4
    num_frames: int = 12  # video frames per training clip (a multiple of 4)
    crop: int = 64  # square training crops (a multiple of 8) of height x width Shapes frames
    max_start_frame: int = 480  # clips are windows of a stream starting anywhere up to here
    lr: float = 1e-3
    warmup: int = 100
    final_lr_fraction: float = 0.05  # cosine decay from lr down to lr * this
    # "mse": squared error, which PSNR measures (learns sharp shapes ~3x faster here than L1:
    # 29.7 vs 24.0 dB after 300 steps overfitting two clips); "l1": absolute error.
    pixel_loss: Literal["mse", "l1"] = "l1"
    edge_weight: float = 0.5  # weight of the same loss on horizontal and vertical pixel differences
    latent_noise: float = 0.1  # noise std relative to each channel's std (per clip U(0, this))
    stats_clips: int = 32  # full-frame training clips the exported latent statistics are measured on
    ema_decay: float = 0.998
    # bf16 autocast for the forward and backward (fp32 weights and optimiser): convs run ~2x
    # faster on CPUs with avx512_bf16 / AMX, and on GPUs.
    autocast: bool = False
    log_every: int = 25
    eval_every: int = 500
    eval_clips: int = 4
    ckpt_every: int = 250
    seed: int = 0
    # auto: this process's GPU if there is one, else the CPU (as the teacher's and the
    # student's). Clips and noise are drawn on the host either way; each step's go to the device.
    device: str = "auto"


PRESETS: dict[str, AutoencoderRun] = {
    # The shipped model. Measured side by side at 800-1500 steps (held-out PSNR, 4 clips): the
    # squared error learns sharp shapes where L1 stalls (28.6 vs 25.9 dB at 800 steps, and
    # L1 does not move past ~26 however long); then width pays (31.7 vs 30.3 dB at 1500
    # steps), 32 latent channels do not (28.7 vs 29.1 dB at 750).
    "shapes": AutoencoderRun(
        model=AutoencoderConfig(encoder_channels=(64, 128, 256), decoder_channels=(192, 96, 48),
                                decoder_blocks=(3, 2, 1)),
        steps=6000, batch_size=8, pixel_loss="mse", autocast=True, eval_every=1000),
    # For tests: a few hundred thousand multiply-adds per frame.
    "tiny": AutoencoderRun(
        model=AutoencoderConfig(latent_channels=4, encoder_channels=(8, 8, 16), decoder_channels=(16, 8, 8),
                                decoder_blocks=(1, 1, 1), height=32, width=32),
        steps=40, batch_size=2, num_frames=8, crop=32, lr=3e-3, warmup=2, log_every=5, eval_every=20,
        eval_clips=2, ckpt_every=10, ema_decay=0.9, stats_clips=4),
}


# --- data ----------------------------------------------------------------------------------


def clips_to_video(frames: list) -> torch.Tensor:
    """uint8 [T, H, W, 3] arrays -> float [B, 3, T, H, W] in [-1, 1]"""
    video = torch.from_numpy(np.stack(frames))  # [B, T, H, W, 3]
    return video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def training_batch(world, run: AutoencoderRun, step: int) -> torch.Tensor:
    """The clips of `step`: deterministic in (seed, step), so a resumed run sees what it
    would have seen. `world` is the Shapes world or a folder's VideoClips.
    -> [B, 3, num_frames, crop, crop] in [-1, 1]"""
    rng = np.random.default_rng([run.seed, step])
    frames = []
    for _ in range(run.batch_size):
        if isinstance(world, ShapesWorld):
            seed = int(rng.integers(TRAIN_SEED_MIN, 2**62))
            clip = world.sample(seed, run.num_frames, int(rng.integers(0, run.max_start_frame + 1)))
        else:
            clip = world.sample(rng)
        height, width = clip.frames.shape[1:3]
        top = int(rng.integers(0, height - run.crop + 1))
        left = int(rng.integers(0, width - run.crop + 1))
        frames.append(clip.frames[:, top:top + run.crop, left:left + run.crop])
    return clips_to_video(frames)


def clip_source(run: AutoencoderRun, num_frames: int):
    """Where clips come from: the Shapes world, or the folder's videos (clips of num_frames) at
    the model's size and fps."""
    if run.data is None:
        return ShapesWorld(ShapesConfig(height=run.model.height, width=run.model.width, fps=run.model.fps))
    from distill.data.video_folder import VideoClips

    return VideoClips(run.data, num_frames, run.model.height, run.model.width, run.model.fps)


def heldout_video(world, index: int, num_frames: int) -> torch.Tensor:
    """Held-out clip `index` (never trained on), full frame. -> [1, 3, T, H, W]"""
    if not 0 <= index < EVAL_SEEDS:
        raise ValueError(f"held-out index must be in [0, {EVAL_SEEDS})")
    return clips_to_video([world.sample(index, num_frames).frames])


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1], over all pixels of the clip (peak = 2)."""
    mse = float(((reconstruction - target) ** 2).mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def heldout_psnr(ae: ShapesAutoencoder, world, clips: int, num_frames: int = 16) -> float:
    """Mean reconstruction PSNR over held-out clips 0..clips-1 at the full frame size (a
    folder's first videos from their start: `world` is then its VideoClips)."""
    scores, device = [], next(ae.parameters()).device
    with torch.inference_mode():
        for index in range(clips):
            if isinstance(world, ShapesWorld):
                video = heldout_video(world, index, num_frames)
            else:
                video = folder_video(world, index)
            video = video.to(device)
            scores.append(psnr(ae.decode(ae.encode(video)), video))
    return sum(scores) / len(scores)


def folder_video(clips, index: int) -> torch.Tensor:
    """Video `index % count` of a folder from its start. -> [1, 3, T, H, W]"""
    return clips.dataset[index % len(clips)]["video"][None]


def latent_statistics(ae: ShapesAutoencoder, world, run: AutoencoderRun) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [C] of the raw latents of `stats_clips` full-frame clips
    from the training distribution (a seed stream of its own; a folder's clips are
    num_frames long, Shapes clips 16)."""
    rng = np.random.default_rng([run.seed, 0, 1])  # three words: never a training step's [seed, step]
    raws, device = [], next(ae.parameters()).device
    with torch.inference_mode():
        for _ in range(run.stats_clips):
            if isinstance(world, ShapesWorld):
                seed, start = int(rng.integers(TRAIN_SEED_MIN, 2**62)), int(rng.integers(0, run.max_start_frame + 1))
                clip = world.sample(seed, 16, start)
            else:
                clip = world.sample(rng)
            raws.append(ae.encode_raw(clips_to_video([clip.frames]).to(device)))  # [1, C, T/4, h, w]
    raw = torch.cat(raws, dim=2)
    return raw.mean((0, 2, 3, 4)), raw.std((0, 2, 3, 4))


# --- loss and schedule ------------------------------------------------------------------------


def reconstruction_loss(rec: torch.Tensor, video: torch.Tensor, edge_weight: float,
                        pixel_loss: str = "l1") -> torch.Tensor:
    """d(rec, video) + edge_weight * d of the x and y pixel differences, d the mean absolute
    or squared error. rec, video: [B, 3, T, H, W]"""
    def d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).square().mean() if pixel_loss == "mse" else (a - b).abs().mean()

    dx = d(rec.diff(dim=-1), video.diff(dim=-1))
    dy = d(rec.diff(dim=-2), video.diff(dim=-2))
    return d(rec, video) + edge_weight * (dx + dy)


def lr_at(run: AutoencoderRun, step: int) -> float:
    """Linear warm-up, then cosine decay to lr * final_lr_fraction at the last step."""
    return warmup_cosine_lr(run.lr, step, run.warmup, run.steps, run.final_lr_fraction)


# --- the training run ----------------------------------------------------------------------------


def train_autoencoder(run: AutoencoderRun, run_dir: Path, out_dir: Path | None = None, threads: int = 0,
                      progress: bool = True) -> TrainResult:
    """Train (or resume) in run_dir; writes the EMA model to out_dir (default run_dir/autoencoder)."""
    if threads:
        torch.set_num_threads(threads)
    if run.num_frames % 4 or run.crop % 8 or run.crop > min(run.model.height, run.model.width):
        raise ValueError("num_frames must divide by 4, crop by 8, and crop fit in the frame")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(run_to_json(run), indent=2) + "\n")

    # --- build -----------------------------------------------------------------------------
    device = resolve_device(run.device)
    torch.manual_seed(run.seed)
    ae = ShapesAutoencoder(run.model).train().to(device)  # initialised on the host: the same weights anywhere
    ema = EMA(ae, run.ema_decay)
    opt = torch.optim.Adam(ae.parameters(), lr=run.lr)
    world = clip_source(run, run.num_frames)
    ckpt = Checkpointer(run_dir)
    writer = SummaryWriter(str(run_dir / "tb"))

    # --- resume ----------------------------------------------------------------------------
    step, losses, figures = 0, [], {}
    if (latest := ckpt.latest()) is not None:
        step, _ = ckpt.load(latest, {"model": ae, "ema": ema.shadow}, {"opt": opt})
        print(f"resumed from {latest} at step {step}", file=sys.stderr)

    # --- loop: sample, loss, step, EMA, log, evaluate, checkpoint --------------------------------
    start = time.time()
    bar = tqdm(total=run.steps, initial=step, desc="autoencoder", unit="step", dynamic_ncols=True,
               disable=not progress)
    window: list[float] = []
    while step < run.steps:
        video = training_batch(world, run, step).to(device)  # [B, 3, T, crop, crop]
        noise_gen = torch.Generator().manual_seed(run.seed * 1_000_003 + step)

        with autocast(ae, run.autocast):
            raw = ae.encode_raw(video).float()  # [B, C, T/4, crop/8, crop/8]
            scale = raw.detach().std((0, 2, 3, 4)).view(-1, 1, 1, 1)  # [C, 1, 1, 1]
            sigma = run.latent_noise * torch.rand(video.shape[0], 1, 1, 1, 1, generator=noise_gen).to(device)
            noisy = raw + sigma * scale * torch.randn(raw.shape, generator=noise_gen).to(device)
            rec = ae.decode(ae.normalise(noisy))  # [B, 3, T, crop, crop] (statistics are 0 / 1 until export)
        loss = reconstruction_loss(rec.float(), video, run.edge_weight, run.pixel_loss)

        for group in opt.param_groups:
            group["lr"] = lr_at(run, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(ae, step)
        step += 1

        losses.append(loss.item())
        window.append(losses[-1])
        bar.update(1)
        if step % run.log_every == 0 or step == run.steps:
            writer.add_scalar("loss/train", sum(window) / len(window), step)
            writer.add_scalar("lr", lr_at(run, step - 1), step)
            writer.add_scalar("latents/raw_std_mean", float(scale.mean()), step)
            bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
            window = []
        if step % run.eval_every == 0 or step == run.steps:
            online = heldout_psnr(ae, world, run.eval_clips)
            figures["heldout_psnr_db"] = heldout_psnr(ema.shadow, world, run.eval_clips)
            writer.add_scalar("psnr/heldout_online", online, step)
            writer.add_scalar("psnr/heldout_ema", figures["heldout_psnr_db"], step)
            bar.write(f"step {step}: held-out PSNR {online:.2f} dB, EMA {figures['heldout_psnr_db']:.2f} dB")
        if step % run.ckpt_every == 0 or step == run.steps:
            ckpt.save(step, {"model": ae, "ema": ema.shadow}, {"opt": opt})
    bar.close()
    writer.close()

    # --- export: the EMA weights with their latent statistics ---------------------------------------
    final = ema.shadow.eval()
    final.with_latent_stats(*latent_statistics(final, world, run))
    final.cpu()
    out_dir = out_dir or run_dir / "autoencoder"
    final.save(out_dir)
    return TrainResult(out_dir, step, time.time() - start, losses, figures)
