"""One denoising step of one chunk as a pure function of tensors: the form every
compiled backend (torch.compile, ONNX Runtime, TensorRT) runs.

`CachedAttention` (engine/transformer.py) is the eager reference: it writes the chunk's
K/V into the cache buffer in place and reads a prefix whose length depends on each
row's fill. A compiled graph can do neither, so here the cache is an *input* and the
chunk's new K/V are *outputs*:

    inputs   latents   [B, C, F, h, w]       F = chunk_frames (static)
             timestep  [B]                   model units 0..1000
             context   [B, L, D]             projected text context (embed_text)
             cache_k   [layers, B, S, H, Dh] the rows' whole buffers, S = slots (static)
             cache_v   [layers, B, S, H, Dh]
             key_cos   [B, S, 1, Dh/2]       RoPE of every slot's frame position
             key_sin   [B, S, 1, Dh/2]
             key_mask  [B, S] bool           slot holds data (False: empty sink/ring slots)
            (state_kv  [layers, B, H, Dh, Dh], state_k [layers, B, H, Dh]: linear_state only)
    outputs  flow      [B, C, F, h, w]
             new_k     [layers, B, N, H, Dh]  N = F * tokens_per_frame, pre-RoPE
             new_v     [layers, B, N, H, Dh]

Every shape is fixed by the model config and the batch size; fills, ring heads and
positions are data (the mask and the cos/sin tables), never shapes, so one graph serves
a stream from its first chunk to its millionth. The caller writes new_k/new_v into the
cache's current-chunk slot and commits with the cache's own host-side bookkeeping
(KVCache.commit), exactly as the eager path does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..attention import AttentionMode, apply_rope, attend, linear_features
from ..cache import KVCache
from ..config import ModelConfig
from ..transformer import CausalWanTransformer

STEP_INPUTS = ("latents", "timestep", "context", "cache_k", "cache_v", "key_cos", "key_sin", "key_mask")
STATE_INPUTS = ("state_kv", "state_k")
STEP_OUTPUTS = ("flow", "new_k", "new_v")


@dataclass
class SlotAttention(AttentionMode):
    """Attention of the current chunk over the whole fixed-size cache buffer: the chunk's
    own K/V take the current-chunk slot (the first `chunk_tokens` slots, which the cache
    keeps for it), every other slot comes from the cache input, and `key_mask` hides the
    empty ones. Collects each layer's new K/V for the caller to store."""

    cache_k: torch.Tensor  # [layers, B, S, H, Dh]
    cache_v: torch.Tensor
    key_cos: torch.Tensor  # [B, S, 1, Dh/2]
    key_sin: torch.Tensor
    key_mask: torch.Tensor | None  # [B, S] bool; None: every slot holds data
    state_kv: torch.Tensor | None = None  # [layers, B, H, Dh, Dh]
    state_k: torch.Tensor | None = None  # [layers, B, H, Dh]
    backend: str = "native"
    new_k: list[torch.Tensor] = field(default_factory=list)
    new_v: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, layer, q, k, v):  # [B, N, H, Dh] each -> [B, N, H, Dh]
        n = q.shape[1]
        self.new_k.append(k)
        self.new_v.append(v)
        keys = torch.cat([k, self.cache_k[layer, :, n:].to(k.dtype)], dim=1)  # [B, S, H, Dh]
        values = torch.cat([v, self.cache_v[layer, :, n:].to(v.dtype)], dim=1)
        q = apply_rope(q, self.key_cos[:, :n], self.key_sin[:, :n])  # queries sit at the first N slots
        keys = apply_rope(keys, self.key_cos, self.key_sin)
        # A 2D [B, S] mask: diffusers turns it into the right form for each backend (an
        # additive mask for xformers, where a 4D boolean one would be cast to 0/1).
        return attend(q, keys.to(q.dtype), values.to(q.dtype), self.key_mask, self.backend)

    def linear_readout(self, layer, q):  # [B, N, H, Dh] -> [B, N, H, Dh] or None
        if self.state_kv is None:
            return None
        phi = linear_features(q)  # [B, N, H, Dh]
        num = torch.einsum("bnhd,bhde->bnhe", phi, self.state_kv[layer])
        den = torch.einsum("bnhd,bhd->bnh", phi, self.state_k[layer]).unsqueeze(-1)
        return num / (den + 1e-6)


class CachedStep(nn.Module):
    """The step function above as a module, so it traces, compiles and exports whole."""

    def __init__(self, transformer: CausalWanTransformer, attention_backend: str = "native"):
        super().__init__()
        self.transformer = transformer
        self.attention_backend = attention_backend

    def forward(self, latents, timestep, context, cache_k, cache_v, key_cos, key_sin, key_mask,
                state_kv=None, state_k=None):
        mode = SlotAttention(cache_k, cache_v, key_cos, key_sin, key_mask, state_kv, state_k,
                             self.attention_backend)
        flow = self.transformer.denoise(latents, timestep, context, mode)  # [B, C, F, h, w]
        return flow, torch.stack(mode.new_k), torch.stack(mode.new_v)  # new_*: [layers, B, N, H, Dh]


# --- host side: cache -> inputs, outputs -> cache ------------------------------------------

def rows_index(rows: list[int], device: torch.device) -> slice | torch.Tensor:
    """A slice when the rows are contiguous (a view, no gather), else an index tensor."""
    r0 = rows[0]
    if rows == list(range(r0, r0 + len(rows))):
        return slice(r0, r0 + len(rows))
    return torch.tensor(rows, device=device)


def key_positions(cache: KVCache, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's frame position per slot frame, and whether the slot holds data.
    -> positions [B, slot_frames] long, valid [B, slot_frames] bool.

    With a full current chunk the valid prefix starts at slot 0 (KVCache.valid_range), so
    the cache's own `frame_positions` (current | sink | ring) line up with slot frames."""
    slot_frames = cache.chunk_frames + cache.sink_frames + cache.window_frames
    device = cache.rope.t_cos.device
    positions = torch.zeros(len(rows), slot_frames, dtype=torch.long, device=device)
    valid = torch.zeros(len(rows), slot_frames, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        pos = cache.frame_positions(row)
        positions[i, : len(pos)] = pos
        valid[i, : len(pos)] = True
    return positions, valid


def step_inputs(cache: KVCache, rows: list[int], latents: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor, drop_full_mask: bool = False) -> dict[str, torch.Tensor | None]:
    """The named inputs of one step for `rows` of `cache`, whose current chunk must span
    the full chunk_frames (the static shape). drop_full_mask: key_mask None when every
    slot holds data (known from host-side ints, no sync): torch runners then take the
    unmasked (flash) attention kernel in the steady state; graphs always get the mask."""
    frames = latents.shape[2]
    if frames != cache.chunk_frames:
        raise ValueError(f"a static step takes full chunks of {cache.chunk_frames} frames, not {frames}")
    for row in rows:
        if cache.current_frames[row] != frames:
            cache.begin_chunk(row, frames)
    index = rows_index(rows, cache.k.device)
    positions, valid = key_positions(cache, rows)
    key_cos, key_sin = cache.rope.for_frames(positions)  # [B, S, 1, Dh/2]
    inputs = {
        "latents": latents,
        "timestep": timestep.float(),
        "context": context,
        "cache_k": cache.k[:, index],
        "cache_v": cache.v[:, index],
        "key_cos": key_cos,
        "key_sin": key_sin,
        "key_mask": valid.repeat_interleave(cache.tpf, dim=1),  # [B, S]
    }
    if drop_full_mask and all(len(cache.frame_positions(r)) == valid.shape[1] for r in rows):
        inputs["key_mask"] = None
    if cache.policy == "linear_state":
        inputs["state_kv"], inputs["state_k"] = cache.state_kv[:, index], cache.state_k[:, index]
    return inputs


def store_new_kv(cache: KVCache, rows: list[int], new_k: torch.Tensor, new_v: torch.Tensor) -> None:
    """Write the chunk's K/V ([layers, B, N, H, Dh]) into the rows' current-chunk slot."""
    n = new_k.shape[2]
    index = rows_index(rows, cache.k.device)
    if isinstance(index, slice):
        cache.k[:, index, :n].copy_(new_k)
        cache.v[:, index, :n].copy_(new_v)
    else:
        cache.k[:, index, :n] = new_k.to(cache.k.dtype)
        cache.v[:, index, :n] = new_v.to(cache.v.dtype)


def example_inputs(config: ModelConfig, batch: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes and dtypes (random values, a partly filled cache) for
    tracing, exporting and building engines."""
    t, att, lat = config.transformer, config.attention, config.latent
    tpf = config.tokens_per_frame
    slots = (att.chunk_frames + att.sink_frames + att.window_frames) * tpf
    heads, dh, layers = t.num_attention_heads, t.attention_head_dim, t.num_layers
    # Drawn on the device in the model's dtype: a 1.3B model's cache for two rows is
    # 17 GB in float32 on the host, and slow to draw there.
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, dtype=dtype):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    mask = torch.ones(batch, slots, dtype=torch.bool, device=device)
    mask[:, slots // 2:] = False  # a realistic partly filled cache, not a constant-foldable one
    inputs = {
        "latents": randn(batch, lat.channels, att.chunk_frames, lat.latent_height, lat.latent_width),
        "timestep": torch.full((batch,), 500.0, device=device),
        "context": randn(batch, config.text_encoder.max_tokens, t.inner_dim),
        "cache_k": randn(layers, batch, slots, heads, dh),
        "cache_v": randn(layers, batch, slots, heads, dh),
        "key_cos": torch.ones(batch, slots, 1, dh // 2, device=device),
        "key_sin": torch.zeros(batch, slots, 1, dh // 2, device=device),
        "key_mask": mask,
    }
    if att.policy == "linear_state":
        inputs["state_kv"] = randn(layers, batch, heads, dh, dh, dtype=torch.float32).abs()
        inputs["state_k"] = randn(layers, batch, heads, dh, dtype=torch.float32).abs()
    return inputs
