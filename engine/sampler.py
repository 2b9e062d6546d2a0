"""Few-step flow-matching sampler with re-noising (Self-Forcing / CausVid), and the
per-chunk step schedule of diagonal distillation.

Flow matching (Wan): x_t = (1 - s) x0 + s eps, the network predicts v = eps - x0, so
x0 = x_t - s v. A step predicts x0 at noise level s_i, then re-noises it with fresh
noise to s_{i+1} (Self-Forcing Alg. 1); the last step returns x0. Timesteps are given in
[0, 1000] and warped by the shift s' = shift s / (1 + (shift - 1) s) as Wan does.

Keeps diffusers' small scheduler contract: `set_timesteps`, `timesteps`, `step`.
"""

from __future__ import annotations

import torch

from .config import SamplerConfig


def shift_sigma(sigma: torch.Tensor | float, shift: float):
    return shift * sigma / (1 + (shift - 1) * sigma)


def steps_for_chunk(config: SamplerConfig, chunk_index: int) -> int:
    """Diagonal schedules: chunk i uses steps_per_chunk[i], the last entry repeating."""
    schedule = config.steps_per_chunk
    return schedule[min(chunk_index, len(schedule) - 1)]


def step_timesteps(config: SamplerConfig, num_steps: int) -> list[float]:
    """`num_steps` timesteps spanning the configured list from its first to its last
    (4 of [1000, 750, 500, 250] is the list itself; 2 is [1000, 250])."""
    full = list(config.timesteps)
    if num_steps == len(full):
        return full
    if num_steps == 1:
        return [full[0]]
    hi, lo = full[0], full[-1]
    return [hi + (lo - hi) * i / (num_steps - 1) for i in range(num_steps)]


class FewStepSampler:
    def __init__(self, config: SamplerConfig):
        self.config = config
        self.sigmas = torch.empty(0)
        self.timesteps = torch.empty(0)
        self.step_index = 0

    def set_timesteps(self, num_steps: int) -> None:
        raw = torch.tensor(step_timesteps(self.config, num_steps), dtype=torch.float32)
        self.sigmas = shift_sigma(raw / self.config.num_train_timesteps, self.config.shift)
        self.timesteps = self.sigmas * self.config.num_train_timesteps  # what the model sees
        self.step_index = 0

    @property
    def is_last(self) -> bool:
        return self.step_index == len(self.sigmas) - 1

    def step(self, model_output: torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """model_output v, sample x_t: [B, C, F, H, W] -> (next sample, x0 prediction).
        The next sample is x0 itself after the last step."""
        sigma = self.sigmas[self.step_index]
        x0 = sample - sigma * model_output  # x0 = x_t - s v
        self.step_index += 1
        if self.step_index >= len(self.sigmas):
            return x0, x0
        noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=sample.device)
        s_next = self.sigmas[self.step_index]
        return (1 - s_next) * x0 + s_next * noise, x0
