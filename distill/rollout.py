"""Self-forcing rollouts: the student generates chunk by chunk with its own KV cache,
exactly as it will at inference (train as you infer), and the teacher-forcing layout
for ODE regression.

A rollout of B streams uses rows 0..B-1 of one cache, advancing in lockstep. Each chunk
runs its denoising steps without gradient up to a random exit step, whose x0 prediction
carries the gradient (Self-Forcing, Alg. 1); the t=0 refresh of the (detached) clean
chunk, or without a refresh the exit step's own forward, writes the cache for the next
chunk, exactly as a stream does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention import block_causal_mask
from engine.cache import KVCache
from engine.config import ModelConfig
from engine.sampler import steps_for_chunk
from engine.step import KeptFrames, Stepper, chunk_steps
from engine.transformer import CausalWanTransformer


@dataclass
class Rollout:
    latents: torch.Tensor  # [B, C, F, h, w] clean latents; gradient through each chunk's exit step
    exit_steps: list[int]  # per chunk
    steps: list[int]  # denoising steps per chunk
    context_latents: list[torch.Tensor]  # what each chunk's K/V were computed from (detached)
    context_timesteps: list[float]  # ... and at which timestep (0: the clean refresh)
    cache: KVCache  # the rows' cache after the last chunk


def rollout(student: CausalWanTransformer, config: ModelConfig, context: torch.Tensor, chunks: int,
            generator: torch.Generator, grad: bool = True, exit_steps: list[int] | None = None,
            switch: tuple[int, torch.Tensor] | None = None, structure: torch.Generator | None = None,
            cache_dtype: torch.dtype | None = None) -> Rollout:
    """context [B, L, D] projected text; returns `chunks` chunks of clean latents. The chunk
    loop, the step and the re-cache are the engine's own (engine/step.py): what the cache
    holds after a rollout is what a stream's cache would hold for the same noise.

    switch (chunk index, new context [B, L, D]): the prompt changes before that chunk, as a
    viewer's switch does (LongLive): the kept frames are re-cached under the new context and
    the chunks from there on follow it.

    structure: the generator of the exit steps (default: `generator`, which draws the noise).
    A sharded student needs every process to make the same forwards, so under torchrun it
    is one that all processes share, while each draws its own noise. cache_dtype: the KV
    cache's (default: the student's parameters')."""
    att, lat, samp = config.attention, config.latent, config.sampler
    b, device = context.shape[0], context.device
    cache = KVCache.for_model(config, student.rope_tables, b, student.device, cache_dtype or student.dtype)
    stepper = Stepper(student, type(cache.policy), att.backend)
    kept = KeptFrames(att.sink_frames, att.window_frames)
    rows = list(range(b))
    out, exits, steps_used, written, written_t = [], [], [], [], []
    for j in range(chunks):
        if switch is not None and j == switch[0]:
            context = switch[1]
            with torch.no_grad():
                for r in rows:
                    cache.restart_window(r)
                for request in kept.recache(cache.policy, att.chunk_frames):
                    stepper(cache, rows, request.latents, torch.full((b,), request.timestep, device=device), context,
                            [True] * b)
        shape = (b, lat.channels, att.chunk_frames, lat.latent_height, lat.latent_width)
        noise = torch.randn(shape, generator=generator, device=generator.device)
        steps = steps_for_chunk(samp, j)
        draws = structure or generator
        exit_step = exit_steps[j] if exit_steps else int(torch.randint(steps, (1,), generator=draws,
                                                                       device=draws.device))
        loop = chunk_steps(samp, j, noise, generator, exit_step)
        request = next(loop)
        while True:
            with torch.set_grad_enabled(grad and request.grad):
                v = stepper(cache, rows, request.latents, torch.full((b,), request.timestep, device=device), context,
                            [request.commit] * b)
            try:
                request = loop.send(v)
            except StopIteration as done:
                x0, committed = done.value
                break
        kept.keep(committed)
        out.append(x0)
        exits.append(exit_step)
        steps_used.append(steps)
        written.append(committed.latents.detach())
        written_t.append(committed.timestep)
    return Rollout(torch.cat(out, dim=2), exits, steps_used, written, written_t, cache)


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
                            noisy: torch.Tensor, sigma_per_frame: torch.Tensor, context: torch.Tensor,
                            context_timestep: float = 0.0) -> torch.Tensor:
    """x0 predictions [B, C, F, h, w] for every noisy chunk given clean earlier chunks.
    clean, noisy [B, C, F, h, w]; sigma_per_frame [B, F]. `context_timestep`: the timestep the
    earlier chunks are given at (0: clean; a caller that noises them to a cache's level says so)."""
    b, _, f = clean.shape[:3]
    mask = teacher_forcing_mask(f, config.attention.chunk_frames, config.tokens_per_frame, device=clean.device)
    positions = torch.arange(f, device=clean.device).repeat(2)
    attention = student.full_attention(2 * f, mask, positions)
    timestep = torch.cat([torch.full((b, f), float(context_timestep), device=clean.device), sigma_per_frame * 1000],
                         dim=1)
    v = student.denoise(torch.cat([clean, noisy], dim=2), timestep, context, attention)[:, :, f:]
    return noisy - sigma_per_frame[:, None, :, None, None] * v
