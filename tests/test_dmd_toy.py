"""DMD moves a generator's samples toward the teacher's distribution, on a case where the
answer is known: 1-D Gaussians under flow matching, with exact real and fake scores.

The data distribution is N(m, 1); the generator is x = mu + eps (eps ~ N(0, 1)), so its own
distribution is N(mu, 1) and the best fake-score critic is the exact denoiser of N(mu, 1).
For x_t = (1 - s) x0 + s eps, E[x0 | x_t] = m + (1 - s) (x_t - (1 - s) m) / ((1 - s)^2 + s^2).
The teacher and critic below return the flow v = (x_t - E[x0 | x_t]) / s of their Gaussians
through the same `denoise` / `embed_text` / `clip_attention` calls the student's DMD step
uses (distill.student.real_and_fake_x0), so the test covers the loss and its wiring."""

import torch

from distill.losses import add_noise, dmd_loss, sample_sigmas
from distill.student import PRESETS, real_and_fake_x0


class GaussianDenoiser(torch.nn.Module):
    """The exact flow-matching denoiser of N(mean, 1) as a stand-in transformer."""

    def __init__(self, mean: float, guidance: float = 1.0):
        super().__init__()
        self.mean = torch.tensor(mean)
        self.teacher_config = PRESETS["tiny"].model.model_copy(update={"guidance_scale": guidance})

    def embed_text(self, feats):
        return feats

    def clip_attention(self, frames):
        return None

    def denoise(self, x_t, t, context, attention):
        s = (t / 1000).view(-1, *[1] * (x_t.ndim - 1))
        x0 = self.mean + (1 - s) * (x_t - (1 - s) * self.mean) / ((1 - s) ** 2 + s**2)
        return (x_t - x0) / s


def train_generator(flip: bool, steps: int = 300) -> float:
    target = 2.0
    run = PRESETS["tiny"]
    mu = torch.nn.Parameter(torch.tensor(-1.0))
    opt = torch.optim.SGD([mu], lr=0.05)
    teacher, gen = GaussianDenoiser(target), torch.Generator().manual_seed(0)
    feats = torch.zeros(64, 1, 1)
    for _ in range(steps):
        x = mu + torch.randn(64, 1, 1, 1, 1, generator=gen)  # [B, C, F, h, w]
        critic = GaussianDenoiser(float(mu.detach()))  # the fake score of the current generator
        sigma = sample_sigmas(64, run.model.sampler.shift, gen, run.dmd_sigma_low, run.dmd_sigma_high)
        x_t = add_noise(x.detach(), torch.randn(x.shape, generator=gen), sigma)
        with torch.no_grad():
            x0_real, x0_fake = real_and_fake_x0(run, teacher, critic, x_t, sigma, feats)
        if flip:
            x0_real, x0_fake = x0_fake, x0_real
        loss = dmd_loss(x, x0_real, x0_fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(mu)


def test_dmd_pulls_the_generator_to_the_teacher_distribution():
    assert abs(train_generator(flip=False) - 2.0) < 0.15


def test_a_flipped_dmd_gradient_pushes_it_away():
    assert train_generator(flip=True, steps=10) < -5.0  # from -1.0, away from 2.0 (and on to infinity)
