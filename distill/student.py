"""Distil the bidirectional teacher into the causal few-step student (Self-Forcing /
CausVid): ODE initialisation, then DMD with self-forcing rollouts.

    framecast distill student --preset shapes --teacher runs/teacher/model --out engine/models/shapes-default

One linear loop over a global step: steps [0, ode_iters) regress the student onto
teacher ODE trajectories; steps [ode_iters, ode_iters + dmd_iters) are DMD generator
updates, each after `critic_ratio` updates of the fake-score critic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from engine.config import ModelConfig
from engine.model import load_transformer_weights
from engine.sampler import FewStepSampler
from engine.transformer import build_transformer

from .common import EMA, CaptionCache, Checkpointer, MetricsLog, TrainResult, autocast, run_to_json, step_generator
from .losses import add_noise, dmd_loss, flow_matching_loss, ode_regression_loss, sample_sigmas
from .rollout import rollout, teacher_forcing_forward
from .teacher import SHAPES_MODEL, TINY_MODEL, build_text_encoder_for, export_model, sample_teacher

SHAPES_STUDENT = SHAPES_MODEL.model_copy(update={
    "name": "shapes-default",
    "description": "Framecast's embedded default: a causal 4-step student distilled on the procedural Shapes world.",
    "attention": SHAPES_MODEL.attention.model_copy(update={"policy": "sink_window"}),
    "guidance_scale": 1.0,
})
TINY_STUDENT = TINY_MODEL.model_copy(update={
    "name": "tiny-student", "attention": TINY_MODEL.attention.model_copy(update={"policy": "sink_window"})})


@dataclass(frozen=True)
class StudentRun:
    model: ModelConfig = SHAPES_STUDENT
    teacher: str = "runs/teacher/model"  # model dir written by `framecast distill teacher`
    latent_frames: int = 6  # clip length the teacher judges, in latent frames (the teacher's training length)
    rollout_frames: int = 0  # self-forcing rollout length; longer than latent_frames exercises cache
    #                          eviction (EMA sink) in training, DMD then judges a random window (0: = latent_frames)
    switch_prob: float = 0.0  # share of DMD rollouts that switch prompts halfway (re-cache, then judged
    #                           under the new prompt: the student learns to follow a viewer's switch)
    init_from: str | None = None  # a student model dir to start from instead of the teacher (skips nothing:
    #                               set ode_iters=0 to start DMD from an ODE-initialised student)
    # ODE initialisation (budgeted for 2 CPU cores, like the teacher: ~15 min)
    ode_pairs: int = 64  # teacher trajectories to regress on
    ode_teacher_steps: int = 16  # Euler steps of the teacher for those trajectories
    ode_iters: int = 200
    ode_batch: int = 4
    ode_lr: float = 3e-4
    # DMD (~10 min here)
    dmd_iters: int = 40
    batch_size: int = 2
    critic_ratio: int = 2  # critic updates per generator update (Self-Forcing uses 5)
    lr_generator: float = 2e-5
    lr_critic: float = 1e-4
    dmd_sigma_low: float = 0.02
    dmd_sigma_high: float = 0.98
    guidance: float | None = None  # real score guidance; None = the teacher's guidance_scale
    method: str = "dmd"  # dmd | re_dmd (Reward Forcing) | stream_r1
    reward: str = "distill/rewards/weights/shapes-reward"  # reward model dir (re_dmd, stream_r1)
    reward_beta: float = 2.0  # rollout weights exp(beta * normalised reward)
    balance_window: int = 50  # Stream-R1's adaptive balancing looks this many steps back
    grad_clip: float = 1.0
    autocast: bool = False  # bf16 autocast for every forward (distill.common.autocast)
    ema_decay: float = 0.99
    log_every: int = 10
    ckpt_every: int = 50
    seed: int = 0


PRESETS: dict[str, StudentRun] = {
    # ~15 min on 2 idle CPU cores: 256 teacher trajectories, 800 ODE steps, 150 DMD steps.
    "shapes": StudentRun(ode_pairs=256, ode_teacher_steps=20, ode_iters=800, ode_batch=8, ode_lr=5e-4,
                         dmd_iters=150, lr_generator=5e-5),
    "tiny": StudentRun(model=TINY_STUDENT, latent_frames=2, ode_pairs=4, ode_teacher_steps=4, ode_iters=12,
                       ode_batch=2, ode_lr=2e-3, dmd_iters=4, batch_size=2, critic_ratio=2, lr_generator=1e-3,
                       lr_critic=1e-3, log_every=2, ckpt_every=4, ema_decay=0.5),
}


# --- data parallel (torchrun): average gradients over processes ---------------------------

def world() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(module: torch.nn.Module, world_size: int) -> None:
    """What DDP's reducer does, done explicitly: rollouts call the student many times per
    backward, which DDP's one-forward-per-backward hooks do not allow."""
    if world_size == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def optimiser_step(loss: torch.Tensor, module: torch.nn.Module, opt: torch.optim.Optimizer, clip: float,
                   world_size: int) -> None:
    """backward, average over processes, clip, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(module, world_size)
    torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()


def broadcast_parameters(module: torch.nn.Module) -> None:
    if dist.is_initialized():
        for p in module.parameters():
            dist.broadcast(p.data, 0)


# --- the pieces of one step ------------------------------------------------------------------

def shapes_captions(step: int, count: int, seed: int, rank: int) -> list[str]:
    from distill.data.shapes import ShapesConfig, ShapesWorld

    world_ = ShapesWorld(ShapesConfig(height=32, width=32))
    rng = np.random.default_rng([seed, rank, step])
    return [world_.sample(int(s), 1).caption for s in rng.integers(0, 2**62, size=count)]


def student_sigmas(run: StudentRun) -> list[float]:
    sampler = FewStepSampler(run.model.sampler)
    sampler.set_timesteps(len(run.model.sampler.timesteps))
    return [float(s) for s in sampler.sigmas]


@torch.no_grad()
def make_ode_pairs(run: StudentRun, teacher, captions: CaptionCache, path: Path, rank: int) -> dict:
    """Teacher trajectories at the student's noise levels: xs [P, S, C, F, h, w], x0, feats."""
    if path.is_file():
        return load_file(path)
    sigmas = student_sigmas(run)
    gen = torch.Generator().manual_seed(run.seed * 7919 + rank)
    xs, x0s, feats_all = [], [], []
    batch = 8
    for i in tqdm(range(0, run.ode_pairs, batch), desc="teacher ODE pairs", unit="batch", dynamic_ncols=True):
        feats = captions(shapes_captions(i, min(batch, run.ode_pairs - i), run.seed + 1, rank))
        with autocast(teacher, run.autocast):
            x0, traj = sample_teacher(teacher, run.model, feats, run.latent_frames, steps=run.ode_teacher_steps,
                                      guidance=teacher_guidance(run, teacher), generator=gen,
                                      return_trajectory_at=sigmas)
        x0, traj = x0.float(), [t.float() for t in traj]
        xs.append(torch.stack(traj, dim=1))
        x0s.append(x0)
        feats_all.append(feats)
    pairs = {"xs": torch.cat(xs), "x0": torch.cat(x0s), "feats": torch.cat(feats_all)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in pairs.items()}, path)
    return pairs


def teacher_guidance(run: StudentRun, teacher) -> float:
    return run.guidance if run.guidance is not None else teacher.teacher_config.guidance_scale


def ode_step_loss(run: StudentRun, student, pairs: dict, gen: torch.Generator) -> torch.Tensor:
    """Every chunk at a random student noise level, clean teacher context before it."""
    idx = torch.randint(len(pairs["x0"]), (run.ode_batch,), generator=gen)
    xs, x0, feats = pairs["xs"][idx], pairs["x0"][idx], pairs["feats"][idx]  # [B, S, C, F, h, w]
    chunk = run.model.attention.chunk_frames
    chunks = run.latent_frames // chunk
    sigmas = torch.tensor(student_sigmas(run))
    level = torch.randint(len(sigmas), (run.ode_batch, chunks), generator=gen)  # [B, chunks]
    level_f = level.repeat_interleave(chunk, dim=1)  # [B, F]
    gather = level_f[:, None, None, :, None, None].expand(-1, 1, xs.shape[2], -1, *xs.shape[4:])
    noisy = torch.gather(xs, 1, gather).squeeze(1)  # [B, C, F, h, w]: frame f at its chunk's level
    pred = teacher_forcing_forward(student, run.model, x0, noisy, sigmas[level_f], student.embed_text(feats))
    return ode_regression_loss(pred, x0)


def judged_window(latents: torch.Tensor, run: StudentRun, gen: torch.Generator, first_chunk: int = 0) -> torch.Tensor:
    """A random chunk-aligned window of the teacher's clip length from a longer rollout,
    starting at `first_chunk` or later (Self-Forcing++-style: the teacher and critic only
    ever see clips of their length; after a switch, only what follows it)."""
    chunk, frames = run.model.attention.chunk_frames, latents.shape[2]
    if frames <= run.latent_frames:
        return latents
    starts = (frames - run.latent_frames) // chunk + 1 - first_chunk
    start = (first_chunk + int(torch.randint(starts, (1,), generator=gen))) * chunk
    return latents[:, :, start : start + run.latent_frames]


def draw_switch(run: StudentRun, chunks: int, gen: torch.Generator) -> int | None:
    """The chunk before which a rollout switches prompts (with probability switch_prob, when
    a judged window fits after it), or None."""
    latest = chunks - run.latent_frames // run.model.attention.chunk_frames
    if latest < 1 or float(torch.rand(1, generator=gen)) >= run.switch_prob:
        return None
    return int(torch.randint(1, latest + 1, (1,), generator=gen))


def student_rollout(run: StudentRun, student, prompts: list[str], chunks: int, gen: torch.Generator,
                    captions: CaptionCache, caption_seed: tuple[int, int], rank: int, grad: bool):
    """A self-forcing rollout for DMD, with a prompt switch part of the time, and the window
    of it that the teacher and critic judge.
    -> (window [B, C, F, h, w], the prompts that window was generated under, their features)"""
    feats = captions(prompts)
    switch_at = draw_switch(run, chunks, gen)
    if switch_at is None:
        out = rollout(student, run.model, student.embed_text(feats), chunks, gen, grad=grad)
        return judged_window(out.latents, run, gen), prompts, feats
    after = shapes_captions(caption_seed[0], len(prompts), run.seed + 2 + caption_seed[1], rank)
    after_feats = captions(after)
    out = rollout(student, run.model, student.embed_text(feats), chunks, gen, grad=grad,
                  switch=(switch_at, student.embed_text(after_feats)))
    return judged_window(out.latents, run, gen, first_chunk=switch_at), after, after_feats


class RewardWeighting:
    """The DMD weight of each method, from rewards of the decoded rollout (constants to
    the generator: computed without gradient to it).

    dmd        none
    re_dmd     per rollout exp(beta * z(r_motion)) (Reward Forcing's Re-DMD)
    stream_r1  per rollout exp(beta * sum_k lambda_k z(r_k)), lambda from the adaptive
               balancer, times per-pixel saliency weights of the reward gradient pooled to
               the latent grid (Stream-R1)."""

    def __init__(self, run: StudentRun, autoencoder_dir: str):
        from distill.methods import AdaptiveBalancer
        from distill.rewards.base import load_reward

        from .teacher import load_autoencoder

        self.run = run
        self.reward = load_reward(run.reward)
        self.autoencoder = load_autoencoder(autoencoder_dir)
        self.balancer = AdaptiveBalancer(window=run.balance_window)

    def __call__(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from distill.methods import re_dmd_weights, stream_r1_pixel_weights, stream_r1_rollout_weights

        with torch.no_grad():
            video = self.autoencoder.decode(latents.detach())  # [B, 3, T, H, W]
            scores = self.reward.score(video, prompts)
        if self.run.method == "re_dmd":
            return re_dmd_weights(scores["motion"], self.run.reward_beta)  # [B]
        self.balancer.update({k: scores[k].mean() for k in self.balancer.dims})
        balance = self.balancer.weights()
        per_rollout = stream_r1_rollout_weights(scores, balance, self.run.reward_beta)  # [B]
        per_pixel = stream_r1_pixel_weights(self.reward, video, prompts, balance)  # [B, 1, F, h, w]
        return per_rollout.view(-1, 1, 1, 1, 1) * per_pixel


def real_and_fake_x0(run: StudentRun, teacher, critic, x_t: torch.Tensor, sigma: torch.Tensor,
                     feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 of the real score (teacher with guidance) and of the fake score (critic)."""
    t = sigma * 1000
    att = teacher.full_attention(x_t.shape[2])
    g = teacher_guidance(run, teacher)
    cond, uncond = teacher.embed_text(feats), teacher.embed_text(torch.zeros_like(feats))
    v_c, v_u = teacher.denoise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]), att).chunk(2)
    s = sigma.view(-1, 1, 1, 1, 1)
    x0_real = x_t - s * (v_u + g * (v_c - v_u))
    x0_fake = x_t - s * critic.denoise(x_t, t, critic.embed_text(feats), att)
    return x0_real, x0_fake


# --- the run ----------------------------------------------------------------------------------

def train_student(run: StudentRun, run_dir: Path, out_dir: Path | None = None, threads: int = 0,
                  progress: bool = True) -> TrainResult:
    """Train (or resume) the student; rank 0 writes the EMA weights as a model dir (default run_dir/model)."""
    if threads:
        torch.set_num_threads(threads)
    rank, world_size = world()
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (run_dir / "run.json").write_text(json.dumps(run_to_json(run), indent=2) + "\n")

    # --- build: teacher (frozen), student and critic initialised from it ---------------------
    from engine.config import ModelConfig as _MC

    teacher_cfg = _MC.load(Path(run.teacher) / "model.json")
    teacher = build_transformer(teacher_cfg).requires_grad_(False).eval()
    load_transformer_weights(teacher, Path(run.teacher) / "transformer.safetensors")
    teacher.teacher_config = teacher_cfg
    student = build_transformer(run.model).train()
    if run.init_from:
        init = build_transformer(_MC.load(Path(run.init_from) / "model.json"))
        load_transformer_weights(init, Path(run.init_from) / "transformer.safetensors")
        student.load_state_dict(init.state_dict(), strict=False)  # linear readouts stay zero if absent
    else:
        student.load_state_dict(teacher.state_dict(), strict=False)  # same network; linear readouts stay zero
    critic = build_transformer(teacher_cfg).train()
    critic.load_state_dict(teacher.state_dict())
    broadcast_parameters(student)
    ema = EMA(student, run.ema_decay)
    opt_ode = torch.optim.AdamW(student.parameters(), lr=run.ode_lr, weight_decay=0.0)
    opt_gen = torch.optim.AdamW(student.parameters(), lr=run.lr_generator, weight_decay=0.0, betas=(0.0, 0.999))
    opt_critic = torch.optim.AdamW(critic.parameters(), lr=run.lr_critic, weight_decay=0.0, betas=(0.0, 0.999))
    captions = CaptionCache(build_text_encoder_for(run.model))
    ckpt = Checkpointer(run_dir)
    metrics = MetricsLog(run_dir, enabled=rank == 0)
    if run.method not in ("dmd", "re_dmd", "stream_r1"):
        raise ValueError(f"unknown method {run.method!r}: dmd, re_dmd or stream_r1")
    # The rollouts are decoded with the student's own decoder: the teacher's model dir carries
    # it (decoder.path, relative to the dir; export_model copies the autoencoder there).
    decoder_dir = Path(run.teacher) / (teacher_cfg.decoder.path or ".")
    weighting = RewardWeighting(run, str(decoder_dir)) if run.method != "dmd" else None
    chunk = run.model.attention.chunk_frames
    chunks = max(run.rollout_frames, run.latent_frames) // chunk

    # --- resume ---------------------------------------------------------------------------------
    step = 0
    modules = {"student": student, "ema": ema.shadow, "critic": critic}
    optimizers = {"ode": opt_ode, "gen": opt_gen, "critic": opt_critic}
    if (latest := ckpt.latest()) is not None:
        step, extra = ckpt.load(latest, modules, optimizers)
        if weighting is not None and "balancer" in extra:
            weighting.balancer.load_state_dict(extra["balancer"])
        print(f"resumed from {latest} at step {step}", file=sys.stderr)
    pairs = make_ode_pairs(run, teacher, captions, run_dir / f"ode_pairs_rank{rank}.safetensors", rank) \
        if step < run.ode_iters else None

    # --- loop -------------------------------------------------------------------------------------
    total = run.ode_iters + run.dmd_iters
    bar = tqdm(total=total, initial=step, desc="student", unit="step", dynamic_ncols=True,
               disable=rank != 0 or not progress)
    start, logs, all_losses = time.time(), {}, []
    while step < total:
        gen = step_generator(run.seed, step, rank)
        if step < run.ode_iters:
            # ODE initialisation: regress onto teacher trajectories.
            with autocast(student, run.autocast):
                loss = ode_step_loss(run, student, pairs, gen)
            optimiser_step(loss, student, opt_ode, run.grad_clip, world_size)
            logs.setdefault("loss/ode", []).append(loss.item())
            all_losses.append(logs["loss/ode"][-1])
        else:
            # Critic: flow matching on the student's own (detached) rollouts.
            for k in range(run.critic_ratio):
                prompts = shapes_captions(step * 31 + k, run.batch_size, run.seed, rank)
                with torch.no_grad(), autocast(student, run.autocast):
                    x, _, feats = student_rollout(run, student, prompts, chunks, gen, captions, (step * 31 + k, 1),
                                                  rank, grad=False)
                    x = x.float()
                noise = torch.randn(x.shape, generator=gen)
                sigma = sample_sigmas(len(x), run.model.sampler.shift, gen)
                with autocast(critic, run.autocast):
                    v = critic.denoise(add_noise(x, noise, sigma), sigma * 1000, critic.embed_text(feats),
                                       critic.full_attention(x.shape[2]))
                loss_c = flow_matching_loss(v, x, noise)
                optimiser_step(loss_c, critic, opt_critic, run.grad_clip, world_size)
                logs.setdefault("loss/critic", []).append(loss_c.item())
            # Generator: DMD on a self-forcing rollout, gradient through each chunk's exit step.
            with autocast(student, run.autocast):
                x, prompts, feats = student_rollout(run, student, shapes_captions(step, run.batch_size, run.seed, rank),
                                                    chunks, gen, captions, (step, 0), rank, grad=True)
                x = x.float()
            sigma = sample_sigmas(len(x), run.model.sampler.shift, gen, run.dmd_sigma_low, run.dmd_sigma_high)
            x_t = add_noise(x.detach(), torch.randn(x.shape, generator=gen), sigma)
            with torch.no_grad(), autocast(teacher, run.autocast):
                x0_real, x0_fake = (x0.float() for x0 in real_and_fake_x0(run, teacher, critic, x_t, sigma, feats))
            weight = weighting(x, prompts) if weighting is not None else None
            loss = dmd_loss(x, x0_real, x0_fake, weight)
            optimiser_step(loss, student, opt_gen, run.grad_clip, world_size)
            logs.setdefault("loss/dmd", []).append(loss.item())
            all_losses.append(logs["loss/dmd"][-1])
        ema.update(student)
        step += 1
        bar.update(1)

        if rank == 0 and (step % run.log_every == 0 or step == total):
            metrics.log(step, {k: sum(v) / len(v) for k, v in logs.items()})
            bar.set_postfix({k.split("/")[1]: f"{sum(v) / len(v):.4f}" for k, v in logs.items()})
            logs = {}
        if rank == 0 and (step % run.ckpt_every == 0 or step == total):
            ckpt.save(step, modules, optimizers,
                      {"balancer": weighting.balancer.state_dict()} if weighting is not None else None)
    bar.close()
    if world_size > 1:  # every process must end with the same weights
        checksum = torch.stack([p.detach().double().sum() for p in student.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(checksum) for _ in range(world_size)]
        dist.all_gather(gathered, checksum)
        metrics.log(step, {"ranks_in_sync": float(all(torch.equal(g, gathered[0]) for g in gathered))})
    if rank != 0:
        return TrainResult(None, step, time.time() - start, all_losses)
    metrics.close()
    out_dir = out_dir or run_dir / "model"
    export_model(run, run.teacher, ema.shadow, out_dir, seconds=time.time() - start, stage="student")
    return TrainResult(out_dir, step, time.time() - start, all_losses)
