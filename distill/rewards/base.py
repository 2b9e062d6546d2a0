"""The one interface every reward model here has, and the analytic terms any video has.

    reward = load_reward("distill/rewards/weights/shapes-reward")  # frozen, eval mode
    scores = reward.score(video, prompts)  # video float [B, 3, T, H, W] in [-1, 1]
    scores["visual"], scores["motion"], scores["text"]  # each [B], differentiable w.r.t. video

Higher is better on every dimension. Scores are logits on each model's own scale:
compare them within a model (rank rollouts, normalise across a batch), never across
models. A reward model is not the evaluator (distill/eval): it is trained on other
signals and never imports it, so a student that games the reward does not also game
the judge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

DIMENSIONS: tuple[str, ...] = ("visual", "motion", "text")
MANIFEST = "reward.json"  # every reward directory has one; its "kind" says which loader reads it


@runtime_checkable
class RewardModel(Protocol):
    """video [B, 3, T, H, W] in [-1, 1] + B prompts -> {dimension: [B]} (at least DIMENSIONS)."""

    dimensions: tuple[str, ...]

    def score(self, video: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]: ...


def check_video(video: torch.Tensor, prompts: list[str] | None = None) -> None:
    """Raise ValueError unless video is float [B, 3, T, H, W] with T >= 2 (and B prompts)."""
    if video.ndim != 5 or video.shape[1] != 3 or not video.is_floating_point():
        raise ValueError(f"video must be float [B, 3, T, H, W] in [-1, 1], got {tuple(video.shape)} {video.dtype}")
    if video.shape[2] < 2:
        raise ValueError("a video reward needs at least 2 frames")
    if prompts is not None and (isinstance(prompts, str) or len(prompts) != video.shape[0]):
        raise ValueError(f"need a list of {video.shape[0]} prompts, got {prompts!r}")


def motion_magnitude(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute frame difference, mean over c, t, h, w of |x[t+1] - x[t]|.
    [B, 3, T, H, W] in [-1, 1] -> [B] in [0, 2]; 0 for a frozen clip. Differentiable (the
    subgradient of |.| at 0 is 0), analytic, with no opinion on whether the motion is good:
    a flickering clip scores high, which is why it is a separate key from "motion"."""
    return (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(1, 2, 3, 4))


def load_reward(directory: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A reward model from its directory, frozen (no parameter wants a gradient) and in
    eval mode: gradients flow to the pixels only."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {directory}: not a reward model directory")
    kind = json.loads(manifest.read_text()).get("kind")
    if kind == "shapes":
        from .shapes import ShapesVideoReward

        model = ShapesVideoReward.load(directory)
    elif kind == "pretrained":
        from .pretrained import PretrainedVideoReward

        model = PretrainedVideoReward(directory)
    else:
        raise ValueError(f"{manifest}: unknown reward kind {kind!r} (expected 'shapes' or 'pretrained')")
    return model.to(device).eval().requires_grad_(False)
