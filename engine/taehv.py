"""A tiny streaming decoder for Wan2.1 latents, TAEHV-style, that loads the public
`taew2_1` weights (github.com/madebyollin/taehv: taew2_1.pth or
safetensors/taew2_1.safetensors; only its `decoder.*` tensors are used).

    dec = TAEHVDecoder.load("taew2_1.safetensors", latent_channels=16).to("cuda")
    state = dec.init_decoder_state(1)
    frames, state = dec.decode_chunk(latents, state)   # [1, 16, 3, 60, 104] -> [1, 3, 12, 480, 832]

Network (what the weights' `decoder.N` indices name): a soft clamp of the latents, a 3x3
conv, then three stages of [3 MemBlocks, 2x nearest upsample, TimeGrow, 3x3 conv] and a
final ReLU + 3x3 conv to RGB in [0, 1]. Every layer is per frame except:
- MemBlock: y_t = relu(convs([x_t, x_{t-1}]) + x_t), one frame of causal memory, so a
  chunk runs in one batched pass and only each block's last input frame crosses a chunk
  boundary: decoding chunk by chunk equals decoding the whole sequence.
- TimeGrow: a 1x1 conv to `stride` times the channels, unfolded into `stride` frames
  (1, 2, 2 for taew2_1: 4 video frames per latent frame).

It takes the transformer's normalised latents directly (it was trained on them, as
Self-Forcing's demo uses it). Like Wan's VAE it was trained to yield 1 + 4(F-1) frames:
its first three raw frames are warm-up and dropped; we hold the first real frame in their
place so every chunk carries 4F frames (see engine/wan_vae.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CheckpointError, ShapeMismatch

# Indices in the `decoder` Sequential of the layers whose shapes fix the architecture.
STAGE_CONVS = (1, 8, 14, 20)  # conv into stage i (its out channels = width of stage i)
TIME_GROWS = (7, 13, 19)
OUT_CONV = 22


@dataclass(frozen=True)
class TAEHVConfig:
    latent_channels: int = 16
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)  # taew2_1
    time_growth: tuple[int, int, int] = (1, 2, 2)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str) -> "TAEHVConfig":
        """The architecture from the weights' shapes, so the real file and tiny test files
        load through the same code."""
        try:
            first = state["decoder.1.weight"]
            widths = tuple(int(state[f"decoder.{i}.weight"].shape[0]) for i in STAGE_CONVS)
            growth = tuple(int(state[f"decoder.{i}.conv.weight"].shape[0]) // widths[n]
                           for n, i in enumerate(TIME_GROWS))
            out = state[f"decoder.{OUT_CONV}.weight"]
        except KeyError as exc:
            variant = " (a 'super' TAEHV variant?)" if "decoder.0.weight" in state else ""
            raise CheckpointError(f"{source}: not a TAEHV decoder{variant}: missing {exc}") from exc
        if out.shape[0] != 3:
            raise CheckpointError(f"{source}: decoder outputs {out.shape[0]} channels; only patch-size-1 "
                                  "TAEHV weights (taew2_1, 3 RGB channels) are supported")
        return cls(latent_channels=int(first.shape[1]), widths=widths, time_growth=growth)


def conv3x3(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """Latents squashed into (-3, 3) so outliers cannot blow up the small convs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * torch.tanh(x / 3)


class MemBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(2 * channels, channels), nn.ReLU(),
                                  conv3x3(channels, channels), nn.ReLU(), conv3x3(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        # x, past: [N, c, h, w] (past = the previous frame's x) -> [N, c, h, w]
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TimeGrow(nn.Module):
    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, F, c, h, w] -> [B, F*stride, c, h, w]; frame t's channel group j becomes frame t*stride + j
        b, f, c, h, w = x.shape
        return self.conv(x.flatten(0, 1)).reshape(b, f * self.stride, c, h, w)


@dataclass
class TAEHVState:
    past: dict[int, torch.Tensor] = field(default_factory=dict)  # MemBlock index -> last input frame [B, c, h, w]
    frames_decoded: int = 0  # video frames emitted so far


class TAEHVDecoder(nn.Module):
    def __init__(self, config: TAEHVConfig = TAEHVConfig()):
        super().__init__()
        self.config = config
        w, g = config.widths, config.time_growth
        layers: list[nn.Module] = [SoftClamp(), conv3x3(config.latent_channels, w[0]), nn.ReLU()]
        for stage in range(3):
            layers += [MemBlock(w[stage]) for _ in range(3)]
            layers += [nn.Upsample(scale_factor=2), TimeGrow(w[stage], g[stage]),
                       conv3x3(w[stage], w[stage + 1], bias=False)]
        layers += [nn.ReLU(), conv3x3(w[3], 3)]
        self.decoder = nn.Sequential(*layers)
        self.temporal = g[0] * g[1] * g[2]

    @classmethod
    def load(cls, path: str | Path, latent_channels: int) -> "TAEHVDecoder":
        from .checkpoints.files import read_weights

        path = Path(path)
        state = {k: v for k, v in read_weights(path).items() if k.startswith("decoder.")}
        config = TAEHVConfig.from_state_dict(state, str(path))
        if config.latent_channels != latent_channels:
            raise CheckpointError(f"{path}: TAEHV decoder for {config.latent_channels} latent channels, "
                                  f"the model has {latent_channels}")
        model = cls(config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong:
            raise CheckpointError(f"{path}: TAEHV decoder weights do not fit: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    def init_decoder_state(self, batch_size: int) -> TAEHVState:
        return TAEHVState()

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, state: TAEHVState | None) -> tuple[torch.Tensor, TAEHVState]:
        """Normalised latents [B, C, F, h, w] -> (frames [B, 3, 4F, 8h, 8w] in [-1, 1], state)."""
        if latents.ndim != 5 or latents.shape[1] != self.config.latent_channels:
            raise ShapeMismatch(f"latents {tuple(latents.shape)}: expected [B, {self.config.latent_channels}, F, h, w]")
        state = state or self.init_decoder_state(latents.shape[0])
        weight = self.decoder[1].weight
        x = latents.to(weight.dtype).transpose(1, 2)  # [B, F, C, h, w]
        b = x.shape[0]
        past: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                previous = state.past.get(i, torch.zeros_like(x[:, 0]))
                shifted = torch.cat([previous.unsqueeze(1), x[:, :-1]], dim=1)  # x_{t-1} for every t
                past[i] = x[:, -1].clone()  # a copy: a view would keep the whole chunk's activations alive
                x = layer(x.flatten(0, 1), shifted.flatten(0, 1)).unflatten(0, (b, -1))
            elif isinstance(layer, TimeGrow):
                x = layer(x)
            else:
                x = layer(x.flatten(0, 1)).unflatten(0, (b, -1))
        rgb = x.clamp(0, 1).mul(2).sub(1)  # [B, 4F, 3, H, W] in [-1, 1]
        warmup = self.temporal - 1 - state.frames_decoded
        if warmup > 0:  # the stream's first raw frames are warm-up: hold the first real frame instead
            rgb = torch.cat([rgb[:, warmup : warmup + 1].expand(-1, warmup, -1, -1, -1), rgb[:, warmup:]], dim=1)
        return rgb.transpose(1, 2).float(), TAEHVState(past, state.frames_decoded + rgb.shape[1])
