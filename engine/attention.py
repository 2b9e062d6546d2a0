"""Self-attention for the shared transformer: rotary positions in real arithmetic, and
the ways a chunk may attend: bidirectional or an explicit mask here, the KV cache in
engine/step.py.

diffusers' `WanTransformerBlock` calls `attn1(x, None, None, rotary_emb)`; we install
`SelfAttnProcessor` on every `attn1` and pass an attention *mode* object through that
`rotary_emb` slot. The mode owns positions and the cache, so causality is a processor
plus a cache, never a second network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn


# --- rotary embedding (Wan's 3D RoPE: [t | h | w] slices of each head) -----------

class RopeTables:
    """float32 cos/sin half-tables (one value per rotated pair), split as Wan splits the
    head: t_dim for time, h_dim and w_dim for space. Built once per model; no complex
    numbers or float64, so the graph exports to ONNX/TensorRT."""

    def __init__(self, attention_head_dim: int, grid_h: int, grid_w: int, max_frames: int,
                 theta: float = 10000.0, device: torch.device | str = "cpu"):
        h_dim = w_dim = 2 * (attention_head_dim // 6)
        t_dim = attention_head_dim - h_dim - w_dim
        self.grid_h, self.grid_w = grid_h, grid_w

        def half_table(dim: int, length: int) -> torch.Tensor:  # [length, dim/2] angles
            inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim)
            return torch.outer(torch.arange(length, dtype=torch.float64), inv)

        t_ang = half_table(t_dim, max_frames)
        h_ang = half_table(h_dim, grid_h)[:, None, :].expand(grid_h, grid_w, -1)
        w_ang = half_table(w_dim, grid_w)[None, :, :].expand(grid_h, grid_w, -1)
        spatial = torch.cat([h_ang, w_ang], dim=-1).reshape(grid_h * grid_w, -1)
        self.t_cos = t_ang.cos().float().to(device)  # [max_frames, t_dim/2]
        self.t_sin = t_ang.sin().float().to(device)
        self.s_cos = spatial.cos().float().to(device)  # [HW, (h_dim + w_dim)/2]
        self.s_sin = spatial.sin().float().to(device)
        self.max_frames = max_frames

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_h * self.grid_w

    def for_frames(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [..., F] integer frame positions -> cos, sin [..., F*HW, 1, Dh/2]."""
        hw = self.tokens_per_frame
        tc, ts = self.t_cos[positions], self.t_sin[positions]  # [..., F, t/2]
        lead = positions.shape
        tc = tc.unsqueeze(-2).expand(*lead, hw, tc.shape[-1])
        ts = ts.unsqueeze(-2).expand(*lead, hw, ts.shape[-1])
        sc = self.s_cos.expand(*lead, hw, self.s_cos.shape[-1])
        ss = self.s_sin.expand(*lead, hw, self.s_sin.shape[-1])
        cos = torch.cat([tc, sc], dim=-1).flatten(-3, -2).unsqueeze(-2)
        sin = torch.cat([ts, ss], dim=-1).flatten(-3, -2).unsqueeze(-2)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) as diffusers' Wan processor does.
    x: [B, N, H, Dh]; cos, sin: [B or 1, N, 1, Dh/2] -> [B, N, H, Dh]."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # [B, N, H, Dh/2] each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           backend: str) -> torch.Tensor:
    """[B, Nq, H, Dh] x [B, Nk, H, Dh] -> [B, Nq, H, Dh] through diffusers' backend dispatch."""
    return dispatch_attention_fn(q, k, v, attn_mask=mask, backend=None if backend == "native" else backend)


# --- attention modes -------------------------------------------------------------

class AttentionMode:
    """What one forward's self-attention does. `__call__` gets pre-RoPE q, k, v."""

    backend: str = "native"

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def readout(self, layer: int, q: torch.Tensor) -> torch.Tensor | None:
        """What a cache policy's long-range state adds to the layer's attention output."""
        return None


@dataclass
class FullAttention(AttentionMode):
    """Every token sees every token (the bidirectional teacher), or an explicit boolean
    mask [1 or B, 1, N, N] (True = may attend) when one is given."""

    cos: torch.Tensor  # [1, N, 1, Dh/2]
    sin: torch.Tensor
    mask: torch.Tensor | None = None
    backend: str = "native"
    # each latent frame's place in its clip, [F] or [B, F]: what a model's `frame_time` table
    # reads (rotary positions alone cancel between tokens of one frame)
    frames: torch.Tensor | None = None

    def __call__(self, layer, q, k, v):
        q, k = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)
        return attend(q, k, v, self.mask, self.backend)


def block_causal_mask(num_frames: int, chunk_frames: int, tokens_per_frame: int,
                      sink_frames: int = 0, window_frames: int | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Token mask [1, 1, N, N] (True = may attend) for chunked generation: a query frame
    sees its own chunk, the `window_frames` frames before its chunk and the first
    `sink_frames` frames. window None = all earlier frames (plain causal)."""
    frame = torch.arange(num_frames, device=device)
    chunk_start = (frame // chunk_frames) * chunk_frames  # [F]
    q_start, k = chunk_start[:, None], frame[None, :]
    visible = k < q_start + chunk_frames  # own chunk and earlier ones
    if window_frames is not None:
        in_window = k >= q_start - window_frames
        visible &= in_window | (k < sink_frames)
    mask = visible.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
    return mask[None, None]
