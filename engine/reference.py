"""Generation without a KV cache: every denoising step re-runs the transformer over the
whole visible context (clean earlier frames at t=0, the noisy chunk at t) under the
block-causal mask. It is the reference that cached streaming must equal, and the
baseline its speed is measured against (bench/engine_stream.py). It draws noise in the
same order as StreamSession, so equal seeds give equal latents."""

from __future__ import annotations

from typing import Callable

import torch

from .attention import AttentionMode, block_causal_mask
from .model import StreamModel
from .sampler import FewStepSampler, steps_for_chunk


@torch.no_grad()
def recompute_chunk(model: StreamModel, history: torch.Tensor | None, context: torch.Tensor,
                    chunk_index: int, generator: torch.Generator,
                    attention_for: Callable[[int], AttentionMode] | None = None) -> torch.Tensor:
    """Denoise one chunk given the clean latents of everything before it.

    history: [1, C, F_past, h, w] or None; returns the chunk's clean latents [1, C, F, h, w].
    attention_for(frames) may replace the block-causal mask (tests pass explicit ones)."""
    cfg = model.config
    att, lat = cfg.attention, cfg.latent
    shape = (1, lat.channels, att.chunk_frames, lat.latent_height, lat.latent_width)
    x = torch.randn(shape, generator=generator, device=model.device).to(model.dtype)
    past = 0 if history is None else history.shape[2]
    frames = past + att.chunk_frames
    if attention_for is not None:
        attention = attention_for(frames)
    else:
        window = None if att.window_frames >= frames else att.window_frames
        mask = block_causal_mask(frames, att.chunk_frames, cfg.tokens_per_frame, att.sink_frames, window,
                                 device=model.device)
        attention = model.transformer.full_attention(frames, mask)
    sampler = FewStepSampler(cfg.sampler)
    sampler.set_timesteps(steps_for_chunk(cfg.sampler, chunk_index))
    while True:
        t = sampler.timesteps[sampler.step_index]
        seq = x if history is None else torch.cat([history, x], dim=2)
        timestep = torch.zeros(1, frames, device=model.device)
        timestep[:, past:] = t
        v = model.transformer.denoise(seq, timestep, context, attention)[:, :, past:]
        last = sampler.is_last
        x, x0 = sampler.step(v, x, generator)
        if last:
            return x0


def generate_recompute(model: StreamModel, prompt: str, seed: int, chunks: int,
                       attention_for: Callable[[int], AttentionMode] | None = None) -> torch.Tensor:
    """Clean latents [1, C, chunks * F, h, w] of a stream generated without a cache."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    context = model.context_for(prompt)
    history = None
    for j in range(chunks):
        x0 = recompute_chunk(model, history, context, j, generator, attention_for)
        history = x0 if history is None else torch.cat([history, x0], dim=2)
    return history
