"""The losses of teacher training and distillation, one short function each.

Flow matching throughout (Wan / rectified flow): x_t = (1 - s) x0 + s eps, the network
predicts v = eps - x0, so x0_hat = x_t - s v. Timesteps fed to the network are s * 1000.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.sampler import shift_sigma


def sample_sigmas(batch: int, shift: float, generator: torch.Generator | None = None,
                  low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """s = shift(u), u ~ U(low, high): the shifted noise levels Wan trains at. -> [B]"""
    u = low + (high - low) * torch.rand(batch, generator=generator, device=generator.device if generator else None)
    return shift_sigma(u, shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - s) x0 + s eps, with s per sample [B] or per frame [B, F]."""
    s = sigma.view(*sigma.shape, *([1] * (x0.ndim - sigma.ndim)))
    if sigma.ndim == 2:  # [B, F] -> [B, 1, F, 1, 1]
        s = sigma[:, None, :, None, None]
    return (1 - s) * x0 + s * noise


def blur_latents(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each frame of x [B, C, F, H, W] blurred in space by a Gaussian of `sigma` latent pixels
    (separable, reflected at the edges): an object keeps its place, colour and rough size
    and loses its outline."""
    radius = max(1, int(math.ceil(2 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    b, c, f, h, w = x.shape
    y = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                 groups=c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                 groups=c)
    return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Conditional flow matching (Lipman et al. 2023, eq. 23): || v(x_t) - (eps - x0) ||^2."""
    return F.mse_loss(v_pred.float(), (noise - x0).float())


def ode_regression_loss(x0_pred: torch.Tensor, x0_teacher: torch.Tensor) -> torch.Tensor:
    """CausVid's ODE initialisation: the student's x0 from a point on the teacher's
    probability-flow trajectory regresses onto the trajectory's end."""
    return F.mse_loss(x0_pred.float(), x0_teacher.float())


def dmd_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Distribution Matching Distillation (Yin et al. 2024, eq. 7-8).

    The KL gradient w.r.t. the generator sample x is approximately (x0_fake - x0_real),
    normalised per sample by mean |x - x0_real|; realised as an MSE towards the stop-grad
    target x - grad, so d loss / d x = grad. `weight` (per sample [B], or per element
    broadcastable to x) weights the gradient (Re-DMD / Stream-R1)."""
    with torch.no_grad():
        dims = tuple(range(1, x.ndim))
        norm = (x - x0_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
        grad = torch.nan_to_num((x0_fake - x0_real) / norm)
        target = x - grad
    per_elem = 0.5 * (x.float() - target.float()) ** 2
    if weight is not None:
        w = weight.view(-1, *([1] * (x.ndim - 1))) if weight.ndim == 1 else weight
        per_elem = per_elem * w
    return per_elem.mean()


def object_cells(x0: torch.Tensor, share: float = 0.1) -> torch.Tensor:
    """[B, 1, F, h, w] mask of each clip's `share` of latent cells furthest from their
    frame's median latent: on Shapes clips, the objects (a plain, gradient or striped
    background sits near its median). x0: [B, C, F, h, w]."""
    median = x0.median(dim=-1, keepdim=True).values.median(dim=-2, keepdim=True).values
    dev = (x0 - median).pow(2).mean(1, keepdim=True)
    return (dev > dev.flatten(2).quantile(1 - share, dim=2)[:, :, None, None, None]).to(x0.dtype)


def masked_flow_error(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample flow-matching error inside `mask` [B, 1, F, h, w]. -> [B]"""
    err = (v_pred.float() - (noise - x0).float()).pow(2) * mask
    return err.sum(dim=(1, 2, 3, 4)) / (mask.sum(dim=(1, 2, 3, 4)) * v_pred.shape[1]).clamp_min(1)


def hard_negative_loss(v_true: torch.Tensor, v_negative: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       margin: float = 0.2) -> torch.Tensor:
    """A hinge that holds the true caption's fit of the objects at least `margin` better than
    the fit under a caption describing some other clip (`swapped_caption`): zero once the
    model's prediction depends on the swapped word that much. Same x_t for both forwards."""
    mask = object_cells(x0)
    true = masked_flow_error(v_true, x0, noise, mask)
    negative = masked_flow_error(v_negative, x0, noise, mask)
    return F.relu(true * (1 + margin) - negative).mean()


class DiscriminatorHead(torch.nn.Module):
    """DMD2's classifier (Yin et al. 2024, "Improved Distribution Matching Distillation"):
    a small head on the critic's tokens that tells noised real clips from noised student
    rollouts, one logit per clip. Each token is mapped on its own, then pooled over the clip
    before the last layer, so the verdict can weigh the whole clip (how many objects, how
    large, whether they travel), not only whether each patch looks plausible. The critic's
    cross-attention makes it conditional on the prompt."""

    def __init__(self, dim: int):
        super().__init__()
        self.tokens = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, dim), torch.nn.SiLU())
        self.out = torch.nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> logits [B]
        return self.out(self.tokens(tokens.float()).mean(1)).squeeze(-1)


def gan_critic_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating GAN loss of the discriminator: real -> 1, fake -> 0."""
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating GAN loss of the generator: its rollouts judged real."""
    return F.softplus(-logits_fake).mean()
