"""The causal step: one transformer forward of a chunk over its rows' KV cache, as eager
torch and every compiled backend (torch.compile, ONNX Runtime, TensorRT) run it; and the
loop of such forwards that denoises one chunk (Self-Forcing inference, Alg. 1).

One forward (a denoising step, or the t=0 refresh that writes a finished chunk's K/V):

    inputs   latents   [B, C, F, h, w]       the chunk at noise level t
             timestep  [B]                   model units 0..1000
             context   [B, L, D]             projected text context (embed_text, once per prompt)
             cache_k   [layers, B, S, H, Dh] the rows' whole buffers (engine/cache.py), S slots
             cache_v   [layers, B, S, H, Dh]
             key_cos   [B, S, 1, Dh/2]       RoPE of every slot's position
             key_sin   [B, S, 1, Dh/2]
             key_mask  [B, S] bool or None   the slot holds data (None: every slot does)
            (state_kv  [layers, B, H, Dh, Dh], state_k [layers, B, H, Dh]: linear_state only)
    outputs  flow      [B, C, F, h, w]       v = noise - x0
             new_k     [layers, B, N, H, Dh] the chunk's pre-RoPE keys, N = F * tokens_per_frame
             new_v     [layers, B, N, H, Dh]

Every shape is fixed by the config and the batch size; fills, ring heads and positions are
data (the mask and the cos/sin tables), never shapes, so one graph serves a stream from
its first chunk to its millionth. The chunk's queries take the first N slots; its keys are
its own K/V followed by the buffer's other slots.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generator

import torch
import torch.nn as nn

from .attention import AttentionMode, apply_rope, attend
from .cache import KVCache, SinkWindow
from .config import ModelConfig, SamplerConfig
from .sampler import FewStepSampler, steps_for_chunk

STEP_INPUTS = ("latents", "timestep", "context", "cache_k", "cache_v", "key_cos", "key_sin", "key_mask")
STEP_OUTPUTS = ("flow", "new_k", "new_v")


# --- the forward ----------------------------------------------------------------------------

@dataclass
class CachedAttention(AttentionMode):
    """Self-attention of the current chunk over the whole fixed-size cache buffer.

    write_in_place (eager, no autograd, rows a view of the buffers): each layer's K/V go into
    the current-chunk slot and attention reads the buffer as it stands, with no copy of the
    context. Otherwise (autograd must see the chunk's K/V; graphs cannot write their inputs)
    they are concatenated in front of the buffer's other slots and collected in new_k/new_v."""

    cache_k: torch.Tensor  # [layers, B, S, H, Dh]
    cache_v: torch.Tensor
    key_cos: torch.Tensor  # [B, S, 1, Dh/2]
    key_sin: torch.Tensor
    key_mask: torch.Tensor | None  # [B, S] bool
    state: dict[str, torch.Tensor]
    readout_fn: Callable[[int, torch.Tensor, dict], torch.Tensor | None]
    write_in_place: bool = False
    backend: str = "native"
    new_k: list[torch.Tensor] = field(default_factory=list)
    new_v: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, layer, q, k, v):  # [B, N, H, Dh] each -> [B, N, H, Dh]
        n = q.shape[1]
        if self.write_in_place:
            self.cache_k[layer, :, :n] = k
            self.cache_v[layer, :, :n] = v
            keys, values = self.cache_k[layer], self.cache_v[layer]  # [B, S, H, Dh] views
        else:
            self.new_k.append(k)
            self.new_v.append(v)
            keys = torch.cat([k, self.cache_k[layer, :, n:].to(k.dtype)], dim=1)  # [B, S, H, Dh]
            values = torch.cat([v, self.cache_v[layer, :, n:].to(v.dtype)], dim=1)
        q = apply_rope(q, self.key_cos[:, :n], self.key_sin[:, :n])  # queries sit at the first N slots
        keys = apply_rope(keys, self.key_cos, self.key_sin)
        # A 2D [B, S] mask: diffusers turns it into the right form for each backend (an
        # additive mask for xformers, where a 4D boolean one would be cast to 0/1).
        return attend(q, keys.to(q.dtype), values.to(q.dtype), self.key_mask, self.backend)

    def readout(self, layer, q):
        return self.readout_fn(layer, q, self.state)


class CachedStep(nn.Module):
    """The forward above as a module, so that it traces, compiles and exports whole. `policy`
    (engine/cache.py) supplies the readout of its state, if it has one."""

    def __init__(self, transformer: nn.Module, policy: type[SinkWindow], attention_backend: str = "native"):
        super().__init__()
        self.transformer = transformer
        self.policy = policy
        self.attention_backend = attention_backend

    def forward(self, latents, timestep, context, cache_k, cache_v, key_cos, key_sin, key_mask,
                state_kv=None, state_k=None, write_in_place: bool = False):
        state = {name: t for name, t in (("state_kv", state_kv), ("state_k", state_k)) if t is not None}
        mode = CachedAttention(cache_k, cache_v, key_cos, key_sin, key_mask, state, self.policy.readout,
                               write_in_place, self.attention_backend)
        flow = self.transformer.denoise(latents, timestep, context, mode)  # [B, C, F, h, w]
        if write_in_place:
            return flow, None, None  # the chunk's K/V are in the buffers' current slot already
        return flow, torch.stack(mode.new_k), torch.stack(mode.new_v)  # new_*: [layers, B, N, H, Dh]


def step_inputs(cache: KVCache, rows: list[int], latents: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor, mask_optional: bool = True) -> dict[str, torch.Tensor | None]:
    """The named inputs of one forward for `rows` of `cache`."""
    for row in rows:
        cache.begin_chunk(row, latents.shape[2])
    return {"latents": latents, "timestep": timestep.float(), "context": context,
            **cache.attention_inputs(rows, mask_optional)}


class Stepper:
    """What `StreamModel.step_fn` is: one forward for `rows` of a cache, then the rows whose
    chunk is finished (`commit`) move its K/V into sink / window. The runner is a compiled
    backend's (engine/runtime) or None; forwards a static graph cannot take (a partial chunk
    of a re-cache, a forward with gradients) run the eager module, which is exact."""

    def __init__(self, transformer: nn.Module, policy: type[SinkWindow], attention_backend: str = "native",
                 runner=None, max_batch: int = 8):
        self.eager = CachedStep(transformer, policy, attention_backend)
        self.runner, self.max_batch = runner, max_batch
        self.backend = runner.name if runner is not None else "eager"
        self.calls = 0  # forwards the runner served (the rest went to the eager module)

    def __call__(self, cache: KVCache, rows: list[int], latents: torch.Tensor, timestep: torch.Tensor,
                 context: torch.Tensor, commit: list[bool]) -> torch.Tensor:
        """latents [B, C, F, h, w], timestep [B], context [B, L, D] -> flow [B, C, F, h, w]"""
        grad = torch.is_grad_enabled()
        if self.runner is not None and latents.shape[2] == cache.chunk_frames and not grad:
            flow, new_k, new_v = self._run_graph(cache, rows, latents, timestep, context)
            self.calls += 1
        else:
            in_place = not grad and isinstance(cache.rows_index(rows), slice)
            inputs = step_inputs(cache, rows, latents, timestep, context)
            if grad:  # autograd keeps what the readout read; later evictions change the state in place
                inputs.update({name: inputs[name].clone() for name in cache.policy.state_names})
            flow, new_k, new_v = self.eager(**inputs, write_in_place=in_place)
        done = [i for i, c in enumerate(commit) if c]
        if done:
            if new_k is not None:
                cache.store_current([rows[i] for i in done], new_k[:, done], new_v[:, done])
            for i in done:
                cache.commit(rows[i])
        return flow

    def _run_graph(self, cache, rows, latents, timestep, context):
        """The runner in slices of at most max_batch rows (a TensorRT profile's limit)."""
        parts = []
        for i in range(0, len(rows), self.max_batch):
            part = slice(i, i + self.max_batch)
            inputs = step_inputs(cache, rows[part], latents[part], timestep[part], context[part],
                                 mask_optional=self.runner.takes_no_mask)
            parts.append(self.runner(inputs))
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat([p[j] for p in parts], dim=1 if j else 0) for j in range(3))


def example_inputs(config: ModelConfig, batch: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes and dtypes (random values, a partly filled cache) for
    tracing, exporting and building engines."""
    from .cache import policy_class

    t, att, lat = config.transformer, config.attention, config.latent
    slots = KVCache.slot_frames(att) * config.tokens_per_frame
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
    if "state_kv" in policy_class(att).state_names:
        inputs["state_kv"] = randn(layers, batch, heads, dh, dh, dtype=torch.float32).abs()
        inputs["state_k"] = randn(layers, batch, heads, dh, dtype=torch.float32).abs()
    return inputs


# --- one chunk: the loop of forwards ------------------------------------------------------------

@dataclass
class StepRequest:
    latents: torch.Tensor  # [B, C, F, h, w]
    timestep: float  # model units (0..1000, shifted)
    commit: bool  # the chunk's K/V enter the cache after this forward
    grad: bool  # training: the forward whose x0 carries the gradient (the exit step)


def chunk_steps(config: SamplerConfig, chunk_index: int, noise: torch.Tensor, generator: torch.Generator,
                exit_step: int | None = None) -> Generator[StepRequest, torch.Tensor, tuple[torch.Tensor, StepRequest]]:
    """The forwards of one chunk; send each one's flow back. Returns (x0, the request whose
    forward wrote the chunk's K/V), the latter being what a re-cache must replay.

    For each step i: v = f(x_i, t_i); x0 = x_i - s_i v; x_{i+1} = (1 - s_{i+1}) x0 + s_{i+1} eps
    (Self-Forcing Alg. 1). Inference runs every step; a training rollout stops at a random
    `exit_step` whose x0 carries the gradient. Then the chunk's K/V enter the cache: with
    `refresh_context`, from one more forward over x0 at t=0; without it (diagonal
    distillation), they are the K/V of the last forward run. Training and inference both go
    through here, so a rollout's cache is exactly what the stream's would be."""
    sampler = FewStepSampler(config)
    sampler.set_timesteps(steps_for_chunk(config, chunk_index))
    last = len(sampler.timesteps) - 1 if exit_step is None else exit_step
    x = noise
    for i in range(last + 1):
        request = StepRequest(x, float(sampler.timesteps[i]), commit=i == last and not config.refresh_context,
                              grad=i == last)
        v = yield request
        if i == last:
            x0 = x - sampler.sigmas[i] * v  # x0 = x_t - s v
            break
        x, _ = sampler.step(v, x, generator)
    if config.refresh_context:
        request = StepRequest(x0.detach(), 0.0, commit=True, grad=False)
        yield request
    return x0, request


class KeptFrames:
    """What the cache's frames were computed from, frame by frame ([B, C, h, w] latents and
    the timestep of the forward that committed them): the first `sink_frames` and the last
    `window_frames`. A prompt switch replays them (LongLive's KV re-cache)."""

    def __init__(self, sink_frames: int, window_frames: int):
        self.sink_frames = sink_frames
        self.sink: list[tuple[torch.Tensor, float]] = []
        self.window: deque[tuple[torch.Tensor, float]] = deque(maxlen=window_frames)

    def __len__(self) -> int:
        return len(self.sink) + len(self.window)

    def keep(self, committed: StepRequest) -> None:
        for f in range(committed.latents.shape[2]):
            frame = (committed.latents[:, :, f].detach(), committed.timestep)
            if len(self.sink) < self.sink_frames:
                self.sink.append(frame)
            else:
                self.window.append(frame)

    def copy(self) -> "KeptFrames":
        """A copy that later keeps do not change (the frames themselves are never written)."""
        other = KeptFrames(self.sink_frames, self.window.maxlen or 0)
        other.sink, other.window = list(self.sink), deque(self.window, maxlen=self.window.maxlen)
        return other

    def recache(self, policy: type[SinkWindow], chunk_frames: int) -> list[StepRequest]:
        """The forwards of a re-cache: the kept frames in chunk-sized groups, each committing
        its K/V at the timestep it was first committed at. A policy whose sink holds what
        the kept frames cannot rebuild (an EMA fold) keeps its sink: only the window replays."""
        kept = list(self.window) if policy.keeps_sink_on_recache else [*self.sink, *self.window]
        return [StepRequest(torch.stack([frame for frame, _ in kept[i : i + chunk_frames]], dim=2),
                            kept[i][1], commit=True, grad=False)
                for i in range(0, len(kept), chunk_frames)]
