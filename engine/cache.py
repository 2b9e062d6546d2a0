"""The KV cache: preallocated buffers bounded by sink + window, for one or many streams, and
the policies that decide what becomes of a frame leaving the window.

Layout per layer and row (a row is one stream), in frame slots of `tokens_per_frame` tokens:

    [ current chunk | sink frames | window ring ]      slot_frames = chunk + sink + window

Attention always reads every slot (the fixed-slot form, engine/step.py): a key mask hides
the slots that hold no data yet, and keys are stored without rotary embedding, their
positions given per slot (sink 0..S-1, then the ring oldest first, then the current chunk),
so shapes never change and a stream can run forever. The current chunk is left-aligned in
its slot. Committing a chunk moves its frames into the sink until that is full, then into
the ring; a frame leaving the ring goes to the policy:

    sink_window   dropped (sink 0 and a long window: plain causal attention)
    ema_sink      folded into a sink frame: sink <- a sink + (1 - a) evicted (Reward Forcing)
    linear_state  folded into a running linear-attention state (sum phi(k) v^T, sum phi(k)),
                  read by a zero-initialised projection in each block (Hybrid Forcing)

All bookkeeping (fill levels, ring head) is host-side Python ints: no `.item()` or other
device sync happens in attention or cache code. Memory never grows with stream length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .config import AttentionConfig

if TYPE_CHECKING:
    from .attention import RopeTables
    from .config import ModelConfig


def linear_features(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1: the positive feature map of the linear temporal state."""
    return F.elu(x.float()) + 1.0


# --- policies: what happens to a frame leaving the window ----------------------------------

class SinkWindow:
    """A frame leaving the window is dropped. The sink holds the stream's first frames as
    they were, so a prompt switch recomputes them with the rest of the kept frames."""

    state_names: tuple[str, ...] = ()
    has_readout = False  # blocks need no temporal_state_out projection
    keeps_sink_on_recache = False

    def __init__(self, cache: "KVCache", attention: AttentionConfig):
        self.cache = cache

    @staticmethod
    def state_bytes(layers: int, heads: int, head_dim: int) -> int:
        """Bytes of policy state per row, beyond the K/V buffers."""
        return 0

    def reset(self, row: int) -> None:
        pass

    def position(self, row: int) -> int:
        """The policy's own host-side bookkeeping of a row (for rewinding)."""
        return 0

    def set_position(self, row: int, position: int) -> None:
        pass

    def evict(self, row: int, k_old: torch.Tensor, v_old: torch.Tensor) -> None:
        """k_old, v_old: [L, tpf, H, Dh] of the frame leaving the window."""

    def state(self, rows: slice | torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows' state tensors, as the step function takes them (empty: none)."""
        return {}

    @staticmethod
    def readout(layer: int, q: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """What the state adds to a block's attention output, before its projection."""
        return None


class EmaSink(SinkWindow):
    """Reward Forcing's EMA sink: each evicted frame is folded into one sink frame in turn,
    sink <- a * sink + (1 - a) * evicted. The sink then summarises the whole past, which the
    kept latents cannot rebuild: a prompt switch keeps it and recomputes only the window."""

    keeps_sink_on_recache = True

    def __init__(self, cache: "KVCache", attention: AttentionConfig):
        super().__init__(cache, attention)
        self.decay = attention.ema_decay
        self.next_slot = [0] * cache.rows  # sink frame the next evicted frame folds into

    def reset(self, row: int) -> None:
        self.next_slot[row] = 0

    def position(self, row):
        return self.next_slot[row]

    def set_position(self, row, position):
        self.next_slot[row] = position

    def evict(self, row, k_old, v_old):
        cache, a = self.cache, self.decay
        dst = cache.frame_slice(cache.sink_offset_frames + self.next_slot[row])
        cache.journal_write(row, (slice(None), row, dst))
        cache.k[:, row, dst].mul_(a).add_(k_old, alpha=1 - a)
        cache.v[:, row, dst].mul_(a).add_(v_old, alpha=1 - a)
        self.next_slot[row] = (self.next_slot[row] + 1) % cache.sink_frames


class LinearState(SinkWindow):
    """Hybrid Forcing's linear temporal state: every evicted token adds phi(k) v^T to S and
    phi(k) to z (per layer, row and head); a query reads phi(q) S / (phi(q) z). The state is
    the stream's long-range memory and survives a prompt switch."""

    state_names = ("state_kv", "state_k")
    has_readout = True

    def __init__(self, cache: "KVCache", attention: AttentionConfig):
        super().__init__(cache, attention)
        shape = (cache.layers, cache.rows, cache.heads, cache.head_dim)
        self.state_kv = torch.zeros(*shape, cache.head_dim, device=cache.k.device)  # [L, R, H, Dh, Dh]
        self.state_k = torch.zeros(shape, device=cache.k.device)  # [L, R, H, Dh]

    @staticmethod
    def state_bytes(layers, heads, head_dim):
        return layers * heads * head_dim * (head_dim + 1) * 4

    def reset(self, row):
        self.state_kv[:, row].zero_()
        self.state_k[:, row].zero_()

    def evict(self, row, k_old, v_old):
        self.cache.journal_write(row, (slice(None), row), (self.state_kv, self.state_k))
        phi = linear_features(k_old)  # [L, tpf, H, Dh]
        self.state_kv[:, row] += torch.einsum("lnhd,lnhe->lhde", phi, v_old.float())
        self.state_k[:, row] += phi.sum(dim=1)

    def state(self, rows):
        return {"state_kv": self.state_kv[:, rows], "state_k": self.state_k[:, rows]}

    @staticmethod
    def readout(layer, q, state):  # q [B, N, H, Dh] -> [B, N, H, Dh]
        phi = linear_features(q)
        num = torch.einsum("bnhd,bhde->bnhe", phi, state["state_kv"][layer])
        den = torch.einsum("bnhd,bhd->bnh", phi, state["state_k"][layer]).unsqueeze(-1)
        return num / (den + 1e-6)


POLICIES: dict[str, type[SinkWindow]] = {"sink_window": SinkWindow, "ema_sink": EmaSink,
                                         "linear_state": LinearState}


def policy_class(attention: AttentionConfig) -> type[SinkWindow]:
    """The policy of a config. A bidirectional ('full') model streamed chunk by chunk keeps
    its cache as sink_window does (a teacher is not trained for it, but it runs)."""
    return POLICIES.get(attention.policy, SinkWindow)


# --- the cache ------------------------------------------------------------------------------

class KVCache:
    def __init__(self, *, rows: int, layers: int, heads: int, head_dim: int, tokens_per_frame: int,
                 attention: AttentionConfig, rope: "RopeTables", device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.rows, self.layers, self.heads, self.head_dim = rows, layers, heads, head_dim
        self.tpf = tokens_per_frame
        self.chunk_frames = attention.chunk_frames
        self.sink_frames = attention.sink_frames
        self.window_frames = attention.window_frames
        self.rope = rope
        self.k = torch.zeros(layers, rows, self.slot_frames(attention) * tokens_per_frame, heads, head_dim,
                             device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.policy = policy_class(attention)(self, attention)
        self.sink_filled = [0] * rows  # frames
        self.window_filled = [0] * rows
        self.ring_head = [0] * rows  # next ring slot to write (the oldest frame once full)
        self.current_frames = [0] * rows
        self._layouts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]] = {}
        # Per row, while someone holds a mark: the previous contents of every region a commit
        # overwrites, so the row can be rewound to a mark (None: not journaling).
        self._journals: list[Journal | None] = [None] * rows

    @classmethod
    def for_model(cls, config: "ModelConfig", rope: "RopeTables", rows: int, device: torch.device | str,
                  dtype: torch.dtype) -> "KVCache":
        t = config.transformer
        return cls(rows=rows, layers=t.num_layers, heads=t.num_attention_heads, head_dim=t.attention_head_dim,
                   tokens_per_frame=config.tokens_per_frame, attention=config.attention, rope=rope, device=device,
                   dtype=dtype)

    # --- sizes -------------------------------------------------------------------------
    @staticmethod
    def slot_frames(attention: AttentionConfig) -> int:
        return attention.chunk_frames + attention.sink_frames + attention.window_frames

    @classmethod
    def bytes_per_row(cls, config: "ModelConfig", dtype: torch.dtype) -> int:
        """One stream's buffers and policy state, from the config alone (admission decides
        with it before anything is allocated)."""
        t, att = config.transformer, config.attention
        kv = 2 * t.num_layers * cls.slot_frames(att) * config.tokens_per_frame * t.inner_dim * dtype.itemsize
        return kv + policy_class(att).state_bytes(t.num_layers, t.num_attention_heads, t.attention_head_dim)

    @property
    def sink_offset_frames(self) -> int:
        return self.chunk_frames

    @property
    def ring_offset_frames(self) -> int:
        return self.chunk_frames + self.sink_frames

    def frame_slice(self, frame_slot: int) -> slice:
        """Token range of one frame slot."""
        return slice(frame_slot * self.tpf, (frame_slot + 1) * self.tpf)

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + sum(t.nbytes for t in self.policy.state(slice(None)).values())

    def context_frames(self, row: int) -> int:
        return self.sink_filled[row] + self.window_filled[row]

    # --- lifecycle ---------------------------------------------------------------------
    def reset(self, row: int) -> None:
        self.sink_filled[row] = self.window_filled[row] = self.ring_head[row] = self.current_frames[row] = 0
        self.policy.reset(row)
        self._layouts.pop(row, None)
        self._journals[row] = None

    def restart_window(self, row: int) -> None:
        """Empty the window (and the sink, unless the policy keeps it) for a re-cache after a
        prompt switch; policy state (EMA sink, linear state) is kept: it is the stream's
        long-range memory, which the kept latents cannot rebuild."""
        if not self.policy.keeps_sink_on_recache:
            self.sink_filled[row] = 0
        self.window_filled[row] = self.ring_head[row] = self.current_frames[row] = 0
        self._layouts.pop(row, None)

    def begin_chunk(self, row: int, frames: int) -> None:
        """Declare the frame count of the chunk that the next forwards compute."""
        if frames > self.chunk_frames:
            raise ValueError(f"chunk of {frames} frames exceeds chunk_frames {self.chunk_frames}")
        if self.current_frames[row] != frames:
            self.current_frames[row] = frames
            self._layouts.pop(row, None)

    # --- what attention reads -----------------------------------------------------------
    def _layout(self, row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Per row, cached until its bookkeeping changes: RoPE cos, sin [S, 1, Dh/2] of every
        slot's token, which slots hold data [S] bool, and whether all do."""
        cached = self._layouts.get(row)
        if cached is not None:
            return cached
        s, w, head, f = self.sink_filled[row], self.window_filled[row], self.ring_head[row], self.current_frames[row]
        positions = [s + w + i for i in range(self.chunk_frames)] + list(range(self.sink_frames)) + \
            [s + (j - head) % w if w else 0 for j in range(self.window_frames)]
        valid = [i < f for i in range(self.chunk_frames)] + [j < s for j in range(self.sink_frames)] + \
            [j < w for j in range(self.window_frames)]
        device = self.rope.t_cos.device
        cos, sin = self.rope.for_frames(torch.tensor(positions, device=device))
        mask = torch.tensor(valid, device=device).repeat_interleave(self.tpf)
        layout = (cos, sin, mask, all(valid))
        self._layouts[row] = layout
        return layout

    def rows_index(self, rows: list[int]) -> slice | torch.Tensor:
        """A slice when the rows are contiguous (the buffers' rows are then a view), else an
        index tensor (a gather)."""
        r0 = rows[0]
        if rows == list(range(r0, r0 + len(rows))):
            return slice(r0, r0 + len(rows))
        return torch.tensor(rows, device=self.k.device)

    def attention_inputs(self, rows: list[int], mask_optional: bool = True) -> dict[str, torch.Tensor | None]:
        """The cache-side inputs of the step function for `rows` (engine/step.py):
        cache_k, cache_v [L, B, S, H, Dh]; key_cos, key_sin [B, S, 1, Dh/2]; key_mask [B, S]
        (None when every slot of every row holds data and `mask_optional`: torch then takes
        the unmasked attention kernel); and the policy's state tensors."""
        index = self.rows_index(rows)
        layouts = [self._layout(r) for r in rows]
        cos, sin, mask = (layouts[0][i][None] if len(rows) == 1 else torch.stack([lay[i] for lay in layouts])
                          for i in range(3))
        if mask_optional and all(lay[3] for lay in layouts):
            mask = None
        return {"cache_k": self.k[:, index], "cache_v": self.v[:, index], "key_cos": cos, "key_sin": sin,
                "key_mask": mask, **self.policy.state(index)}

    # --- writing --------------------------------------------------------------------------
    def store_current(self, rows: list[int], new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        """The chunk's pre-RoPE K/V [L, B, n, H, Dh] into the rows' current-chunk slot."""
        n = new_k.shape[2]
        for i, row in enumerate(rows):
            self.k[:, row, :n] = new_k[:, i].detach()
            self.v[:, row, :n] = new_v[:, i].detach()

    @torch.no_grad()
    def commit(self, row: int) -> None:
        """Move the current slot's frames into the sink / ring, evicting through the policy.
        All layers at once; runs once per chunk, not per layer."""
        for f in range(self.current_frames[row]):
            k_new, v_new = self.k[:, row, self.frame_slice(f)], self.v[:, row, self.frame_slice(f)]  # [L, tpf, H, Dh]
            if self.sink_filled[row] < self.sink_frames:
                dst = self.frame_slice(self.sink_offset_frames + self.sink_filled[row])
                self.sink_filled[row] += 1
            else:
                slot = self.ring_head[row]
                dst = self.frame_slice(self.ring_offset_frames + slot)
                if self.window_filled[row] == self.window_frames:
                    self.policy.evict(row, self.k[:, row, dst], self.v[:, row, dst])
                else:
                    self.window_filled[row] += 1
                self.ring_head[row] = (slot + 1) % self.window_frames
            self.journal_write(row, (slice(None), row, dst))
            self.k[:, row, dst] = k_new
            self.v[:, row, dst] = v_new
        self.current_frames[row] = 0
        self._layouts.pop(row, None)

    # --- rewinding (a prompt switch discards video generated ahead) ----------------------------
    def mark(self, row: int) -> "CacheMark":
        """A point the row can be rewound to. Cheap: host ints now, and from here on a copy of
        each region a commit overwrites (the frame slots written, an EMA-folded sink frame,
        the linear state): never a copy of the whole cache."""
        if self._journals[row] is None:
            self._journals[row] = Journal()
        bookkeeping = (self.sink_filled[row], self.window_filled[row], self.ring_head[row],
                       self.policy.position(row))
        return CacheMark(row, self._journals[row].end, bookkeeping)

    def journal_write(self, row: int, index: tuple, tensors: tuple[torch.Tensor, ...] | None = None) -> None:
        """Before writing tensors[index] (default: the K/V buffers), keep what is there."""
        journal = self._journals[row]
        if journal is not None:
            tensors = tensors or (self.k, self.v)
            journal.entries.append((index, tensors, tuple(t[index].clone() for t in tensors)))

    def rewind(self, mark: "CacheMark") -> None:
        """Restore the row as it was at `mark` (taken since the row's last reset and not forgotten)."""
        journal, row = self._journals[mark.row], mark.row
        if journal is None or not journal.start <= mark.position <= journal.end:
            raise ValueError("that cache mark is no longer held")
        while journal.end > mark.position:
            index, tensors, saved = journal.entries.pop()
            for t, old in zip(tensors, saved):
                t[index] = old
        self.sink_filled[row], self.window_filled[row], self.ring_head[row], position = mark.bookkeeping
        self.policy.set_position(row, position)
        self.current_frames[row] = 0
        self._layouts.pop(row, None)

    def forget(self, row: int, before: "CacheMark | None") -> None:
        """Marks older than `before` will not be rewound to: free what was kept for them
        (before=None: no mark at all; journaling stops)."""
        journal = self._journals[row]
        if before is None or journal is None:
            self._journals[row] = None
            return
        drop = before.position - journal.start
        if drop > 0:
            del journal.entries[:drop]
            journal.start = before.position

    def journal_bytes(self, row: int) -> int:
        journal = self._journals[row]
        return sum(t.nbytes for _, _, saved in (journal.entries if journal else ()) for t in saved)


@dataclass
class Journal:
    start: int = 0  # position of entries[0]
    entries: list = field(default_factory=list)  # (index, tensors, saved copies), oldest first

    @property
    def end(self) -> int:
        return self.start + len(self.entries)


@dataclass(frozen=True)
class CacheMark:
    row: int
    position: int  # the journal's end when taken
    bookkeeping: tuple[int, int, int, int]  # sink_filled, window_filled, ring_head, policy position
