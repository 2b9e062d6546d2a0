"""The KV cache: preallocated ring buffers sized by sink + window, for one or many streams.

Layout per layer and row (a row is one stream), in tokens::

    [ current chunk | sink frames | window ring ]

The current chunk's K/V are written to the front slot on every denoising step, so
attention reads one contiguous prefix of the buffer (a view, no concatenation). When a
chunk is committed (the t=0 refresh pass, or its last step when refresh is skipped) its
frames move into the sink until that is full, then into the ring; a frame leaving the
ring is dropped (sink_window), folded into the sink by EMA (ema_sink), or folded into a
linear-attention state (linear_state). Keys are stored without rotary embedding;
positions are relative to the window (sink 0..S-1, then the ring oldest first, then the
current chunk), so a stream can run forever.

All bookkeeping (fill levels, ring head) is host-side Python ints: no `.item()` or other
device sync happens in attention or cache code.
"""

from __future__ import annotations

import torch

from .attention import RopeTables, linear_features
from .config import AttentionConfig


class KVCache:
    def __init__(self, *, rows: int, layers: int, heads: int, head_dim: int, tokens_per_frame: int,
                 attention: AttentionConfig, rope: RopeTables, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.rows, self.layers = rows, layers
        self.tpf = tokens_per_frame
        self.chunk_frames = attention.chunk_frames
        self.sink_frames = attention.sink_frames
        self.window_frames = attention.window_frames
        self.policy = attention.policy
        self.ema_decay = attention.ema_decay
        self.rope = rope
        slots = (self.chunk_frames + self.sink_frames + self.window_frames) * tokens_per_frame
        self.k = torch.zeros(layers, rows, slots, heads, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        if self.policy == "linear_state":
            # sum phi(k) v^T and sum phi(k) over every evicted token, per layer/row/head
            self.state_kv = torch.zeros(layers, rows, heads, head_dim, head_dim, device=device)
            self.state_k = torch.zeros(layers, rows, heads, head_dim, device=device)
        self.sink_filled = [0] * rows  # frames
        self.window_filled = [0] * rows
        self.ring_head = [0] * rows  # next ring slot to write (the oldest frame once full)
        self.ema_slot = [0] * rows  # sink frame the next evicted frame folds into
        self.current_frames = [0] * rows
        self._positions: dict[int, torch.Tensor] = {}

    # --- sizes -------------------------------------------------------------------------
    @property
    def sink_offset(self) -> int:
        return self.chunk_frames * self.tpf

    @property
    def ring_offset(self) -> int:
        return (self.chunk_frames + self.sink_frames) * self.tpf

    def nbytes(self) -> int:
        extra = 0
        if self.policy == "linear_state":
            extra = self.state_kv.nbytes + self.state_k.nbytes
        return self.k.nbytes + self.v.nbytes + extra

    def context_frames(self, row: int) -> int:
        return self.sink_filled[row] + self.window_filled[row]

    def valid_range(self, row: int) -> tuple[int, int]:
        """Token range [start, end) of the contiguous prefix holding data for `row`.
        The current chunk is right-aligned in its slot, and the ring is only written once
        the sink is full, so current + sink + ring are always contiguous."""
        start = (self.chunk_frames - self.current_frames[row]) * self.tpf
        if self.sink_filled[row] < self.sink_frames:
            return start, self.sink_offset + self.sink_filled[row] * self.tpf
        return start, self.ring_offset + self.window_filled[row] * self.tpf

    # --- lifecycle ---------------------------------------------------------------------
    def reset(self, row: int) -> None:
        self.sink_filled[row] = self.window_filled[row] = 0
        self.ring_head[row] = self.ema_slot[row] = self.current_frames[row] = 0
        if self.policy == "linear_state":
            self.state_kv[:, row].zero_()
            self.state_k[:, row].zero_()
        self._positions.pop(row, None)

    def begin_chunk(self, row: int, frames: int) -> None:
        """Declare the frame count of the chunk that the next forwards write."""
        if frames > self.chunk_frames:
            raise ValueError(f"chunk of {frames} frames exceeds chunk_frames {self.chunk_frames}")
        self.current_frames[row] = frames
        self._positions.pop(row, None)

    # --- positions ---------------------------------------------------------------------
    def frame_positions(self, row: int) -> torch.Tensor:
        """Relative frame position of every slot of the valid prefix: [current | sink | ring]."""
        cached = self._positions.get(row)
        if cached is not None:
            return cached
        s, w, head = self.sink_filled[row], self.window_filled[row], self.ring_head[row]
        cur = list(range(s + w, s + w + self.current_frames[row]))
        ring = [s + (j - head) % w for j in range(w)] if w else []
        pos = torch.tensor(cur + list(range(s)) + ring, dtype=torch.long, device=self.rope.t_cos.device)
        self._positions[row] = pos
        return pos

    def query_positions(self, row: int) -> torch.Tensor:
        return self.frame_positions(row)[: self.current_frames[row]]

    # --- per-layer access (hot path) -------------------------------------------------
    def write_current(self, layer: int, row: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [1, n, H, Dh] pre-RoPE keys/values of the current chunk."""
        start = (self.chunk_frames - self.current_frames[row]) * self.tpf
        self.k[layer, row, start : start + k.shape[1]].copy_(k[0])
        self.v[layer, row, start : start + v.shape[1]].copy_(v[0])

    def view(self, layer: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, valid, H, Dh] views of current + sink + ring (no copy)."""
        start, end = self.valid_range(row)
        return self.k[layer, row : row + 1, start:end], self.v[layer, row : row + 1, start:end]

    def context_view(self, layer: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, context, H, Dh] views of sink + ring only, for a forward that carries its
        own K/V with gradients instead of writing them into the buffer."""
        _, end = self.valid_range(row)
        return self.k[layer, row : row + 1, self.sink_offset : end], self.v[layer, row : row + 1, self.sink_offset : end]

    # --- commit: move the current chunk into sink / ring -----------------------------
    @torch.no_grad()
    def commit(self, row: int) -> None:
        """Move the current slot's frames into the sink / ring, evicting as the policy says.
        All layers at once; runs once per chunk, not per layer."""
        tpf = self.tpf
        first = self.chunk_frames - self.current_frames[row]
        for f in range(first, self.chunk_frames):
            src = slice(f * tpf, (f + 1) * tpf)
            k_new, v_new = self.k[:, row, src], self.v[:, row, src]  # [L, tpf, H, Dh]
            if self.sink_filled[row] < self.sink_frames:
                dst = self.sink_offset + self.sink_filled[row] * tpf
                self.k[:, row, dst : dst + tpf] = k_new
                self.v[:, row, dst : dst + tpf] = v_new
                self.sink_filled[row] += 1
                continue
            slot = self.ring_head[row]
            dst = slice(self.ring_offset + slot * tpf, self.ring_offset + (slot + 1) * tpf)
            if self.window_filled[row] == self.window_frames:
                self._evict(row, self.k[:, row, dst], self.v[:, row, dst])
            else:
                self.window_filled[row] += 1
            self.k[:, row, dst] = k_new
            self.v[:, row, dst] = v_new
            self.ring_head[row] = (slot + 1) % self.window_frames
        self.current_frames[row] = 0
        self._positions.pop(row, None)

    def _evict(self, row: int, k_old: torch.Tensor, v_old: torch.Tensor) -> None:
        """k_old, v_old: [L, tpf, H, Dh] of the frame leaving the window."""
        if self.policy == "ema_sink":
            # Reward Forcing's EMA sink: sink <- a * sink + (1 - a) * evicted, frame-aligned.
            a = self.ema_decay
            dst = slice(self.sink_offset + self.ema_slot[row] * self.tpf,
                        self.sink_offset + (self.ema_slot[row] + 1) * self.tpf)
            self.k[:, row, dst].mul_(a).add_(k_old, alpha=1 - a)
            self.v[:, row, dst].mul_(a).add_(v_old, alpha=1 - a)
            self.ema_slot[row] = (self.ema_slot[row] + 1) % self.sink_frames
        elif self.policy == "linear_state":
            # Hybrid Forcing's linear temporal state: S += phi(k)^T v, z += sum phi(k).
            phi = linear_features(k_old)  # [L, tpf, H, Dh]
            self.state_kv[:, row] += torch.einsum("lnhd,lnhe->lhde", phi, v_old.float())
            self.state_k[:, row] += phi.sum(dim=1)

    def linear_state(self, layer: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.state_kv[layer, row : row + 1], self.state_k[layer, row : row + 1]
