"""Distil a bidirectional teacher into the causal few-step student (Self-Forcing /
CausVid): ODE initialisation, then DMD with self-forcing rollouts.

    framecast distill student --preset shapes --teacher runs/teacher/model --out engine/models/shapes-default
    torchrun --nproc_per_node 8 -m framecast distill student --preset wan --teacher models/wan2.1-t2v \
        --prompts vidprom.txt          # docs/distill.md

One linear loop over a global step: steps [0, ode_iters) regress the student onto
teacher ODE trajectories; steps [ode_iters, ode_iters + dmd_iters) are DMD generator
updates, each after `critic_ratio` updates of the fake-score critic. Any teacher the
engine loads works: the student's architecture, chunking and step schedule follow it
(`student_config`). Under torchrun every network is sharded with FSDP2 (distill/parallel.py);
with one process they are plain modules, as before.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from engine.config import (AttentionConfig, DecoderConfig, LatentConfig, ModelConfig, SamplerConfig,
                           TextEncoderConfig, TransformerConfig)
from engine.model import load_transformer_weights
from engine.sampler import FewStepSampler
from engine.transformer import build_transformer

from .common import (EMA, CaptionCache, ClipLatents, MetricsLog, TrainResult, WeightsDtype, autocast, native_bf16,
                     run_to_json, step_generator)
from .data.prompts import FilePrompts, ShapesPrompts, prompt_source, shapes_captions  # noqa: F401 (tests use it)
from .losses import (DiscriminatorHead, add_noise, dmd_loss, flow_matching_loss, gan_critic_loss, gan_generator_loss,
                     ode_regression_loss, sample_sigmas)
from .methods import RewardWeighting
from .parallel import (DistCheckpointer, Parallel, full_state_dict, init_parallel, mean_over_processes,
                       place_transformer, same_everywhere, weights_digest)
from .rollout import rollout, teacher_forcing_forward
from .teacher import SHAPES_WIDE_MODEL, TINY_MODEL, export_model, sample_teacher

# Step schedules a student is trained (and streams) with: 4 steps a chunk, each chunk's clean latents
# re-run once to fill the cache; or diagonal distillation: 4, 3, then 2 steps a chunk, the cache filled
# from the last denoising pass (partially denoised context). The Shapes ablation (docs/default-model.md)
# found diagonal as good as plain DMD and 1.5x faster: the default model takes its steps (with a refresh).
PLAIN_SCHEDULE = {"steps_per_chunk": (4,), "refresh_context": True}
DIAGONAL_SCHEDULE = {"steps_per_chunk": (4, 3, 2), "refresh_context": False}
# The default model's: diagonal's 4, 3, then 2 steps, each finished chunk re-run at t=0 into the cache as
# the plain schedule does. Streamed so, a student trained on diagonal rollouts (context from its last,
# partly noisy pass) lets small objects fade in seconds; trained on rollouts cached as it streams, it
# keeps them (docs/default-model.md, "Measured: v11").
REFRESHED_DIAGONAL_SCHEDULE = {"steps_per_chunk": (4, 3, 2), "refresh_context": True}
# The default model: the wide teacher's network (teacher.SHAPES_WIDE_MODEL, 6 heads, ffn 1536), streaming.
SHAPES_STUDENT = SHAPES_WIDE_MODEL.model_copy(update={
    "name": "shapes-default",
    "description": "Framecast's embedded default: a causal few-step student (4, 3, then 2 steps a chunk) "
                   "distilled on the procedural Shapes world.",
    "attention": SHAPES_WIDE_MODEL.attention.model_copy(update={"policy": "sink_window"}),
    "sampler": SHAPES_WIDE_MODEL.sampler.model_copy(update=REFRESHED_DIAGONAL_SCHEDULE),
    "guidance_scale": 1.0,
    "frame_time": 0,
})
TINY_STUDENT = TINY_MODEL.model_copy(update={
    "name": "tiny-student", "attention": TINY_MODEL.attention.model_copy(update={"policy": "sink_window"})})
# Wan2.1-T2V-1.3B (diffusers' config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers) as a streaming student: chunks of
# 3 latent frames, Self-Forcing's 4 steps at shift 5, and LongLive's sink 3 + window 6 frames, so the cache
# (and a rollout's attention context) stays 12 frames long. The text encoder and VAE paths come from the
# converted teacher (student_config).
WAN_STUDENT = ModelConfig(
    name="wan2.1-t2v-1.3b-student",
    description="Causal 4-step Wan2.1-T2V-1.3B student (DMD with self-forcing rollouts), sink 3 + window 6 frames.",
    transformer=TransformerConfig(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30,
                                  text_dim=4096, in_channels=16, out_channels=16),
    attention=AttentionConfig(policy="sink_window", chunk_frames=3, sink_frames=3, window_frames=6),
    sampler=SamplerConfig(timesteps=(1000.0, 750.0, 500.0, 250.0), shift=5.0),
    latent=LatentConfig(channels=16, height=480, width=832, fps=16.0),
    text_encoder=TextEncoderConfig(kind="umt5", dim=4096, max_tokens=512),
    decoder=DecoderConfig(kind="wan_vae"),
    dtype="bfloat16",
)


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
    # DMD2's adversarial term (Yin et al. 2024): a head on the critic's tokens tells noised real clips from
    # noised rollouts, and the generator is pushed towards what it calls real. Real clips can teach what
    # the teacher's score does not (its own samples lose shape and motion). 0: off, plain DMD.
    gan_weight: float = 0.0  # the generator's adversarial term, next to its DMD loss
    gan_critic_weight: float = 1.0  # the head's classification loss, next to the critic's flow matching
    gan_layer: int = 0  # the head reads the critic's tokens after this many blocks (0: half of them)
    gan_sigma_high: float = 0.7  # real and fake clips are noised to s ~ U(0, gan_sigma_high) for the head
    gan_pool: int = 4096  # real Shapes clips, encoded once into the run dir (latent-pool-*.safetensors)
    gan_frames: int = 0  # the head judges a window's first this many latent frames, real and fake (0: all)
    # and, with gan_later > 0, as many of the rollout's frames from chunk gan_later on, beside real clips
    # from the same place in their scenes (a second pool): what a stream shows after its first chunk
    gan_later: int = 0
    method: str = "dmd"  # dmd | re_dmd (Reward Forcing) | stream_r1
    reward: str = "distill/rewards/weights/shapes-reward"  # reward model dir (re_dmd, stream_r1)
    reward_beta: float = 2.0  # rollout weights exp(beta * normalised reward)
    balance_window: int = 50  # Stream-R1's adaptive balancing looks this many steps back
    grad_clip: float = 1.0
    autocast: bool = False  # bf16 for every forward: torch autocast (distill.common.autocast), and under
    #                         torchrun FSDP2's bf16 parameters; master weights, optimiser states and losses float32
    prompts: str | None = None  # prompt file (one per line, or JSONL with "prompt"/"text"); None: Shapes captions
    ode_pair_batch: int = 8  # teacher trajectories sampled at once
    shard_size: int = 0  # under torchrun: processes each network is sharded over (0: all; 1: whole copies, as DDP)
    activation_checkpointing: bool = False  # recompute each block in backward (student and critic)
    device: str = "auto"  # auto: this process's GPU if there is one, else the CPU
    ema_decay: float = 0.99
    log_every: int = 10
    ckpt_every: int = 50
    seed: int = 0
    # How the exported model streams, where it differs from how it was trained (`served_model`):
    # latent frames a chunk (0: as trained) and whether a finished chunk is re-run at t=0 to fill the
    # cache (None: as trained). Measured on the Shapes students (docs/default-model.md): v5's carried
    # objects on only streamed a latent frame a chunk from clean context ("Measured: v5, streamed a
    # latent frame a chunk"); v9's does best in its trained chunks of 3, refreshed ("Measured: v9").
    serve_chunk_frames: int = 0
    serve_refresh_context: bool | None = None
    weights_dtype: WeightsDtype = "float32"  # how the exported weights are stored (as TeacherRun's)


PRESETS: dict[str, StudentRun] = {
    # 512 teacher trajectories of 24 steps (13 min on 2 cores), 1000 ODE steps of 8 (23 min), then
    # 300 DMD steps on 9-frame rollouts (3 chunks: eviction starts), a quarter of them switching
    # prompts before chunk 1 or 2 and judged after the switch. bf16 forwards throughout.
    # Trained and streamed in chunks of 3 latent frames, 4, 3, then 2 steps, each chunk re-run at t=0
    # into the cache (SHAPES_STUDENT's sampler: the rollouts are cached as a stream caches them;
    # docs/default-model.md, "Measured: v11"). Seed 1. DMD2's adversarial term at 0.15, its head
    # judging the first chunk of rollouts that begin their scene, as its real clips (the teacher's
    # pool) do: it mends count; judging whole windows and switched rollouts lost objects in long
    # streams (docs/default-model.md, "Measured: v10"). Weights stored in bf16. Of the wide teacher
    # (teacher preset shapes-wide-carry, 28 min of trajectories, 50 + 23 min of steps) this run
    # was v11; of that teacher carried on (shapes-wide-carry-on; 27 min, then 80 min of steps) it
    # is the default model, v12.
    "shapes": StudentRun(ode_pairs=512, ode_teacher_steps=24, ode_iters=1000, ode_batch=8, ode_lr=5e-4,
                         dmd_iters=300, rollout_frames=9, switch_prob=0.25, lr_generator=5e-5, autocast=True,
                         ckpt_every=100, seed=1, serve_refresh_context=True, gan_weight=0.15, gan_frames=3,
                         weights_dtype="bfloat16"),
    "tiny": StudentRun(model=TINY_STUDENT, latent_frames=2, ode_pairs=4, ode_teacher_steps=4, ode_iters=12,
                       ode_batch=2, ode_lr=2e-3, dmd_iters=4, batch_size=2, critic_ratio=2, lr_generator=1e-3,
                       lr_critic=1e-3, log_every=2, ckpt_every=4, ema_decay=0.5),
    # Wan2.1-T2V-1.3B on one node of 8 GPUs, with the papers' settings (docs/distill.md): CausVid's ODE
    # initialisation (1.5k trajectories of 50 teacher steps: 192 per process; 3000 steps of batch 2 per
    # GPU at lr 2e-6) and Self-Forcing's DMD (21-frame rollouts, guidance 3, 5 critic updates per generator
    # update, lr 2e-6 / 4e-7, betas (0, 0.999), EMA 0.99). Self-Forcing's 600 steps (a critic update each,
    # a generator update every 5th) of 64 rollouts are 120 of our steps at batch 64: 960 at batch 8.
    "wan": StudentRun(model=WAN_STUDENT, latent_frames=21, ode_pairs=192, ode_teacher_steps=50, ode_pair_batch=1,
                      ode_iters=3000, ode_batch=2, ode_lr=2e-6, dmd_iters=960, batch_size=1, critic_ratio=5,
                      lr_generator=2e-6, lr_critic=4e-7, guidance=3.0, reward="", autocast=True,
                      activation_checkpointing=True, ema_decay=0.99, log_every=10, ckpt_every=100),
}


# The attention fields a student always takes from its teacher: its weights were trained with them.
TEACHER_ATTENTION_FIELDS: tuple[str, ...] = ("text_padding", "rope_theta")


def of_preset_kind(preset: ModelConfig, teacher: ModelConfig) -> bool:
    """Whether `teacher` is a model of the world `preset` was made for: the same latent layout
    and the same kinds of text encoder and decoder. Its transformer's width and depth are its
    own (the student takes them), so a wider Shapes teacher is still streamed as the Shapes
    preset says."""
    return (teacher.latent == preset.latent and teacher.text_encoder.kind == preset.text_encoder.kind
            and teacher.decoder.kind == preset.decoder.kind)


def teacher_named(teacher: ModelConfig) -> dict[str, str]:
    """The name and description of a student named after its teacher."""
    return {"name": f"{teacher.name}-student",
            "description": f"Causal few-step student distilled from {teacher.name}."}


def student_config(preset: ModelConfig, teacher: ModelConfig) -> ModelConfig:
    """The student a preset makes of `teacher`. What the teacher decides (architecture,
    latent layout, text encoder, decoder, dtype) always comes from the teacher. What the
    student decides (attention, step schedule; the name where the transformer is the preset's
    too, else the teacher's with -student) comes from the preset when the teacher
    is of the preset's kind (`of_preset_kind`: the same latent layout, text encoder and decoder,
    the transformer of any size: a Shapes teacher for the Shapes presets, a wider or deeper one
    too, Wan2.1 at 832x480 for `wan`); for any other teacher, from the teacher's own config:
    its chunking and step schedule, with the preset's attention policy in place of full
    attention. A Shapes teacher of the preset's size thus gets SHAPES_STUDENT exactly. How
    prompts are read when serving (`prompt_rewrite`) is the preset's for a teacher of its kind."""
    base = teacher.model_copy(update={"guidance_scale": 1.0, "provenance": {}, "frame_time": 0})
    if of_preset_kind(preset, teacher):
        # how the transformer reads its prompt and positions is the teacher's (its weights were trained so)
        attention = preset.attention.model_copy(
            update={field: getattr(teacher.attention, field) for field in TEACHER_ATTENTION_FIELDS})
        # the preset's name and description say its network's size: another size is named after its teacher
        named = ({"name": preset.name, "description": preset.description} if teacher.transformer == preset.transformer
                 else teacher_named(teacher))
        return base.model_copy(update={**named, "attention": attention, "sampler": preset.sampler,
                                       "prompt_rewrite": preset.prompt_rewrite})
    policy = preset.attention.policy if teacher.attention.policy == "full" else teacher.attention.policy
    return base.model_copy(update={
        **teacher_named(teacher),
        "attention": teacher.attention.model_copy(update={"policy": policy})})


def served_model(run: StudentRun) -> ModelConfig:
    """The config a student run exports: its model, streaming as `serve_chunk_frames` and
    `serve_refresh_context` say where they are set. Only how chunks are cut and cached changes;
    the weights read latents, text and positions as they were trained to."""
    attention, sampler = run.model.attention, run.model.sampler
    if run.serve_chunk_frames < 0:
        raise ValueError(f"serve_chunk_frames {run.serve_chunk_frames}: 0 (as trained) or more")
    if run.serve_chunk_frames:
        attention = attention.model_copy(update={"chunk_frames": run.serve_chunk_frames})
    if run.serve_refresh_context is not None:
        sampler = sampler.model_copy(update={"refresh_context": run.serve_refresh_context})
    return run.model.model_copy(update={"attention": attention, "sampler": sampler})


def for_teacher(run: StudentRun, teacher_dir: str | Path | None = None) -> StudentRun:
    """The run with its model made the student of its teacher (`student_config`)."""
    teacher = ModelConfig.load(Path(teacher_dir or run.teacher) / "model.json")
    return dataclasses.replace(run, model=student_config(run.model, teacher))


def check_fits_teacher(model: ModelConfig, teacher: ModelConfig, run: "StudentRun") -> None:
    """Student and teacher must see the same latents and text features and read them alike (the
    student starts from the teacher's weights), and clips must be whole chunks."""
    def reading(config: ModelConfig) -> tuple:  # how the weights read latents, text and positions
        return (config.latent, config.text_encoder.dim, config.transformer.in_channels, config.text_pooling,
                config.output_refiner, config.absolute_positions,
                *(getattr(config.attention, f) for f in TEACHER_ATTENTION_FIELDS))

    if reading(model) != reading(teacher):
        raise ValueError(f"the student ({model.name}) does not share the teacher's ({teacher.name}) latent layout "
                         "and text features, or reads them differently (text_pooling, text_padding, rope_theta); "
                         "`framecast distill student --teacher DIR` derives the student from "
                         "the teacher (distill.student.for_teacher)")
    chunk = model.attention.chunk_frames
    if run.latent_frames % chunk or run.rollout_frames % chunk:
        raise ValueError(f"latent_frames {run.latent_frames} and rollout_frames {run.rollout_frames} must be "
                         f"whole chunks of {chunk} frames")




# --- the pieces of one step ------------------------------------------------------------------

def student_sigmas(run: StudentRun) -> list[float]:
    sampler = FewStepSampler(run.model.sampler)
    sampler.set_timesteps(len(run.model.sampler.timesteps))
    return [float(s) for s in sampler.sigmas]


@dataclass
class StudentTraining:
    """What every step works on: the networks (sharded under torchrun), their optimisers,
    the prompts and their text features, and this process's place in the run."""

    par: Parallel
    teacher: torch.nn.Module
    student: torch.nn.Module
    critic: torch.nn.Module
    ema: EMA
    opt_ode: torch.optim.Optimizer
    opt_gen: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer
    prompts: ShapesPrompts | FilePrompts
    captions: CaptionCache
    weighting: RewardWeighting | None
    chunks: int  # of a DMD rollout
    cache_dtype: torch.dtype | None  # of a rollout's KV cache (None: the student's parameters')
    discriminator: DiscriminatorHead | None = None  # DMD2's head on the critic's tokens (gan_weight > 0)
    real: list[ClipLatents] = dataclasses.field(default_factory=list)  # its real clips, a pool per place it judges

    def features(self, prompts: list[str]) -> torch.Tensor:  # -> [B, L, text_dim] on the device
        return self.captions(prompts).to(self.par.device)

    def draw_prompts(self, key: int, count: int, seed: int) -> list[str]:
        return self.prompts.draw(key, count, seed, self.par.rank)


def generators(run: StudentRun, t: StudentTraining, step: int) -> tuple[torch.Generator, torch.Generator | None]:
    """(this process's generator of the step, the one every process shares, or None with one
    process). The shared one draws what decides which forwards a rollout makes (exit steps,
    prompt switches): sharded networks need every process to make the same ones."""
    device = t.par.device
    gen = step_generator(run.seed, step, t.par.rank, device=device)
    shared = step_generator(run.seed, step, 0, stream=(1,), device=device) if t.par.sharded else None
    return gen, shared


@torch.no_grad()
def make_ode_pairs(run: StudentRun, t: StudentTraining, path: Path, progress: bool = True) -> dict:
    """Teacher trajectories at the student's noise levels, from this process's prompts:
    xs [P, S, C, F, h, w], x0, feats (on the CPU). Written once; a resumed run reads them."""
    missing = torch.tensor([0.0 if path.is_file() else 1.0], device=t.par.device)
    if t.par.sharded:  # the sharded teacher needs every process in the loop if any one lacks its file
        dist.all_reduce(missing, op=dist.ReduceOp.MAX)
    if not missing.item():
        return load_file(path)
    sigmas = student_sigmas(run)
    gen = torch.Generator(device=t.par.device).manual_seed(run.seed * 7919 + t.par.rank)
    xs, x0s, feats_all = [], [], []
    batch = run.ode_pair_batch
    for i in tqdm(range(0, run.ode_pairs, batch), desc="teacher ODE pairs", unit="batch", dynamic_ncols=True,
                  disable=t.par.rank != 0 or not progress):
        feats = t.features(t.draw_prompts(i, min(batch, run.ode_pairs - i), run.seed + 1))
        with autocast(t.teacher, run.autocast):
            x0, traj = sample_teacher(t.teacher, run.model, feats, run.latent_frames, steps=run.ode_teacher_steps,
                                      guidance=teacher_guidance(run, t.teacher), generator=gen,
                                      return_trajectory_at=sigmas)
        xs.append(torch.stack([s.float() for s in traj], dim=1).cpu())
        x0s.append(x0.float().cpu())
        feats_all.append(feats.cpu())
    pairs = {"xs": torch.cat(xs), "x0": torch.cat(x0s), "feats": torch.cat(feats_all)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in pairs.items()}, path)
    return pairs


def teacher_guidance(run: StudentRun, teacher) -> float:
    return run.guidance if run.guidance is not None else teacher.teacher_config.guidance_scale


def ode_step_loss(run: StudentRun, student, pairs: dict, gen: torch.Generator) -> torch.Tensor:
    """Every chunk at a random student noise level, clean teacher context before it."""
    device = gen.device
    idx = torch.randint(len(pairs["x0"]), (run.ode_batch,), generator=gen, device=device).cpu()
    xs, x0, feats = (pairs[k][idx].to(device) for k in ("xs", "x0", "feats"))  # xs [B, S, C, F, h, w]
    chunk = run.model.attention.chunk_frames
    chunks = run.latent_frames // chunk
    sigmas = torch.tensor(student_sigmas(run), device=device)
    level = torch.randint(len(sigmas), (run.ode_batch, chunks), generator=gen, device=device)  # [B, chunks]
    level_f = level.repeat_interleave(chunk, dim=1)  # [B, F]
    gather = level_f[:, None, None, :, None, None].expand(-1, 1, xs.shape[2], -1, *xs.shape[4:])
    noisy = torch.gather(xs, 1, gather).squeeze(1)  # [B, C, F, h, w]: frame f at its chunk's level
    pred = teacher_forcing_forward(student, run.model, x0, noisy, sigmas[level_f], student.embed_text(feats))
    return ode_regression_loss(pred, x0)


def judged_window(latents: torch.Tensor, run: StudentRun, gen: torch.Generator, first_chunk: int = 0,
                  anchored: bool = False) -> torch.Tensor:
    """A random chunk-aligned window of the teacher's clip length from a longer rollout,
    starting at `first_chunk` or later (Self-Forcing++-style: the teacher and critic only
    ever see clips of their length; after a switch, only what follows it). `anchored` (a
    teacher told each frame's place in its clip, `frame_time`): the window that starts at
    `first_chunk`, the only one whose places since the scene (or the switch) began it knows."""
    chunk, frames = run.model.attention.chunk_frames, latents.shape[2]
    if frames <= run.latent_frames:
        return latents
    if anchored:
        return latents[:, :, first_chunk * chunk : first_chunk * chunk + run.latent_frames]
    starts = (frames - run.latent_frames) // chunk + 1 - first_chunk
    start = (first_chunk + int(torch.randint(starts, (1,), generator=gen, device=gen.device))) * chunk
    return latents[:, :, start : start + run.latent_frames]


def draw_switch(run: StudentRun, chunks: int, gen: torch.Generator) -> int | None:
    """The chunk before which a rollout switches prompts (with probability switch_prob, when
    a judged window fits after it), or None."""
    latest = chunks - run.latent_frames // run.model.attention.chunk_frames
    if latest < 1 or float(torch.rand(1, generator=gen, device=gen.device)) >= run.switch_prob:
        return None
    return int(torch.randint(1, latest + 1, (1,), generator=gen, device=gen.device))


def student_rollout(run: StudentRun, t: StudentTraining, prompts: list[str], gen: torch.Generator,
                    shared: torch.Generator | None, caption_seed: tuple[int, int], grad: bool):
    """A self-forcing rollout for DMD, with a prompt switch part of the time, and the window
    of it that the teacher and critic judge.
    -> (window [B, C, F, h, w], the prompts that window was generated under, their features,
    the whole rollout if it began its scene, as DMD2's head's real clips do, else None: it switched)"""
    student = t.student
    feats = t.features(prompts)
    anchored = t.teacher.teacher_config.frame_time > 0
    switch_at = draw_switch(run, t.chunks, shared or gen)
    if switch_at is None:
        out = rollout(student, run.model, student.embed_text(feats), t.chunks, gen, grad=grad, structure=shared,
                      cache_dtype=t.cache_dtype)
        return judged_window(out.latents, run, gen, anchored=anchored), prompts, feats, out.latents
    after = t.draw_prompts(caption_seed[0], len(prompts), run.seed + 2 + caption_seed[1])
    after_feats = t.features(after)
    out = rollout(student, run.model, student.embed_text(feats), t.chunks, gen, grad=grad,
                  switch=(switch_at, student.embed_text(after_feats)), structure=shared, cache_dtype=t.cache_dtype)
    return judged_window(out.latents, run, gen, first_chunk=switch_at, anchored=anchored), after, after_feats, None


def real_and_fake_x0(run: StudentRun, teacher, critic, x_t: torch.Tensor, sigma: torch.Tensor,
                     feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 of the real score (teacher with guidance) and of the fake score (critic)."""
    t = sigma * 1000
    att = teacher.clip_attention(x_t.shape[2])  # the critic is the teacher's network: the same view
    g = teacher_guidance(run, teacher)
    cond, uncond = teacher.embed_text(feats), teacher.embed_text(torch.zeros_like(feats))
    v_c, v_u = teacher.denoise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]), att).chunk(2)
    s = sigma.view(-1, 1, 1, 1, 1)
    x0_real = x_t - s * (v_u + g * (v_c - v_u))
    x0_fake = x_t - s * critic.denoise(x_t, t, critic.embed_text(feats), att)
    return x0_real, x0_fake


def optimiser_step(loss: torch.Tensor, module: torch.nn.Module, opt: torch.optim.Optimizer, clip: float) -> None:
    """backward (a sharded module's gradients arrive reduce-scattered: each process holds its
    shard of the mean over processes), clip by the global norm, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()


def ode_step(run: StudentRun, t: StudentTraining, pairs: dict, step: int) -> dict[str, list[float]]:
    """ODE initialisation: regress onto teacher trajectories."""
    gen, _ = generators(run, t, step)
    with autocast(t.student, run.autocast):
        loss = ode_step_loss(run, t.student, pairs, gen)
    optimiser_step(loss, t.student, t.opt_ode, run.grad_clip)
    return {"loss/ode": [loss.item()]}


def dmd_step(run: StudentRun, t: StudentTraining, step: int) -> dict[str, list[float]]:
    """critic_ratio updates of the critic, then one DMD update of the generator."""
    gen, shared = generators(run, t, step)
    dev, losses = t.par.device, {"loss/critic": []}
    # Critic: flow matching on the student's own (detached) rollouts.
    for k in range(run.critic_ratio):
        prompts = t.draw_prompts(step * 31 + k, run.batch_size, run.seed)
        with torch.no_grad(), autocast(t.student, run.autocast):
            x, _, feats, scene = student_rollout(run, t, prompts, gen, shared, (step * 31 + k, 1), grad=False)
            x = x.float()
        noise = torch.randn(x.shape, generator=gen, device=dev)
        sigma = sample_sigmas(len(x), run.model.sampler.shift, gen)
        with autocast(t.critic, run.autocast):
            v = t.critic.denoise(add_noise(x, noise, sigma), sigma * 1000, t.critic.embed_text(feats),
                                 t.critic.clip_attention(x.shape[2]))
        loss_c = flow_matching_loss(v, x, noise)
        # The head judges rollouts that begin their scene, as its real clips do: after a switch the
        # objects carry on from where they were, which no real clip shows.
        if t.discriminator is not None and scene is not None:
            real, real_feats = real_head_clips(run, t, step * run.critic_ratio + k)
            fake, fake_feats = head_views(run, scene.float(), feats)
            logits_real, logits_fake = discriminate(run, t, torch.cat([real, fake]),
                                                    torch.cat([real_feats, fake_feats]), gen).chunk(2)
            loss_gan = gan_critic_loss(logits_real, logits_fake)
            loss_c = loss_c + run.gan_critic_weight * loss_gan
            losses.setdefault("loss/gan_critic", []).append(loss_gan.item())
            losses.setdefault("gan/real_judged_real", []).append((logits_real > 0).float().mean().item())
            losses.setdefault("gan/fake_judged_real", []).append((logits_fake > 0).float().mean().item())
        optimiser_step(loss_c, t.critic, t.opt_critic, run.grad_clip)
        losses["loss/critic"].append(loss_c.item())
    # Generator: DMD on a self-forcing rollout, gradient through each chunk's exit step.
    with autocast(t.student, run.autocast):
        x, prompts, feats, scene = student_rollout(run, t, t.draw_prompts(step, run.batch_size, run.seed), gen,
                                                   shared, (step, 0), grad=True)
        x = x.float()
    sigma = sample_sigmas(len(x), run.model.sampler.shift, gen, run.dmd_sigma_low, run.dmd_sigma_high)
    x_t = add_noise(x.detach(), torch.randn(x.shape, generator=gen, device=dev), sigma)
    with torch.no_grad(), autocast(t.teacher, run.autocast):
        x0_real, x0_fake = (x0.float() for x0 in real_and_fake_x0(run, t.teacher, t.critic, x_t, sigma, feats))
    weight = t.weighting(x, prompts) if t.weighting is not None else None
    loss = dmd = dmd_loss(x, x0_real, x0_fake, weight)
    if t.discriminator is not None and scene is not None:  # the critic and its head judge, unchanged by this step
        frozen = [p for p in (*t.critic.parameters(), *t.discriminator.parameters()) if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        loss_gan = gan_generator_loss(discriminate(run, t, *head_views(run, scene.float(), feats), gen))
        for p in frozen:
            p.requires_grad_(True)
        loss = dmd + run.gan_weight * loss_gan
        losses["loss/gan_generator"] = [loss_gan.item()]
    optimiser_step(loss, t.student, t.opt_gen, run.grad_clip)
    losses["loss/dmd"] = [dmd.item()]
    return losses


def discriminate(run: StudentRun, t: StudentTraining, x: torch.Tensor, feats: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """DMD2's head on the critic's tokens: clean clips x [B, C, F, h, w], noised to s ~
    U(0, gan_sigma_high) -> logits [B] (> 0: judged real). With `gan_frames`, only each clip's
    first gan_frames latent frames are judged."""
    if run.gan_frames:
        x = x[:, :, : run.gan_frames]
    sigma = run.gan_sigma_high * torch.rand(len(x), generator=gen, device=gen.device)
    x_t = add_noise(x, torch.randn(x.shape, generator=gen, device=gen.device), sigma)
    with autocast(t.critic, run.autocast):
        tokens = t.critic.features(x_t, sigma * 1000, t.critic.embed_text(feats),
                                   t.critic.clip_attention(x.shape[2]), gan_layers(run, t.critic))
    return t.discriminator(tokens)


def head_frames(run: StudentRun) -> int:
    """Latent frames DMD2's head judges at each place: gan_frames, or a window's (0)."""
    return run.gan_frames or run.latent_frames


def head_views(run: StudentRun, scene: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What DMD2's head judges of rollouts that begin their scene (scene [B, C, F, h, w]): their
    first gan_frames latent frames (0: a window's) and, with gan_later, as many from chunk
    gan_later on -> (clips [B * places, ...], their features)"""
    frames = head_frames(run)
    starts = [0, run.gan_later * run.model.attention.chunk_frames] if run.gan_later else [0]
    return torch.cat([scene[:, :, s : s + frames] for s in starts]), torch.cat([feats] * len(starts))


def real_head_clips(run: StudentRun, t: StudentTraining, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's real clips for a critic update, a batch from each place it judges (as
    `head_views` orders them) -> (clips [B * places, C, frames, h, w], their captions' features)"""
    frames = head_frames(run)
    batches = [pool.batch(key) for pool in t.real]
    clips = torch.cat([clips[:, :, :frames] for clips, _ in batches]).to(t.par.device)
    return clips, t.features([p for _, prompts in batches for p in prompts])


def gan_layers(run: StudentRun, critic: torch.nn.Module) -> int:
    return run.gan_layer or max(1, len(critic.blocks) // 2)


# --- building ------------------------------------------------------------------------------------

def frozen_dtype(config: ModelConfig, par: Parallel) -> torch.dtype:
    """The dtype of the frozen helpers (umT5, the Wan VAE for rewards): the model's on a GPU
    (umt5-xxl: 11 GB in bfloat16, 23 in float32), float32 on a CPU (a rehearsal)."""
    from engine.model import model_dtype

    return model_dtype(config, par.device) if par.device.type == "cuda" else torch.float32


def build_training(run: StudentRun, par: Parallel) -> StudentTraining:
    """Teacher (frozen), the critic initialised from it, the student initialised from it (or
    from init_from) and its EMA: built on the CPU one at a time and each placed (sharded)
    before the next, so a process never holds more than two whole networks."""
    from engine.components import build_text_encoder

    teacher_dir = Path(run.teacher)
    teacher_cfg = ModelConfig.load(teacher_dir / "model.json")
    check_fits_teacher(run.model, teacher_cfg, run)
    if run.method not in ("dmd", "re_dmd", "stream_r1"):
        raise ValueError(f"unknown method {run.method!r}: dmd, re_dmd or stream_r1")

    teacher = build_transformer(teacher_cfg).requires_grad_(False).eval()
    load_transformer_weights(teacher, teacher_dir / "transformer.safetensors")  # checks every key and shape
    teacher_weights = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    teacher = place_transformer(teacher, teacher_cfg, par, bf16=run.autocast)
    teacher.teacher_config = teacher_cfg

    critic = build_transformer(teacher_cfg).train()
    critic.load_state_dict(teacher_weights)
    critic = place_transformer(critic, teacher_cfg, par, bf16=run.autocast, checkpointing=run.activation_checkpointing)

    student = build_transformer(run.model).train()
    if run.init_from:
        init = build_transformer(ModelConfig.load(Path(run.init_from) / "model.json"))
        load_transformer_weights(init, Path(run.init_from) / "transformer.safetensors")
        student.load_state_dict(init.state_dict(), strict=False)  # linear readouts stay zero if absent
        del init
    else:
        student.load_state_dict(teacher_weights, strict=False)  # same network; linear readouts stay zero
    del teacher_weights
    ema = EMA(student, run.ema_decay)
    place_transformer(ema.shadow, run.model, par)
    student = place_transformer(student, run.model, par, bf16=run.autocast, checkpointing=run.activation_checkpointing)

    # Optimisers after placing: sharding replaces the parameters.
    opt_ode = torch.optim.AdamW(student.parameters(), lr=run.ode_lr, weight_decay=0.0)
    opt_gen = torch.optim.AdamW(student.parameters(), lr=run.lr_generator, weight_decay=0.0, betas=(0.0, 0.999))
    discriminator = None
    if run.gan_weight > 0:
        if (refused := gan_refusal(run, par.world_size)) is not None:
            raise ValueError(refused)
        discriminator = DiscriminatorHead(teacher_cfg.transformer.inner_dim).to(par.device)
    head = list(discriminator.parameters()) if discriminator is not None else []
    opt_critic = torch.optim.AdamW([*critic.parameters(), *head], lr=run.lr_critic, weight_decay=0.0,
                                   betas=(0.0, 0.999))
    weighting = RewardWeighting(run, run.teacher, teacher_cfg, par) if run.method != "dmd" else None
    te = run.model.text_encoder
    # Features are kept per prompt, 4 GiB of them at most (Wan's 512 x 4096 floats are 8 MB a prompt).
    captions = CaptionCache(build_text_encoder(run.model, None, str(par.device), frozen_dtype(run.model, par)),
                            size=min(50_000, max(64, (4 << 30) // (te.max_tokens * te.dim * 4))))
    return StudentTraining(par=par, teacher=teacher, student=student, critic=critic, ema=ema, opt_ode=opt_ode,
                           opt_gen=opt_gen, opt_critic=opt_critic, prompts=prompt_source(run.prompts, par.world_size),
                           captions=captions, weighting=weighting,
                           chunks=max(run.rollout_frames, run.latent_frames) // run.model.attention.chunk_frames,
                           cache_dtype=torch.bfloat16 if par.sharded and run.autocast and native_bf16(par.device.type) else None,
                           discriminator=discriminator)


def gan_refusal(run: StudentRun, world_size: int) -> str | None:
    """Why the adversarial term cannot run as asked, or None (the command line checks it
    before any work; build_training for callers of the library)."""
    if run.gan_weight <= 0:
        return None
    if run.prompts is not None:
        return "gan_weight needs real clips with captions, the Shapes world's: drop --prompts or set gan_weight=0"
    if world_size > 1:
        return "gan_weight (DMD2's adversarial term) runs in one process for now, not under torchrun"
    if not 0 <= run.gan_frames <= run.latent_frames:
        return f"gan_frames {run.gan_frames}: the head judges 0 (all) to latent_frames ({run.latent_frames}) frames"
    chunk = run.model.attention.chunk_frames
    frames, rolled = head_frames(run), max(run.rollout_frames, run.latent_frames) // chunk * chunk
    if run.gan_later < 0 or run.gan_later * chunk + frames > rolled:
        return (f"gan_later {run.gan_later}: the head's {frames} frames from chunk {run.gan_later} on must lie "
                f"in the rollout's {rolled} (rollout_frames), from chunk 1 on (0: off)")
    return None


def real_clips(run: StudentRun, run_dir: Path, progress: bool, later: int = 0) -> ClipLatents:
    """The Shapes world's clips of the teacher's length, drawn as the teacher's were (its
    layout, window start, seed and clips per draw) and encoded once by the teacher's
    autoencoder into the run dir: the clips the teacher's own run drew for its pool, under the
    same file name when the sizes agree, so that file can be linked in from the teacher's run
    dir instead of encoded again. The run's seed draws the batches from it. `later` latent
    frames on: the same scenes' clips that start so much later (another pool, drawn by seed + 1)."""
    from .common import ShapesLatents
    from .teacher import clip_batch_of, load_autoencoder

    lat = run.model.latent
    taught = ModelConfig.load(Path(run.teacher) / "model.json").provenance.get("run", {})
    shift = later * lat.temporal_compression  # video frames: a latent frame encodes its own
    return ShapesLatents(load_autoencoder(run.teacher), run.latent_frames, run.batch_size, run.seed + (later > 0),
                         lat.height, lat.width, int(lat.fps), min_start_frame=shift,
                         max_start_frame=int(taught.get("max_start_frame", 480)) + shift,
                         pool_size=run.gan_pool, cache_dir=run_dir, progress=progress,
                         layout=str(taught.get("layout", "random")), orbit=str(taught.get("orbit", "either")),
                         pool_seed=int(taught.get("seed", run.seed)),
                         pool_batch=clip_batch_of(int(taught.get("batch_size", 0))))


# --- the run ----------------------------------------------------------------------------------

def train_student(run: StudentRun, run_dir: Path, out_dir: Path | None = None, threads: int = 0,
                  progress: bool = True) -> TrainResult:
    """Train (or resume) the student; rank 0 writes the EMA weights as a model dir (default run_dir/model)."""
    if threads:
        torch.set_num_threads(threads)
    served_model(run)  # a serving override that cannot be exported fails before any work
    par = init_parallel(run.shard_size, run.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if par.rank == 0:
        (run_dir / "run.json").write_text(json.dumps(run_to_json(run), indent=2) + "\n")

    # --- build ----------------------------------------------------------------------------------
    t = build_training(run, par)
    ckpt = DistCheckpointer(run_dir, par)
    metrics = MetricsLog(run_dir, enabled=par.rank == 0)

    # --- resume ---------------------------------------------------------------------------------
    step = 0
    modules = {"student": t.student, "ema": t.ema.shadow, "critic": t.critic}
    if t.discriminator is not None:
        modules["discriminator"] = t.discriminator
        t.real = [real_clips(run, run_dir, progress)]
        if run.gan_later:
            t.real.append(real_clips(run, run_dir, progress, later=run.gan_later * run.model.attention.chunk_frames))
    optimizers = {"ode": t.opt_ode, "gen": t.opt_gen, "critic": t.opt_critic}
    if (latest := ckpt.latest()) is not None:
        # a run that takes up the adversarial term from a checkpoint made without it (the ODE
        # stage's, or a run with it off) starts the head afresh, as a run with it from the start has it
        step, extra = ckpt.load(latest, modules, optimizers, optional=("discriminator",))
        if t.weighting is not None and "balancer" in extra:
            t.weighting.balancer.load_state_dict(extra["balancer"])
        if par.rank == 0:
            print(f"resumed from {latest} at step {step}", file=sys.stderr)
    pairs = make_ode_pairs(run, t, run_dir / f"ode_pairs_rank{par.rank}.safetensors", progress) \
        if step < run.ode_iters else None

    # --- loop: an ODE or a DMD step, EMA, log, checkpoint -----------------------------------------
    total = run.ode_iters + run.dmd_iters
    bar = tqdm(total=total, initial=step, desc="student", unit="step", dynamic_ncols=True,
               disable=par.rank != 0 or not progress)
    start, logs, all_losses = time.time(), {}, []
    while step < total:
        if step >= run.ode_iters and t.opt_ode.state:  # ODE stage over: free its optimiser states (2 floats a weight)
            t.opt_ode.state.clear()
        values = ode_step(run, t, pairs, step) if step < run.ode_iters else dmd_step(run, t, step)
        for key, value in values.items():
            logs.setdefault(key, []).extend(value)
        all_losses.append(values["loss/ode" if step < run.ode_iters else "loss/dmd"][0])
        t.ema.update(t.student, step)
        step += 1
        bar.update(1)

        if step % run.log_every == 0 or step == total:
            means = mean_over_processes({k: sum(v) / len(v) for k, v in logs.items()}, par)
            metrics.log(step, means)
            bar.set_postfix({k.split("/")[1]: f"{v:.4f}" for k, v in means.items()})
            logs = {}
        if step % run.ckpt_every == 0 or step == total:
            ckpt.save(step, modules, optimizers,
                      {"balancer": t.weighting.balancer.state_dict()} if t.weighting is not None else None)
    bar.close()

    # --- export: the EMA weights, gathered onto rank 0 --------------------------------------------
    if par.sharded:  # every process must hold the same weights (gathered, they must agree)
        metrics.log(step, {"ranks_in_sync": float(same_everywhere(weights_digest(t.student, par), par))})
    ema_weights = full_state_dict(t.ema.shadow, par)  # a collective: every process takes part
    if par.rank != 0:
        return TrainResult(None, step, time.time() - start, all_losses)
    metrics.close()
    out_dir = out_dir or run_dir / "model"
    exported = t.ema.shadow
    if par.sharded:
        exported = build_transformer(run.model)
        exported.load_state_dict(ema_weights)
    export_model(dataclasses.replace(run, model=served_model(run)), run.teacher, exported, out_dir,
                 seconds=time.time() - start, stage="student",
                 data=f"prompts from {run.prompts}" if run.prompts else None)
    return TrainResult(out_dir, step, time.time() - start, all_losses)
