"""Wan2.1's VAE decoder (diffusers' AutoencoderKLWan), streaming chunk by chunk.

    dec = WanVAEDecoder.load("Wan2.1-T2V-1.3B-Diffusers/vae", device="cuda")
    state = dec.init_decoder_state(batch_size=1)
    frames, state = dec.decode_chunk(latents, state)   # [1, 16, 3, 60, 104] -> [1, 3, 12, 480, 832]

The Wan decoder is causal in time: every causal 3D conv keeps the last two frames of its
input (diffusers' `feat_cache`), and `AutoencoderKLWan._decode` itself runs the decoder one
latent frame at a time through that cache. We run the same loop but keep the cache in the
stream's state between chunks, so decoding chunk by chunk is exactly decoding the whole
sequence (no overlap, no re-decoding).

Latents: the transformer works on normalised latents; the VAE wants raw ones,
z = latents * latents_std + latents_mean (per channel, from the VAE's config), as
diffusers' WanPipeline does before `vae.decode`.

Frame count: Wan decodes the first latent frame to a single video frame and every later
one to four (81 frames from 21 latents). The stream contract is 4 frames per latent frame
(uniform timestamps), so the stream's very first frame is held for 4 frames: it shows for
0.25 s at 16 fps instead of 0.06 s, and every frame after it is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError, ShapeMismatch


@dataclass
class WanVAEState:
    """The decoder's causal cache: one entry per causal conv (its last input frames, or the
    upsampler's 'Rep' marker before its first frame); None before the stream starts."""

    feat_cache: list = field(default_factory=list)
    frames_decoded: int = 0  # latent frames so far


class WanVAEDecoder(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        z = vae.config.z_dim
        self.register_buffer("latents_mean", torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1),
                             persistent=False)
        self.register_buffer("latents_std", torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1),
                             persistent=False)
        self.channels = z
        self.temporal = 2 ** sum(vae.config.temperal_downsample)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "WanVAEDecoder":
        from diffusers import AutoencoderKLWan  # heavy: import on use

        path = Path(path)
        if (path / "vae").is_dir():  # a diffusers Wan root
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no Wan VAE here (no config.json)")
        try:
            vae = AutoencoderKLWan.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype,
                                                   low_cpu_mem_usage=False)  # without accelerate it is off anyway
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot load the Wan VAE ({exc})") from exc
        # Streaming only decodes: the encoder half is dead weight on the GPU.
        vae.encoder, vae.quant_conv = None, None
        return cls(vae).to(device).eval().requires_grad_(False)

    def init_decoder_state(self, batch_size: int) -> WanVAEState:
        return WanVAEState(feat_cache=[None] * self.vae._cached_conv_counts["decoder"])

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, state: WanVAEState | None) -> tuple[torch.Tensor, WanVAEState]:
        """Normalised latents [B, C, F, h, w] -> (frames [B, 3, 4F, 8h, 8w] in [-1, 1], state)."""
        if latents.ndim != 5 or latents.shape[1] != self.channels:
            raise ShapeMismatch(f"latents {tuple(latents.shape)}: expected [B, {self.channels}, F, h, w]")
        state = state if state is not None and state.feat_cache else self.init_decoder_state(latents.shape[0])
        dtype = self.vae.dtype
        raw = latents.to(dtype) * self.latents_std.to(dtype) + self.latents_mean.to(dtype)  # [B, C, F, h, w]
        x = self.vae.post_quant_conv(raw)  # a 1x1x1 conv: no temporal cache
        frames = []
        for f in range(x.shape[2]):
            first = state.frames_decoded == 0
            out = self.vae.decoder(x[:, :, f : f + 1], feat_cache=state.feat_cache, feat_idx=[0], first_chunk=first)
            if first:  # one frame: hold it for `temporal` frames (see the module docstring)
                out = out[:, :, :1].expand(-1, -1, self.temporal, -1, -1)
            frames.append(out)
            state.frames_decoded += 1
        video = torch.cat(frames, dim=2).clamp(-1, 1)  # [B, 3, 4F, H, W]
        return video.float(), state
