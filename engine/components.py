"""Text encoders and latent decoders behind two small interfaces, and the stand-ins
used by the random-weight test model.

TextEncoder.encode(prompts) -> [B, max_tokens, dim] float32, padding exactly zero
    (as Wan zero-pads umT5 context).
LatentDecoder: init_state(batch) -> state; decode_chunk(latents [B,C,F,h,w], state) ->
    (frames [B, 3, F*temporal, H, W] in [-1, 1], state). Streaming: decoding chunk by
    chunk equals decoding the whole sequence.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from .config import ModelConfig
from .errors import CheckpointError


class TextEncoder(Protocol):
    dim: int
    max_tokens: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


class LatentDecoder(Protocol):
    def init_decoder_state(self, batch_size: int) -> Any: ...

    def decode_chunk(self, latents: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


class HashTextEncoder:
    """Deterministic bag-of-words stand-in: each lower-cased word maps to a fixed random
    vector seeded by its hash. No weights; for tests and the tiny random model."""

    def __init__(self, dim: int, max_tokens: int):
        self.dim, self.max_tokens = dim, max_tokens

    def _word(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed % 2**63))

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.max_tokens, self.dim)
        for i, prompt in enumerate(prompts):
            words = re.findall(r"[a-z0-9]+", prompt.lower())[: self.max_tokens]
            for j, word in enumerate(words):
                out[i, j] = self._word(word)
        return out


class StandInDecoder(nn.Module):
    """A fixed random 1x1 projection of latent channels to RGB, nearest-upsampled 8x in
    space and repeated 4x in time. Stateless, so trivially streaming."""

    def __init__(self, channels: int, temporal: int = 4, spatial: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3, channels, generator=g) / channels**0.5)
        self.temporal, self.spatial = temporal, spatial

    def init_decoder_state(self, batch_size: int) -> None:
        return None

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        rgb = torch.einsum("oc,bcfhw->bofhw", self.proj.to(latents.dtype), latents).tanh()  # [B, 3, F, h, w]
        rgb = rgb.repeat_interleave(self.temporal, 2)
        rgb = rgb.repeat_interleave(self.spatial, 3).repeat_interleave(self.spatial, 4)
        return rgb, None


def from_local(loader: Any, path: str | Path, **kwargs: Any) -> Any:
    """`loader.from_pretrained(path)` (a transformers class) from a local directory, never
    from a model hub: local_files_only makes a folder that lacks a file fail at once instead
    of turning into a download. (Setting HF_HUB_OFFLINE instead would be process-wide, and
    too late once diffusers has imported huggingface_hub, which reads it at import.)"""
    return loader.from_pretrained(str(path), local_files_only=True, **kwargs)


def resolve(model_dir: Path | None, path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() or model_dir is None else model_dir / p


def build_text_encoder(config: ModelConfig, model_dir: Path | None, device: str,
                       dtype: torch.dtype = torch.float32) -> TextEncoder:
    """dtype: the network's (umT5 only: in bfloat16 umt5-xxl is 11 GB instead of 23); the
    encoders always return float32 features."""
    te = config.text_encoder
    if te.kind == "hash":
        return HashTextEncoder(te.dim, te.max_tokens)
    if te.kind == "minilm":
        from .text_encoder import MiniLMTextEncoder  # transformers is heavy: import on use

        return MiniLMTextEncoder(model_dir=resolve(model_dir, te.path), max_tokens=te.max_tokens, device=device,
                                 feature_norm=te.feature_norm, **({"sha256": te.sha256} if te.sha256 else {}))
    if te.kind == "shapes":
        from .shapes.slots import ShapesTextEncoder

        return ShapesTextEncoder(te.dim, te.max_tokens, te.feature_norm)
    if te.kind == "umt5":
        from .text_umt5 import UMT5TextEncoder

        if te.path is None:
            raise CheckpointError("text_encoder.path is not set: the umT5 encoder loads from a local Wan folder")
        return UMT5TextEncoder(resolve(model_dir, te.path), max_tokens=te.max_tokens, device=device, dtype=dtype)
    raise NotImplementedError(f"text encoder kind {te.kind!r} is not available in this build")


def build_decoder(config: ModelConfig, model_dir: Path | None, device: str,
                  dtype: torch.dtype = torch.float32) -> LatentDecoder:
    """dtype: the model's (engine.model.model_dtype), which the Wan VAE and TAEHV take; the
    default model's Shapes autoencoder and the stand-in stay float32."""
    dec = config.decoder
    lat = config.latent
    if dec.kind == "standin":
        return StandInDecoder(lat.channels, lat.temporal_compression, lat.spatial_compression).to(device)
    if dec.kind == "shapes_ae":
        from .autoencoder import ShapesAutoencoder

        return ShapesAutoencoder.load(resolve(model_dir, dec.path) or model_dir).to(device).eval()
    if dec.kind in ("wan_vae", "taehv") and dec.path is None:
        raise CheckpointError(f"decoder.path is not set: the {dec.kind} decoder loads its weights from a local path")
    if dec.kind == "wan_vae":
        from .wan_vae import WanVAEDecoder

        decoder = WanVAEDecoder.load(resolve(model_dir, dec.path), device=device, dtype=dtype)
        if decoder.channels != lat.channels:
            raise CheckpointError(f"{dec.path}: Wan VAE with {decoder.channels} latent channels, "
                                  f"the model has {lat.channels}")
        return decoder
    if dec.kind == "taehv":
        from .taehv import TAEHVDecoder

        taehv = TAEHVDecoder.load(resolve(model_dir, dec.path), latent_channels=lat.channels)
        return taehv.to(device=device, dtype=dtype)
    raise NotImplementedError(f"decoder kind {dec.kind!r} is not available in this build")
