"""The one transformer of teacher and student: diffusers' Wan model, driven chunk-wise.

`CausalWanTransformer` *is* diffusers' `WanTransformer3DModel` (same modules, same
parameter names, so a Wan2.1 checkpoint in diffusers format loads as is). What it adds:
- `SelfAttnProcessor` on every block's `attn1`, which hands pre-RoPE q/k/v to an
  attention mode (bidirectional, masked, or KV-cached streaming: engine/step.py);
- `denoise()`, one forward for training and inference: per-frame timesteps, a
  pre-projected text context (projected once per prompt, not per chunk), any mode;
- an optional zero-initialised `temporal_state_out` projection per block for the linear
  temporal state (Hybrid Forcing), absent from plain Wan checkpoints;
- an optional clean-sample output (`prediction: sample`), turned into the flow in `denoise`;
- an optional zero-initialised `frame_time` table for a frames-only teacher: each latent
  frame told its place in its clip, the clip seen one frame at a time (`clip_attention`);
- an optional zero-initialised `pooled_text_embedder` (`text_pooling: mean`) that adds the
  prompt's mean context vector to the time embedding, so the prompt modulates every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from diffusers import WanTransformer3DModel

from .attention import AttentionMode, FullAttention, RopeTables, attend
from .cache import POLICIES
from .config import ModelConfig
from .errors import ShapeMismatch


# A model that predicts x0 (`prediction: sample`) divides by the noise level s to give its
# flow; below this s it divides by this instead (JiT clips the same denominator at 0.05), so
# clean context frames (s = 0) and the last steps stay finite.
SAMPLE_MIN_SIGMA = 0.05


class SelfAttnProcessor:
    """Replaces diffusers' WanAttnProcessor on `attn1`.

    The attention mode arrives through the block's `rotary_emb` argument: diffusers'
    WanTransformerBlock passes that one object straight to `attn1`, so using it keeps the
    block's own forward (norms, modulation, cross-attention, FFN) and parameter names as
    diffusers has them, rather than a second copy of the block written here."""

    def __init__(self, layer: int):
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb: AttentionMode | None = None):
        mode = rotary_emb
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # [B, N, H, Dh]
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        out = mode(self.layer, q, k, v).flatten(2).type_as(q)  # [B, N, D]
        out = attn.to_out[1](attn.to_out[0](out))
        readout = mode.readout(self.layer, q)  # a cache policy's long-range state, if it has one
        if readout is not None:
            out = out + attn.temporal_state_out(readout.flatten(2).type_as(out))
        return out


class CrossAttnProcessor:
    """Replaces diffusers' WanAttnProcessor on `attn2` when the model masks the prompt's
    padding (`attention.text_padding: mask`): the same projections and norms, attending only
    to the context's non-zero positions (`embed_text` leaves padding exactly zero). A row with
    none (the unconditional, all-zero context) attends to all of them."""

    def __init__(self, backend: str):
        self.backend = backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        context = encoder_hidden_states
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # [B, N, H, Dh]
        k = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))  # [B, L, H, Dh]
        v = attn.to_v(context).unflatten(2, (attn.heads, -1))
        words = context.ne(0).any(-1)  # [B, L]
        words = words | ~words.any(-1, keepdim=True)
        out = attend(q, k, v, words[:, None, None, :], self.backend).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class CausalWanTransformer(WanTransformer3DModel):
    """diffusers' Wan transformer with streaming attention. Build with `from_config`."""

    def enable_streaming(self, config: ModelConfig) -> "CausalWanTransformer":
        """Install the streaming processors (and the linear-state readouts if the policy
        uses them); sizes the RoPE tables for this model's latent grid."""
        lat, t = config.latent, config.transformer
        grid_h, grid_w = lat.latent_height // t.patch_size[1], lat.latent_width // t.patch_size[2]
        self.rope_tables = RopeTables(t.attention_head_dim, grid_h, grid_w, t.rope_max_seq_len,
                                      theta=config.attention.rope_theta, device=self.device)
        self.attention_backend = config.attention.backend
        self.predicts_sample = config.prediction == "sample"
        self.mask_text_padding = config.attention.text_padding == "mask"
        for i, block in enumerate(self.blocks):
            block.attn1.set_processor(SelfAttnProcessor(i))
            if self.mask_text_padding:
                block.attn2.set_processor(CrossAttnProcessor(config.attention.backend))
            policy = POLICIES.get(config.attention.policy)  # None: 'full' attention keeps no cache
            if policy is not None and policy.has_readout and not hasattr(block.attn1, "temporal_state_out"):
                proj = nn.Linear(t.inner_dim, t.inner_dim)
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
                block.attn1.temporal_state_out = proj.to(self.device, self.dtype)
        if config.text_pooling == "mean" and getattr(self, "pooled_text_embedder", None) is None:
            d = t.inner_dim
            mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            nn.init.zeros_(mlp[2].weight)  # a no-op until trained: a model without it is the start
            nn.init.zeros_(mlp[2].bias)
            self.pooled_text_embedder = mlp.to(self.device, self.dtype)
        if config.absolute_positions and getattr(self, "spatial_position", None) is None:
            self.spatial_position = SpatialPosition(grid_h * grid_w, t.inner_dim).to(self.device, self.dtype)
        if config.frame_time > 0 and getattr(self, "frame_time", None) is None:
            self.frame_time = FrameTime(config.frame_time, t.inner_dim).to(self.device, self.dtype)
        self.tokens_per_frame = grid_h * grid_w
        if config.output_refiner > 0 and getattr(self, "output_refiner", None) is None:
            self.output_refiner = OutputRefiner(t.inner_dim, t.out_channels, t.patch_size,
                                                config.output_refiner).to(self.device, self.dtype)
        return self

    # --- pieces --------------------------------------------------------------------
    def embed_text(self, text_states: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim] encoder features (zero past each prompt's tokens) -> [B, L, D]
        context. Once per prompt. A model that masks the padding keeps it exactly zero here,
        which is how its cross-attention tells padding from words."""
        context = self.condition_embedder.text_embedder(text_states)
        if getattr(self, "mask_text_padding", False):
            context = context * text_states.ne(0).any(-1, keepdim=True)
        return context

    def _time_embedding(self, timestep: torch.Tensor, tokens_per_frame: int, context: torch.Tensor):
        """timestep [B] or [B, F] (model units, 0..1000) -> temb, projection as the blocks
        expect: [B, D], [B, 6, D] for one t per sample; [B, N, D], [B, N, 6, D] per frame.
        With a `pooled_text_embedder`, the mean of `context` [B, L, D] joins the embedding."""
        emb = self.condition_embedder
        per_frame = timestep.ndim == 2
        t = emb.timesteps_proj(timestep.flatten())
        t = t.to(next(emb.time_embedder.parameters()).dtype)
        temb = emb.time_embedder(t).to(emb.time_proj.weight.dtype)  # [B(*F), D]
        pooled = getattr(self, "pooled_text_embedder", None)
        if pooled is not None:
            text = pooled(context.mean(1).to(pooled[0].weight.dtype)).to(temb.dtype)  # [B, D]
            temb = temb + (text.repeat_interleave(timestep.shape[1], 0) if per_frame else text)
        proj = emb.time_proj(emb.act_fn(temb)).unflatten(-1, (6, -1))  # [B(*F), 6, D]
        if not per_frame:
            return temb, proj
        b, f = timestep.shape
        temb = temb.view(b, f, 1, -1).expand(b, f, tokens_per_frame, -1).reshape(b, f * tokens_per_frame, -1)
        proj = proj.view(b, f, 1, 6, -1).expand(b, f, tokens_per_frame, 6, -1).reshape(b, f * tokens_per_frame, 6, -1)
        return temb, proj

    def full_attention(self, frames: int, mask: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None) -> FullAttention:
        """Bidirectional (or explicitly masked) attention over `frames` latent frames at
        positions 0..frames-1, or at the given frame `positions`: [frames] for every sample,
        or [B, frames], one row per sample."""
        pos = torch.arange(frames, device=self.rope_tables.t_cos.device) if positions is None else positions
        cos, sin = self.rope_tables.for_frames(pos)
        if pos.ndim == 1:
            cos, sin = cos[None], sin[None]
        return FullAttention(cos, sin, mask, self.attention_backend, frames=pos)

    def clip_attention(self, frames: int) -> FullAttention:
        """How this model sees a whole clip of `frames` latent frames: all at once, or, for a
        frames-only teacher (`frame_time`), each frame on its own at its place in the clip."""
        if getattr(self, "frame_time", None) is None:
            return self.full_attention(frames)
        frame = torch.arange(frames, device=self.rope_tables.t_cos.device).repeat_interleave(self.tokens_per_frame)
        return self.full_attention(frames, mask=(frame[:, None] == frame[None, :])[None, None])

    def embed_patches(self, latents: torch.Tensor) -> torch.Tensor:
        """The Conv3d patch embedding as one matmul over non-overlapping patches: the same
        parameters and result, without CPU's slow generic conv3d path.
        [B, C, F, H, W] -> [B, F * H/p_h * W/p_w, D]"""
        b, c, f, h, w = latents.shape
        p_t, p_h, p_w = self.config.patch_size
        patches = latents.reshape(b, c, f // p_t, p_t, h // p_h, p_h, w // p_w, p_w)
        patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * p_t * p_h * p_w)
        conv = self.patch_embedding
        return nn.functional.linear(patches, conv.weight.flatten(1), conv.bias)

    # --- the forward -----------------------------------------------------------------
    def denoise(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                attention: AttentionMode) -> torch.Tensor:
        """Flow prediction v = noise - x0 (Wan's parameterisation, x_t = (1-s) x0 + s noise).

        latents [B, C, F, H, W]; timestep [B] or [B, F]; context [B, L, D] from
        `embed_text`; returns [B, C, F, H, W]."""
        b, c, f, h, w = latents.shape
        x, temb, proj, (gh, gw) = self._embed(latents, timestep, context, attention)
        for block in self.blocks:
            x = block(x, context, proj, attention)  # [B, N, D]
        if temb.ndim == 3:  # per-token modulation
            shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        flow = unpatchify(self.proj_out(x), f, gh, gw, self.config.patch_size)  # [B, C, F, H, W]
        refiner = getattr(self, "output_refiner", None)
        if refiner is not None:
            flow = flow + refiner(x, flow, latents, timestep, f, gh, gw)
        if getattr(self, "predicts_sample", False):  # the output is x0: its flow (x_t - x0) / s
            s = (timestep.to(flow.dtype) / 1000).clamp_min(SAMPLE_MIN_SIGMA)
            flow = (latents - flow) / (s.view(b, 1, f, 1, 1) if s.ndim == 2 else s.view(b, 1, 1, 1, 1))
        return flow

    def features(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                 attention: AttentionMode, layers: int) -> torch.Tensor:
        """The tokens after the first `layers` blocks [B, N, D], without running the rest
        (what DMD2's discriminator head reads from the critic)."""
        x, _, proj, _ = self._embed(latents, timestep, context, attention)
        for block in self.blocks[:layers]:
            x = block(x, context, proj, attention)
        return x

    def _embed(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
               attention: AttentionMode):
        """-> patch tokens [B, N, D], the time embedding and its projection, the token grid (gh, gw)."""
        _, c, _, h, w = latents.shape
        p_t, p_h, p_w = self.config.patch_size
        if c != self.config.in_channels or h % p_h or w % p_w:
            raise ShapeMismatch(f"latents {tuple(latents.shape)} do not fit in_channels="
                                f"{self.config.in_channels}, patch {self.config.patch_size}")
        gh, gw = h // p_h, w // p_w
        temb, proj = self._time_embedding(timestep, gh * gw, context)
        tokens = self.embed_patches(latents)
        place = getattr(self, "spatial_position", None)
        if place is not None:  # the same table for every frame
            tokens = place(tokens, gh * gw)
        when = getattr(self, "frame_time", None)
        if when is not None:
            if not isinstance(attention, FullAttention) or attention.frames is None:
                raise ShapeMismatch("a frames-only teacher (frame_time) is run on whole clips (clip_attention), "
                                    "not streamed")
            tokens = when(tokens, gh * gw, attention.frames)
        return tokens, temb, proj, (gh, gw)


def unpatchify(x: torch.Tensor, f: int, gh: int, gw: int, patch: tuple[int, int, int]) -> torch.Tensor:
    """Tokens [B, N, C * p_t * p_h * p_w] in (frame, row, column) order -> [B, C, F, H, W]."""
    p_t, p_h, p_w = patch
    x = x.reshape(x.shape[0], f // p_t, gh, gw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


class SpatialPosition(nn.Module):
    """`absolute_positions` (engine/config.py): a learned table [tokens a frame, D], zero at the
    start, added to the patch tokens of every latent frame. A module of its own (registered
    after the blocks) so that a resumed run can gain it."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(tokens, dim))

    def forward(self, tokens: torch.Tensor, per_frame: int) -> torch.Tensor:
        """tokens [B, F * per_frame, D] -> the same plus the table, frame by frame."""
        if self.table.shape[0] != per_frame:
            raise ShapeMismatch(f"frames of {per_frame} tokens, but this model's position table is for "
                                f"{self.table.shape[0]}")
        b, n, d = tokens.shape
        return (tokens.view(b, n // per_frame, per_frame, d) + self.table.to(tokens.dtype)).view(b, n, d)


class FrameTime(nn.Module):
    """`frame_time` (engine/config.py): a learned table [places, D], zero at the start, whose
    row for each latent frame's place in its clip is added to that frame's tokens. A module of
    its own so that a resumed run can gain it."""

    def __init__(self, places: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(places, dim))

    def forward(self, tokens: torch.Tensor, per_frame: int, frames: torch.Tensor) -> torch.Tensor:
        """tokens [B, F * per_frame, D], frames [F] or [B, F] (places) -> the tokens plus their rows."""
        b, n, d = tokens.shape
        f = n // per_frame
        if frames.shape[-1] != f:
            raise ShapeMismatch(f"{f} latent frames but {frames.shape[-1]} places")
        if int(frames.max()) >= self.table.shape[0]:
            raise ShapeMismatch(f"latent frame {int(frames.max())} is past this teacher's {self.table.shape[0]} places")
        rows = self.table.to(tokens.dtype)[frames.to(tokens.device).expand(b, f)]  # [B, F, D]
        return (tokens.view(b, f, per_frame, d) + rows[:, :, None]).view(b, n, d)


class OutputRefiner(nn.Module):
    """`output_refiner` (docs/distill.md): a residual of two 3x3 convolutions per latent frame
    over per-pixel features of the last tokens (a linear map unpatchified as the flow is),
    the flow prediction and the clean estimate x_t - s v it implies. The last convolution starts
    at zero, so a model gains it as a no-op."""

    def __init__(self, dim: int, channels: int, patch: tuple[int, int, int], hidden: int, features: int = 32):
        super().__init__()
        self.patch = tuple(patch)
        self.features = nn.Linear(dim, features * math.prod(patch))
        self.conv_in = nn.Conv2d(features + 2 * channels, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, tokens: torch.Tensor, flow: torch.Tensor, latents: torch.Tensor, timestep: torch.Tensor,
                f: int, gh: int, gw: int) -> torch.Tensor:
        feats = unpatchify(self.features(tokens), f, gh, gw, self.patch)  # [B, K, F, H, W]
        sigma = (timestep.float() / 1000).reshape(timestep.shape[0], 1, -1, 1, 1)  # one s per sample or per frame
        clean = latents - sigma.to(flow.dtype) * flow
        x = torch.cat([feats.to(flow.dtype), flow, clean], 1)  # [B, K + 2C, F, H, W]
        b, c, _, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * f, c, h, w)  # frames apart: nothing crosses time (causal-safe)
        x = self.conv_out(nn.functional.silu(self.conv_in(x)))
        return x.reshape(b, f, -1, h, w).transpose(1, 2)


def build_transformer(config: ModelConfig, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, seed: int | None = 0) -> CausalWanTransformer:
    """A randomly initialised transformer for `config` (weights loaded separately), in
    `dtype` except where diffusers keeps float32 (`_keep_in_fp32_modules`: RoPE, the time
    embedder, every `scale_shift_table`, the norms), as its `from_pretrained(torch_dtype=)`
    does. Parameters are created in `dtype` from the start: a 1.3B model never exists in
    float32 on the way to bfloat16 (5.7 GB instead of 2.8 GB)."""
    if seed is not None:
        torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = CausalWanTransformer.from_config(config.transformer.model_dump())
    finally:
        torch.set_default_dtype(default)
    # Cast tensor by tensor, not with model.to(dtype): diffusers' `to` would cast the
    # float32 modules too (and warns that it does, on every load).
    keep = set(CausalWanTransformer._keep_in_fp32_modules or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            wanted = torch.float32 if keep & set(name.split(".")) else dtype
            tensor.data = tensor.data.to(device=device, dtype=wanted)
    model = model.eval()
    return model.enable_streaming(config)


__all__ = ["CausalWanTransformer", "CrossAttnProcessor", "SelfAttnProcessor", "build_transformer"]
