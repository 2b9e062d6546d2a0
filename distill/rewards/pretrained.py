"""A pretrained vision-language video reward model (VideoAlign / VideoReward style) from a
local directory, behind the same interface as the Shapes reward:

    reward = PretrainedVideoReward("checkpoints/videoreward-framecast")
    scores = reward.score(video, prompts)  # video [B, 3, T, H, W] in [-1, 1] -> {"visual", "motion", "text", ...}: [B]

The backbone is a Qwen2-VL (or Qwen2.5-VL) model loaded with transformers from the
directory only (no hub access); a linear head reads its last hidden state, either at one
special token per dimension (VideoAlign's <|VQ_reward|>, <|MQ_reward|>, <|TA_reward|>) or
at the last token. The processor's work is redone in torch so the scores are
differentiable with respect to the pixels: uniform frame sampling, bilinear resize,
CLIP normalisation and Qwen2-VL's patch layout (checked against transformers' own image
processor in tests/test_rewards.py). The directory layout (reward.json, backbone/,
head.safetensors) is in docs/rewards.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from .base import DIMENSIONS, MANIFEST, check_video, motion_magnitude

# OpenAI CLIP's pixel statistics, which Qwen2-VL's processors use.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # same video input format (patches, grid_thw, M-RoPE token types)


@dataclass(frozen=True)
class PretrainedRewardConfig:
    """What reward.json says (kind = "pretrained")."""

    family: str = "qwen2_vl"
    backbone: str = "backbone"  # sub-directory: transformers model + tokenizer (save_pretrained)
    head: str = "head.safetensors"  # "weight" [K, hidden], "bias" [K]
    outputs: dict[str, int] = field(default_factory=lambda: {"visual": 0, "motion": 1, "text": 2})  # dim -> head row
    reward_tokens: dict[str, str] | None = None  # dim -> token whose hidden state is scored; None: the last token
    prefix: str = ""  # text before the video (e.g. the chat template's system and user turn openings)
    prompt_template: str = "{prompt}"  # text after the video; {prompt} is the generation prompt
    num_frames: int = 8  # sampled uniformly over the clip
    height: int = 224  # frames are resized to this (multiples of patch_size * merge_size)
    width: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    normalisation: dict[str, tuple[float, float]] | None = None  # dim -> (mean, std): score = (raw - mean) / std
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainedRewardConfig":
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def to_dict(self) -> dict:
        return {"kind": "pretrained", **asdict(self)}


def sample_frames(video: torch.Tensor, count: int) -> torch.Tensor:
    """count frames at uniform spacing (first and last included). [B, 3, T, H, W] -> [B, 3, count, H, W]"""
    index = torch.linspace(0, video.shape[2] - 1, count).round().long().to(video.device)
    return video.index_select(2, index)


def qwen2_vl_patches(frames: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL's video input layout, in torch: frames [B, N, C, H, W] (normalised) ->
    pixel_values_videos [B * gt * gh * gw, C * temporal * patch * patch] and video_grid_thw
    [B, 3]. Patches run over (t, h / merge, w / merge, merge, merge), each flattened as
    (C, temporal, patch, patch); N is padded to a multiple of `temporal` with the last
    frame, as the processor does."""
    b, n, c, h, w = frames.shape
    if pad := -n % temporal:
        frames = torch.cat([frames, frames[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        n += pad
    gt, gh, gw = n // temporal, h // patch, w // patch
    x = frames.reshape(b, gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # [B, gt, gh/m, gw/m, m, m, C, temporal, p, p]
    grid = torch.tensor([[gt, gh, gw]] * b, dtype=torch.long, device=frames.device)
    return x.reshape(b * gt * gh * gw, c * temporal * patch * patch), grid


class PretrainedVideoReward(nn.Module):
    dimensions: tuple[str, ...] = DIMENSIONS + ("motion_magnitude",)

    def __init__(self, directory: str | Path):
        super().__init__()
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST).read_text())
        if manifest.get("kind") != "pretrained":
            raise ValueError(f"{directory / MANIFEST}: kind {manifest.get('kind')!r} is not 'pretrained'")
        self.config = cfg = PretrainedRewardConfig.from_dict(manifest)
        if cfg.family not in FAMILIES:
            raise ValueError(f"{directory / MANIFEST}: family {cfg.family!r} is not supported ({', '.join(FAMILIES)})")
        if missing := set(DIMENSIONS) - set(cfg.outputs):
            raise ValueError(f"{directory / MANIFEST}: outputs lacks {sorted(missing)}")

        from transformers import AutoModel, AutoTokenizer  # heavy: import on use

        from engine.components import from_local

        dtype = getattr(torch, cfg.dtype)
        self.backbone = from_local(AutoModel, directory / cfg.backbone, dtype=dtype)
        self.tokenizer = from_local(AutoTokenizer, directory / cfg.backbone)
        head = load_file(directory / cfg.head)
        self.head = nn.Linear(head["weight"].shape[1], head["weight"].shape[0], dtype=dtype)
        self.head.load_state_dict(head)
        bcfg = self.backbone.config
        vision = bcfg.vision_config
        self.patch, self.merge, self.temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        if cfg.height % (self.patch * self.merge) or cfg.width % (self.patch * self.merge):
            raise ValueError(f"frame size {cfg.height}x{cfg.width} must be a multiple of {self.patch * self.merge}")
        self.video_token = bcfg.video_token_id
        self.vision_start, self.vision_end = bcfg.vision_start_token_id, bcfg.vision_end_token_id
        self.reward_token_ids = None
        if cfg.reward_tokens:
            self.reward_token_ids = {k: self.tokenizer.convert_tokens_to_ids(t) for k, t in cfg.reward_tokens.items()}
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 1, 3, 1, 1), persistent=False)

    # --- input: pixels and token ids, as the processor would build them ----------------------------------

    def pixel_inputs(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, 3, T, H, W] in [-1, 1] -> (pixel_values_videos, video_grid_thw), differentiably."""
        cfg = self.config
        frames = sample_frames(video, cfg.num_frames).transpose(1, 2)  # [B, N, 3, H, W]
        b, n = frames.shape[:2]
        frames = F.interpolate(frames.flatten(0, 1), size=(cfg.height, cfg.width), mode="bilinear",
                               antialias=True, align_corners=False).view(b, n, 3, cfg.height, cfg.width)
        frames = ((frames + 1) / 2 - self.mean) / self.std  # [0, 1] then CLIP statistics
        return qwen2_vl_patches(frames.to(self.head.weight.dtype), self.patch, self.merge, self.temporal)

    def token_inputs(self, prompts: list[str], video_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """prefix <vision_start> <video_pad> x video_tokens <vision_end> template(prompt), right-padded.
        -> input_ids [B, L], attention_mask [B, L]"""
        cfg = self.config

        def ids(text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

        prefix = ids(cfg.prefix)
        rows = [prefix + [self.vision_start] + [self.video_token] * video_tokens + [self.vision_end]
                + ids(cfg.prompt_template.format(prompt=p)) for p in prompts]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
        return input_ids, mask

    # --- the RewardModel interface ------------------------------------------------------------------------

    def score(self, video: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        check_video(video, prompts)
        device = self.head.weight.device
        pixels, grid = self.pixel_inputs(video.to(device))
        video_tokens = int(grid[0].prod()) // self.merge**2
        input_ids, mask = (t.to(device) for t in self.token_inputs(list(prompts), video_tokens))
        token_types = (input_ids == self.video_token).int() * 2  # M-RoPE: 0 text, 2 video
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask, pixel_values_videos=pixels,
                               video_grid_thw=grid, mm_token_type_ids=token_types).last_hidden_state  # [B, L, D]
        rows = torch.arange(len(prompts), device=device)
        scores = {}
        for dim in DIMENSIONS:
            if self.reward_token_ids is None:
                at = mask.sum(1) - 1  # the last real token of each row
            else:
                found = input_ids == self.reward_token_ids[dim]  # [B, L]
                if not bool(found.any(1).all()):
                    raise ValueError(f"the prompt template has no {self.config.reward_tokens[dim]} token for {dim}")
                at = found.int().argmax(1)
            raw = self.head(hidden[rows, at])[:, self.config.outputs[dim]].float()  # [B]
            if self.config.normalisation and dim in self.config.normalisation:
                mean, std = self.config.normalisation[dim]
                raw = (raw - mean) / std
            scores[dim] = raw
        scores["motion_magnitude"] = motion_magnitude(video)
        return scores
