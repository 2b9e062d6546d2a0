"""The default model's small video autoencoder, with Wan's latent layout and a streaming
decoder cheap enough to run on every streamed frame.

    ae = ShapesAutoencoder(AutoencoderConfig())
    z = ae.encode(video)                        # [B, 3, T, H, W] in [-1, 1] -> [B, 16, T/4, H/8, W/8]
    state = ae.init_decoder_state(batch_size=B)
    frames, state = ae.decode_chunk(z[:, :, :3], state)   # -> [B, 3, 12, H, W], then the next chunk

Layout (Wan2.1): 4x temporal and 8x spatial compression, so the transformer's 1x2x2
patches see the same token grid a real Wan model would.

Encoder: each group of 4 frames is stacked into channels (time to depth) and squeezed 8x
in space by strided 2D convs. It sees only its own 4 frames: it runs offline (training
data for the teacher), so it needs no memory.

Both halves also have a linear colour path: the encoder adds a 1x1 projection of each
8x8x4 block's mean colour to the latent, and the decoder adds a 1x1 projection of the
latent, spread flat over its 8x8x4 block, to the frames. The deep path then only learns
edges and texture. Without it, ReLU nets this size spend their first few hundred steps
learning to pass a flat colour through at all (measured: 300 steps on Shapes reach
~8 dB held-out PSNR without the path, ~21 dB with it).

Decoder (TAEHV-style): frame-parallel 2D convs. Every MemoryBlock sees its own frame's
features and the previous frame's (a one-frame causal memory), so a chunk is decoded in
one batched pass and only one frame of features per block crosses a chunk boundary;
decoding chunk by chunk therefore equals decoding everything at once. Time grows 1 -> 2 -> 4
frames at the stage boundaries, so most of the work runs at the latent frame rate and low
resolution, and the last conv runs at half resolution with a 2x pixel shuffle (a 24 -> 3
channel conv at full resolution costs the same multiply-adds but runs 5x slower on CPU).

Latents are normalised per channel by `latents_mean` / `latents_std` (as Wan's VAE config
stores them), so the diffusion model sees roughly N(0, 1) latents: `encode` returns
normalised latents, and the decoder takes normalised latents and un-normalises them
first. The network itself works on raw latents, so the statistics are measured once
after training and change nothing the network computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ValidationError, model_validator

from .config import FrozenConfig
from .errors import CheckpointError, ShapeMismatch

WEIGHTS_NAME = "autoencoder.safetensors"
CONFIG_NAME = "autoencoder.json"


class AutoencoderConfig(FrozenConfig):
    """Everything needed to rebuild the network; what autoencoder.json holds."""

    latent_channels: int = 16
    # Encoder widths at 1/2, 1/4 and 1/8 of the frame size.
    encoder_channels: tuple[int, int, int] = (32, 64, 128)
    # Decoder widths and MemoryBlocks per stage, at 1/8, 1/4 and 1/2 of the frame size; the
    # stage boundaries double space and multiply time by `decoder_time_growth`.
    decoder_channels: tuple[int, int, int] = (96, 48, 24)
    decoder_blocks: tuple[int, int, int] = (2, 2, 1)
    decoder_time_growth: tuple[int, int] = (2, 2)
    # Per-channel statistics of the encoder's raw output (empty: 0 and 1). Set by training.
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()
    # What the weights were trained on (informational; the network is fully convolutional).
    height: int = 128
    width: int = 128
    fps: int = 16

    # Wan's layout, which the network's strides and stages are built for.
    temporal_compression: ClassVar[int] = 4
    spatial_compression: ClassVar[int] = 8

    @model_validator(mode="after")
    def _check(self) -> "AutoencoderConfig":
        growth = 1
        for g in self.decoder_time_growth:
            growth *= g
        if growth != self.temporal_compression:
            raise ValueError(f"decoder_time_growth {self.decoder_time_growth} must multiply to 4")
        for name in ("latents_mean", "latents_std"):
            stats = getattr(self, name)
            if stats and len(stats) != self.latent_channels:
                raise ValueError(f"{name} has {len(stats)} values for {self.latent_channels} channels")
        if self.latents_std and min(self.latents_std) <= 0:
            raise ValueError("latents_std must be positive")
        return self


# --- building blocks ---------------------------------------------------------------------


def conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))): the encoder's block (it starts as the identity, see _init_weights)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.conv2 = conv(channels, channels), conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, c, h, w] -> [N, c, h, w]
        return x + self.conv2(F.relu(self.conv1(x)))


class MemoryBlock(nn.Module):
    """y_t = x_t + conv(relu(conv([x_t, x_{t-1}]))): each frame sees its predecessor's input
    features (TAEHV's causal memory). `past` is x_{t-1} of the chunk's first frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.conv2 = conv(2 * channels, channels), conv(channels, channels)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, F, c, h, w]; past: [B, c, h, w] -> y [B, F, c, h, w], next past [B, c, h, w]
        b, f, c, h, w = x.shape
        previous = torch.cat([past.unsqueeze(1), x[:, :-1]], dim=1)  # [B, F, c, h, w]
        both = torch.cat([x, previous], dim=2).reshape(b * f, 2 * c, h, w)
        y = x.reshape(b * f, c, h, w) + self.conv2(F.relu(self.conv1(both)))
        return y.reshape(b, f, c, h, w), x[:, -1]


class Grow(nn.Module):
    """Nearest 2x upsample, then one conv whose output channels unfold into `time` frames:
    space x2, time x`time`. The conv's filters are shared by all four sub-pixel positions;
    a pixel shuffle would give each position its own filters and a quarter of the data
    (measured on Shapes: 26 dB held-out PSNR after 500 steps this way, 25 dB after 2400
    steps with pixel shuffles, for the same multiply-adds)."""

    def __init__(self, c_in: int, c_out: int, time: int):
        super().__init__()
        self.time, self.c_out = time, c_out
        self.conv = conv(c_in, c_out * time)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, F, c_in, h, w] -> [B, F*time, c_out, 2h, 2w]
        b, f, c, h, w = x.shape
        y = self.conv(F.interpolate(x.reshape(b * f, c, h, w), scale_factor=2))  # [B*F, time*c_out, 2h, 2w]
        y = F.relu(y.reshape(b * f * self.time, self.c_out, 2 * h, 2 * w))  # frames of one group stay adjacent
        return y.reshape(b, f * self.time, self.c_out, 2 * h, 2 * w)


@dataclass
class DecoderState:
    """What crosses a chunk boundary: each MemoryBlock's input features of the last frame it
    saw (None before the first chunk: the first frame's past is zeros)."""

    past: list[torch.Tensor | None]
    frames_decoded: int = 0


# --- the network ---------------------------------------------------------------------------


class ShapesAutoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()):
        super().__init__()
        self.config = config
        c, e, d = config.latent_channels, config.encoder_channels, config.decoder_channels
        # Encoder: [12 = 4 frames x RGB] -> space-to-depth 2x -> 48 channels at 1/2 size.
        self.encoder = nn.Sequential(
            conv(4 * 3 * 4, e[0]), nn.ReLU(), ResBlock(e[0]),
            conv(e[0], e[1], stride=2), nn.ReLU(), ResBlock(e[1]),
            conv(e[1], e[2], stride=2), nn.ReLU(), ResBlock(e[2]),
            conv(e[2], c),
        )
        self.decoder_in = conv(c, d[0])
        self.stages = nn.ModuleList(nn.ModuleList(MemoryBlock(d[i]) for _ in range(config.decoder_blocks[i]))
                                    for i in range(3))
        self.grows = nn.ModuleList(Grow(d[i], d[i + 1], config.decoder_time_growth[i]) for i in range(2))
        self.decoder_out = conv(d[2], 3 * 4)  # then a 2x pixel shuffle to full size
        self.encoder_colour = nn.Conv2d(4 * 3, c, 1)  # block-mean colour of 4 frames -> latent
        self.decoder_colour = nn.Conv2d(c, 4 * 3, 1)  # latent -> flat colour of 4 frames
        self._init_weights()
        mean = config.latents_mean or (0.0,) * c
        std = config.latents_std or (1.0,) * c
        # Not saved in the safetensors file: the config is their one home.
        self.register_buffer("latents_mean", torch.tensor(mean), persistent=False)  # [C]
        self.register_buffer("latents_std", torch.tensor(std), persistent=False)  # [C]

    def _init_weights(self) -> None:
        """Variance-preserving init, as there are no normalisation layers (a norm over the frame
        would make a crop-trained decoder behave differently on full frames; torch's default
        init shrinks the signal layer by layer until the random biases dominate it). He init
        for convs followed by a ReLU, unit gain for the linear ones, zero biases, residual
        branches ending in zeros (each block starts as the identity), and zero output and
        colour-out convs: the first frames are flat grey rather than noise, which the edge loss
        would otherwise first teach the net to erase by shrinking every feature."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.kaiming_normal_(self.encoder[-1].weight, nonlinearity="linear")
        for module in self.modules():
            if isinstance(module, (ResBlock, MemoryBlock)):
                nn.init.kaiming_normal_(module.conv1.weight, nonlinearity="relu")
                nn.init.zeros_(module.conv2.weight)
        nn.init.zeros_(self.decoder_out.weight)
        nn.init.kaiming_normal_(self.encoder_colour.weight, nonlinearity="linear")
        nn.init.zeros_(self.decoder_colour.weight)

    # --- encoder ---------------------------------------------------------------------------

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> un-normalised latents [B, C, T/4, H/8, W/8]"""
        b, _, t, h, w = video.shape
        if t % 4 or h % 8 or w % 8:
            raise ShapeMismatch(f"video {tuple(video.shape)}: T must divide by 4, H and W by 8")
        x = video.reshape(b, 3, t // 4, 4, h, w).permute(0, 2, 3, 1, 4, 5)  # [B, T/4, 4, 3, H, W]
        x = x.reshape(b * t // 4, 12, h, w)  # 4 frames stacked in channels
        z = self.encoder(F.pixel_unshuffle(x, 2))  # [B*T/4, C, H/8, W/8] (48 channels at H/2 in)
        z = z + self.encoder_colour(F.avg_pool2d(x, 8))
        return z.reshape(b, t // 4, -1, h // 8, w // 8).transpose(1, 2)

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:  # [B, C, F, h, w] -> same
        return (raw - self.latents_mean.view(-1, 1, 1, 1)) / self.latents_std.view(-1, 1, 1, 1)

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:  # [B, C, F, h, w] -> same
        return latents * self.latents_std.view(-1, 1, 1, 1) + self.latents_mean.view(-1, 1, 1, 1)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> normalised latents [B, C, T/4, H/8, W/8]"""
        return self.normalise(self.encode_raw(video.to(self.decoder_in.weight.dtype)))

    # --- streaming decoder ----------------------------------------------------------------

    def init_decoder_state(self, batch_size: int) -> DecoderState:
        return DecoderState(past=[None] * sum(self.config.decoder_blocks))

    def decode_chunk(self, latents: torch.Tensor, state: DecoderState | None) -> tuple[torch.Tensor, DecoderState]:
        """Normalised latents [B, C, F, h, w] -> (frames [B, 3, 4F, 8h, 8w] in [-1, 1], state).
        Gradients flow where parameters want them (training uses this same code); `load()`
        returns a model with gradients off, so streaming builds no autograd graph."""
        if latents.ndim != 5 or latents.shape[1] != self.config.latent_channels:
            raise ShapeMismatch(f"latents {tuple(latents.shape)}: expected [B, {self.config.latent_channels}, F, h, w]")
        state = state or self.init_decoder_state(latents.shape[0])
        b, c, f, h, w = latents.shape
        raw = self.denormalise(latents.to(self.decoder_in.weight.dtype))
        x = raw.transpose(1, 2).reshape(b * f, c, h, w)
        colour = F.interpolate(self.decoder_colour(x), scale_factor=8)  # [B*F, 4*3, 8h, 8w], flat blocks
        x = F.relu(self.decoder_in(x)).reshape(b, f, -1, h, w)  # [B, F, d0, h, w]
        new_past, k = [], 0
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                past = state.past[k] if state.past[k] is not None else x.new_zeros(x[:, 0].shape)
                x, last = block(x, past)
                new_past.append(last)
                k += 1
            if i < len(self.grows):
                x = self.grows[i](x)  # [B, F', d_i, h', w'] -> [B, F'*g, d_{i+1}, 2h', 2w']
        b, frames, d, h2, w2 = x.shape
        rgb = F.pixel_shuffle(self.decoder_out(x.reshape(b * frames, d, h2, w2)), 2)  # [B*4F, 3, 8h, 8w]
        rgb = rgb + colour.reshape(b * frames, 3, 2 * h2, 2 * w2)  # frame 4f+k <- channels 3k..3k+2 of f
        # Clamp to [-1, 1]; in training with a straight-through gradient, as a hard clamp stops
        # training every pixel whose output has overshot, and an overshooting bias never comes back.
        rgb = rgb - (rgb - rgb.clamp(-1, 1)).detach() if rgb.requires_grad else rgb.clamp(-1, 1)
        rgb = rgb.reshape(b, frames, 3, 2 * h2, 2 * w2).transpose(1, 2)
        return rgb.float(), DecoderState(new_past, state.frames_decoded + frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, F, h, w] -> video [B, 3, 4F, 8h, 8w]: the stream in one chunk."""
        return self.decode_chunk(latents, None)[0]

    # --- latent statistics and files ---------------------------------------------------------

    def with_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the per-channel normalisation ([C] each) in the buffers and the config alike."""
        self.latents_mean.copy_(mean.view_as(self.latents_mean))
        self.latents_std.copy_(std.view_as(self.latents_std))
        self.config = self.config.model_copy(update={"latents_mean": tuple(mean.tolist()),
                                                     "latents_std": tuple(std.tolist())})

    def save(self, directory: str | Path) -> None:
        from .checkpoints.files import save_weights

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().contiguous() for k, v in self.state_dict().items()}
        save_weights(tensors, directory / WEIGHTS_NAME)
        (directory / CONFIG_NAME).write_text(self.config.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "ShapesAutoencoder":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            config = AutoencoderConfig.model_validate_json((directory / CONFIG_NAME).read_text())
        except (OSError, ValueError, ValidationError) as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME}: cannot read autoencoder config: {exc}") from exc
        model = cls(config)
        try:
            tensors = load_file(str(directory / WEIGHTS_NAME))
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: cannot read weights: {exc}") from exc
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory / WEIGHTS_NAME} does not match {CONFIG_NAME}: {exc}") from exc
        return model.eval().requires_grad_(False)  # loaded weights are for inference; training builds from a config


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["AutoencoderConfig", "ShapesAutoencoder", "DecoderState", "WEIGHTS_NAME", "CONFIG_NAME",
           "parameter_count"]
