"""A small video reward model for the Shapes world, trained by distill/rewards/train.py.

    reward = ShapesVideoReward.load("distill/rewards/weights/shapes-reward")
    scores = reward.score(video, prompts)  # video [B, 3, T, H, W] in [-1, 1]
    # {"visual": [B], "motion": [B], "text": [B], "motion_magnitude": [B]}

One convolutional trunk over the clip and its frame differences (per-frame 2D convs
with temporal convs between them), three heads:
- visual: an MLP on multi-scale pooled features (real clips above blurred, noisy,
  colour-shifted, blocky or flickering ones),
- motion: an MLP on the same pooled features plus pooled feature change over time
  (real motion above shuffled, frozen, stuttering, shaking or back-and-forth clips),
- text (the caption above captions of other scenes or with one attribute swapped): how
  well the attributes the caption names (colours, shapes, motions, background; read from
  its MiniLM token features) agree with those the clip shows, plus a token-level match
  in which the caption's MiniLM token features cross-attend to the trunk's space-time
  tokens (softmax attention and each word's best match anywhere in the clip). Token
  features rather than the mean-pooled sentence vector: a colour word must not be
  diluted by the rest of the sentence, and "red ball, blue square" must keep which
  colour goes with which shape, as it does for the generator.
plus the analytic motion_magnitude (base.motion_magnitude).

No normalisation layers: batch statistics would couple the samples of a batch (a
sample's saliency would depend on the others), and a group norm on the stem would
subtract exactly the colour shift and flicker the visual head has to see.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from engine.shapes import vocab
from engine.config import FrozenConfig

from .base import DIMENSIONS, MANIFEST, check_video, motion_magnitude

WEIGHTS = "reward.safetensors"
ATTRIBUTE_SCALE = 10.0  # logit scale of the attribute cosine (fixed: a learnt one only grows)
EPS = 1e-6
# What captions talk about, one multi-hot slot each: every object's colour, shape and
# motion is in every caption; the background colour in most.
ATTRIBUTES: tuple[str, ...] = (
    tuple(f"colour:{c}" for c in vocab.OBJECT_COLOURS) + tuple(f"background:{c}" for c in vocab.ALL_COLOURS)
    + tuple(f"shape:{s}" for s in vocab.SHAPES) + tuple(f"motion:{m}" for m in vocab.MOTIONS))


@functools.lru_cache(maxsize=2)
def text_encoder(max_tokens: int):
    """The MiniLM encoder, one per process (it is frozen and 90 MB; every reward model and
    the trainer share it)."""
    from engine.text_encoder import MiniLMTextEncoder

    return MiniLMTextEncoder(max_tokens=max_tokens)


class ShapesRewardConfig(FrozenConfig):
    height: int = 128  # frames are resized to this before the trunk (the default model's size)
    width: int = 128
    stem_channels: int = 16  # 4x4 patches, stride 4
    colour_channels: int = 16  # per-pixel colour features (at half resolution)
    channels: tuple[int, int] = (32, 64)  # the two stride-2 stages after the stem
    heads_hidden: int = 64  # width of the visual / motion / token-score MLPs
    attention_heads: int = 4
    text_dim: int = 384  # MiniLM's token feature width
    max_tokens: int = 32  # MiniLM tokens per caption
    attributes: tuple[str, ...] = ATTRIBUTES  # the attribute heads' slots, in order


# --- building blocks -------------------------------------------------------------------------


class FrameConv(nn.Module):
    """A 2D convolution applied to every frame. [B, T, C, H, W] -> [B, T, C', H/s, W/s]
    (frames-first layout throughout the trunk, so per-frame convs are free views)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - stride + 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        y = self.conv(x.flatten(0, 1))  # [B*T, C', h', w']
        return y.view(b, t, *y.shape[1:])


class PatchStem(nn.Module):
    """The stem: each frame and its difference from the previous frame (zero at t=0),
    cut into 4x4 patches, projected linearly to c channels. A stride-4 4x4 convolution on
    [x_t, x_t - x_(t-1)], computed as one matmul over patches (CPU's generic convolution
    is several times slower at full resolution) and by linearity: with A = P(x) W_f and
    Z = P(x) W_d, y_t = A_t + Z_t - Z_(t-1), so the difference video is never built.
    [B, T, 3, H, W] -> [B, T, c, H/4, W/4]"""

    def __init__(self, channels: int, patch: int = 4):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.proj = nn.Linear(3 * patch * patch, 2 * channels, bias=False)  # [W_f | W_d]
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = frames.shape
        p = self.patch
        patches = frames.reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        projected = self.proj(patches.reshape(b, t, h // p, w // p, c * p * p))  # [B, T, h, w, 2c]
        frame_part, diff_part = projected.split(self.channels, dim=-1)
        change = torch.cat([torch.zeros_like(diff_part[:, :1]), diff_part[:, 1:] - diff_part[:, :-1]], dim=1)
        return (frame_part + change + self.bias).permute(0, 1, 4, 2, 3)  # [B, T, c, h, w]


class TemporalResidual(nn.Module):
    """x + silu(W [x(t-1), x(t), x(t+1)]): a kernel-3 convolution over time (zero past the
    ends) as one 1x1 convolution of the stacked neighbours, then optionally a 3x3 conv per
    frame, the (2+1)D factorisation of a 3x3x3 convolution. [B, T, C, H, W] -> same"""

    def __init__(self, channels: int, spatial: bool):
        super().__init__()
        self.time = FrameConv(3 * channels, channels, 1, 1)
        self.space = FrameConv(channels, channels, 3, 1) if spatial else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = F.pad(x, (0, 0, 0, 0, 0, 0, 1, 1))  # [B, T+2, C, H, W]
        y = F.silu(self.time(torch.cat([pad[:, :-2], x, pad[:, 2:]], dim=2)))  # [B, T, 3C, H, W] -> [B, T, C, H, W]
        if self.space is not None:
            y = F.silu(self.space(y))
        return x + y


def mlp(c_in: int, hidden: int, c_out: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, hidden), nn.SiLU(), nn.Linear(hidden, c_out))


# --- the network --------------------------------------------------------------------------------


class ShapesVideoReward(nn.Module):
    dimensions: tuple[str, ...] = DIMENSIONS + ("motion_magnitude",)

    def __init__(self, config: ShapesRewardConfig = ShapesRewardConfig()):
        super().__init__()
        self.config = config
        c0, (c1, c2) = config.stem_channels, config.channels
        self.stem = PatchStem(c0)  # RGB + frame difference, 4x4 patches
        cc = config.colour_channels
        self.colours = nn.Sequential(nn.Conv2d(3, cc, 1), nn.SiLU(), nn.Conv2d(cc, cc, 1), nn.SiLU())
        self.down1 = FrameConv(c0, c1, 3, 2)
        self.block1 = TemporalResidual(c1, spatial=False)
        self.down2 = FrameConv(c1, c2, 3, 2)
        self.block2 = TemporalResidual(c2, spatial=True)
        pooled = 2 * c0 + c1 + 3 * c2 + 2 * cc  # stage means, stem spread, last stage max and change, colours
        self.visual_head = mlp(pooled, config.heads_hidden)
        self.motion_head = mlp(pooled, config.heads_hidden)
        self.video_norm = nn.LayerNorm(c2)
        self.text_in = nn.Linear(config.text_dim, c2)
        self.text_norm = nn.LayerNorm(c2)
        self.cross = nn.MultiheadAttention(c2, config.attention_heads, batch_first=True)
        self.match_query = nn.Linear(c2, c2)
        self.match_key = nn.Linear(c2, c2)
        self.token_score = mlp(3 * c2 + config.attention_heads, config.heads_hidden)
        attributes = len(config.attributes)
        self.clip_attributes = mlp(pooled, config.heads_hidden, attributes)  # what the clip shows
        self.caption_attributes = mlp(config.text_dim, config.heads_hidden, attributes)  # what the caption says
        # Objects are always all named, so a shown object attribute the caption lacks counts
        # against it; backgrounds are sometimes left out, so a shown one counts only when the
        # caption names some background.
        self.register_buffer("two_sided", torch.tensor([not a.startswith("background:") for a in config.attributes]),
                             persistent=False)
        self._text_cache: dict[str, torch.Tensor] = {}  # prompt -> features; MiniLM is not part of the weights

    # --- trunk ------------------------------------------------------------------------------

    def features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, 3, T, H, W] -> pooled [B, P] (visual / motion heads), tokens [B, N, C2]
        (N = T * H/16 * W/16, what the caption attends to)."""
        check_video(video)
        b, _, t, h, w = video.shape
        c = self.config
        frames = video.transpose(1, 2)  # [B, T, 3, H, W]
        if (h, w) != (c.height, c.width):
            frames = F.interpolate(frames.flatten(0, 1), size=(c.height, c.width), mode="bilinear", antialias=True,
                                   align_corners=False).view(b, t, 3, c.height, c.width)
        f0 = F.silu(self.stem(frames))  # [B, T, c0, H/4, W/4]
        f1 = self.block1(F.silu(self.down1(f0)))  # [B, T, c1, H/8, W/8]
        f2 = self.block2(F.silu(self.down2(f1)))  # [B, T, c2, H/16, W/16]
        change = (f2[:, 1:] - f2[:, :-1]).abs().mean(dim=(1, 3, 4))  # [B, c2]
        spread = f0.std(dim=(3, 4)).mean(dim=1)  # [B, c0]: how much detail each frame has (blur, blocks vs noise)
        peak = f2.amax(dim=(1, 3, 4))  # [B, c2]: whether something is anywhere in the clip (a small object)
        # Per-pixel colour features, max and mean over the clip: "is there red anywhere" is
        # a function of single pixels, learnt from every pixel at once.
        colours = self.colours(F.avg_pool2d(frames.flatten(0, 1), 2)).view(b, t, -1, c.height // 2, c.width // 2)
        colour_stats = [colours.amax(dim=(1, 3, 4)), colours.mean(dim=(1, 3, 4))]  # 2 x [B, cc]
        pooled = torch.cat([f.mean(dim=(1, 3, 4)) for f in (f0, f1, f2)] + [spread, peak, change] + colour_stats,
                           dim=1)  # [B, P]
        tokens = f2.permute(0, 1, 3, 4, 2).flatten(1, 3)  # [B, T*h*w, c2]
        return pooled, tokens

    def named_attributes(self, text: torch.Tensor) -> torch.Tensor:
        """text [B, L, text_dim] token features (padding exactly zero) -> [B, A] logits of
        what the caption names: each token's logits, max over the caption's tokens ("red"
        names colour:red wherever it stands; a mean over the sentence would dilute it)."""
        mask = text.abs().sum(-1, keepdim=True) > 0  # [B, L, 1]
        return self.caption_attributes(text).masked_fill(~mask, -1e4).amax(1)

    def text_alignment(self, pooled: torch.Tensor, tokens: torch.Tensor, text: torch.Tensor,
                       attribute_grad: bool = True) -> torch.Tensor:
        """pooled [B, P] and tokens [B, N, C2] of the clips (features()), text [B, L,
        text_dim] MiniLM token features -> [B], the sum of two terms.

        Attributes: with p = sigmoid(named_attributes) what the caption names and
        q = sigmoid(clip_attributes) what the clip shows (both heads also trained on the
        Shapes scene labels, which is what makes this term learn in hundreds of steps),
        10 cos(p, q'), q' = q with the background slots kept only where the caption names
        a background. A cosine, not a likelihood: a caption naming three objects must not
        lose to one naming one object merely for saying more; one attribute wrong out of
        four costs about a quarter of it.
        Tokens: the mean over the caption's tokens of each token's match with the clip;
        each token sees what it attends to (softmax attention) and, per head, its best
        match anywhere in the clip (max over the clip's tokens, as ColBERT's MaxSim), the
        capacity for what a bag of attributes cannot say (which colour goes with which
        shape).

        attribute_grad=False (training) makes the attribute term a constant to the
        ranking loss: the attribute heads learn from the scene labels alone, which a
        ranking gradient through a still-random head would only drown in noise."""
        b, length = text.shape[:2]
        heads = self.config.attention_heads
        mask = (text.abs().sum(-1) > 0).float()  # [B, L]: 1 on the caption's tokens
        with torch.set_grad_enabled(attribute_grad and torch.is_grad_enabled()):
            named = torch.sigmoid(self.named_attributes(text))  # [B, A]
            shown = torch.sigmoid(self.clip_attributes(pooled))  # [B, A]
            shown = shown * (self.two_sided + ~self.two_sided * named)
            attribute_level = ATTRIBUTE_SCALE * F.cosine_similarity(named, shown, dim=-1, eps=EPS)
        query = self.text_norm(self.text_in(text))  # [B, L, C2]
        keys = self.video_norm(tokens)  # [B, N, C2]
        seen, _ = self.cross(query, keys, keys, need_weights=False)  # [B, L, C2]
        q = self.match_query(query).view(b, length, heads, -1)  # [B, L, H, d]
        k = self.match_key(keys).view(b, keys.shape[1], heads, -1)  # [B, N, H, d]
        best = torch.einsum("blhd,bnhd->blhn", q, k).amax(-1) / q.shape[-1] ** 0.5  # [B, L, H]
        per_token = self.token_score(torch.cat([query, seen, query * seen, best], dim=-1)).squeeze(-1)  # [B, L]
        token_level = (per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B]
        return attribute_level + token_level

    def score_features(self, video: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """video [B, 3, T, H, W] in [-1, 1], text [B, L, text_dim] MiniLM token features -> {key: [B]}"""
        pooled, tokens = self.features(video)
        return {
            "visual": self.visual_head(pooled).squeeze(-1),
            "motion": self.motion_head(pooled).squeeze(-1),
            "text": self.text_alignment(pooled, tokens, text),
            "motion_magnitude": motion_magnitude(video),
        }

    # --- the RewardModel interface ------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> [B, max_tokens, text_dim] MiniLM token features (cached per prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            self._text_cache.update(zip(missing, text_encoder(self.config.max_tokens).encode(missing)))
        device = next(self.parameters()).device
        return torch.stack([self._text_cache[p] for p in prompts]).to(device)

    def score(self, video: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        check_video(video, prompts)
        return self.score_features(video, self.encode_prompts(list(prompts)))

    # --- files ---------------------------------------------------------------------------------------

    def save(self, directory: str | Path, provenance: dict | None = None) -> None:
        """directory/reward.json (kind, config, provenance) + reward.safetensors."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS)
        manifest = {"kind": "shapes", "config": self.config.model_dump(mode="json"), "provenance": provenance or {}}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "ShapesVideoReward":
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST).read_text())
        if manifest.get("kind") != "shapes":
            raise ValueError(f"{directory / MANIFEST} is not a Shapes reward model (kind {manifest.get('kind')!r})")
        model = cls(ShapesRewardConfig.model_validate(manifest["config"]))
        model.load_state_dict(load_file(directory / WEIGHTS))
        return model
