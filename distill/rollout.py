"""Self-forcing rollouts: the student generates chunk by chunk with its own KV cache,
exactly as it will at inference (train as you infer), and the teacher-forcing layout
for ODE regression.

A rollout of B streams uses rows 0..B-1 of one cache, advancing in lockstep. Each chunk
runs its denoising steps without gradient up to a random exit step, whose x0 prediction
carries the gradient (Self-Forcing, Alg. 1); the t=0 refresh of the (detached) clean
chunk then writes the cache for the next chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention import block_causal_mask
from engine.config import ModelConfig
from engine.sampler import FewStepSampler, steps_for_chunk
from engine.transformer import CausalWanTransformer, make_cache


@dataclass
class Rollout:
    latents: torch.Tensor  # [B, C, F, h, w] clean latents; gradient through each chunk's exit step
    exit_steps: list[int]  # per chunk
    steps: list[int]  # denoising steps per chunk
    context_latents: list[torch.Tensor]  # what each chunk's refresh wrote (detached), for diagonal training


def rollout(student: CausalWanTransformer, config: ModelConfig, context: torch.Tensor, chunks: int,
            generator: torch.Generator, grad: bool = True, exit_steps: list[int] | None = None) -> Rollout:
    """context [B, L, D] projected text; returns `chunks` chunks of clean latents."""
    att, lat, samp = config.attention, config.latent, config.sampler
    b = context.shape[0]
    cache = make_cache(student, config, rows=b)
    rows = list(range(b))
    out, exits, steps_used, written = [], [], [], []
    for j in range(chunks):
        shape = (b, lat.channels, att.chunk_frames, lat.latent_height, lat.latent_width)
        x = torch.randn(shape, generator=generator)
        sampler = FewStepSampler(samp)
        steps = steps_for_chunk(samp, j)
        sampler.set_timesteps(steps)
        exit_step = exit_steps[j] if exit_steps else int(torch.randint(steps, (1,), generator=generator))
        for i in range(exit_step + 1):
            t = sampler.timesteps[i].expand(b)
            with torch.set_grad_enabled(grad and i == exit_step):
                v = student.denoise(x, t, context, student.cached_attention(cache, rows, att.chunk_frames))
                if i == exit_step:
                    x0 = x - sampler.sigmas[i] * v  # x0 = x_t - s v
                    break
                x, _ = sampler.step(v, x, generator)
        # What the cache will hold for this chunk: the clean x0 at t=0, or (refresh skipped,
        # as in diagonal distillation) what inference commits: the last step's input, i.e.
        # x0 re-noised to the last noise level, at that level's timestep.
        with torch.no_grad():
            if samp.refresh_context:
                ctx_latents, ctx_t = x0.detach(), torch.zeros(b)
            else:
                s_last = sampler.sigmas[-1]
                noise = torch.randn(x0.shape, generator=generator)
                ctx_latents = (1 - s_last) * x0.detach() + s_last * noise
                ctx_t = sampler.timesteps[-1].expand(b)
            student.denoise(ctx_latents, ctx_t, context, student.cached_attention(cache, rows, att.chunk_frames))
            for r in rows:
                cache.commit(r)
        out.append(x0)
        exits.append(exit_step)
        steps_used.append(steps)
        written.append(ctx_latents)
    return Rollout(torch.cat(out, dim=2), exits, steps_used, written)


def teacher_forcing_mask(frames: int, chunk: int, tokens_per_frame: int, device="cpu") -> torch.Tensor:
    """[1, 1, 2N, 2N] mask over [clean frames | noisy frames] (True = may attend): clean
    frames attend block-causally among themselves; the noisy chunk j attends the clean
    chunks before it and itself. One forward then trains every chunk at once with the
    clean context inference will give it (CausVid's teacher forcing)."""
    n = frames * tokens_per_frame
    causal = block_causal_mask(frames, chunk, tokens_per_frame, device=device)[0, 0]  # [N, N]
    chunk_of = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame) // chunk
    same_chunk = chunk_of[:, None] == chunk_of[None, :]
    earlier = chunk_of[None, :] < chunk_of[:, None]
    mask = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=device)
    mask[:n, :n] = causal
    mask[n:, :n] = earlier
    mask[n:, n:] = same_chunk
    return mask[None, None]


def teacher_forcing_forward(student: CausalWanTransformer, config: ModelConfig, clean: torch.Tensor,
                            noisy: torch.Tensor, sigma_per_frame: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """x0 predictions [B, C, F, h, w] for every noisy chunk given clean earlier chunks.
    clean, noisy [B, C, F, h, w]; sigma_per_frame [B, F]."""
    b, _, f = clean.shape[:3]
    mask = teacher_forcing_mask(f, config.attention.chunk_frames, config.tokens_per_frame)
    positions = torch.arange(f).repeat(2)
    attention = student.full_attention(2 * f, mask, positions)
    timestep = torch.cat([torch.zeros(b, f), sigma_per_frame * 1000], dim=1)
    v = student.denoise(torch.cat([clean, noisy], dim=2), timestep, context, attention)[:, :, f:]
    return noisy - sigma_per_frame[:, None, :, None, None] * v
