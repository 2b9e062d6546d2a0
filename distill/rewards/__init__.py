"""Video reward models: a video and its prompt -> visual quality, motion quality and text
alignment scores, differentiable with respect to the pixels (base.RewardModel).

- shapes.ShapesVideoReward: a small model trained on the Shapes world by rewards/train.py;
  the shipped weights are in rewards/weights/shapes-reward.
- pretrained.PretrainedVideoReward: a pretrained vision-language reward model (VideoAlign
  style) from a local directory; docs/rewards.md describes the layout.

The weighting formulas that use these scores in distillation are in distill/methods.py.
The names below load on first use, so `framecast` can register `distill reward`
without importing torch.
"""

from pathlib import Path

SHAPES_REWARD_DIR = Path(__file__).parent / "weights" / "shapes-reward"

__all__ = ["DIMENSIONS", "RewardModel", "SHAPES_REWARD_DIR", "check_video", "load_reward", "motion_magnitude"]


def __getattr__(name: str):
    if name in __all__:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
