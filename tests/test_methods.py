"""The Re-DMD and Stream-R1 weighting formulas (distill/methods.py) against hand-computed
values on small tensors, and where gradients flow: reward weights are constants to the
generator, the saliency is d reward / d frames."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import dmd_loss
from distill.methods import (
    AdaptiveBalancer, combined_reward, exp_weights, re_dmd_weights, reward_saliency, saliency_weights,
    stream_r1_pixel_weights, stream_r1_rollout_weights, to_latent_weights, zscore,
)
from distill.rewards.base import motion_magnitude

torch.set_num_threads(1)


# --- rollout weights ----------------------------------------------------------------------------


def test_zscore_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 4)  # population std around 2.5
    expected = torch.tensor([(v - 2.5) / std for v in (1.0, 2.0, 3.0, 4.0)])
    assert torch.allclose(zscore(r), expected, atol=1e-5)
    assert torch.equal(zscore(torch.full((3,), 7.0)), torch.zeros(3))  # nothing to prefer
    assert torch.equal(zscore(torch.tensor([5.0])), torch.zeros(1))


def test_exp_weights_and_renormalisation():
    r = torch.tensor([-1.0, 0.0, 1.0])
    raw = exp_weights(r, beta=2.0, renormalise=False)
    assert torch.allclose(raw, torch.tensor([math.exp(-2), 1.0, math.exp(2)]))
    w = exp_weights(r, beta=2.0)
    assert torch.allclose(w, raw / raw.mean())
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert (w[2] / w[0]).item() == pytest.approx(math.exp(4), rel=1e-5)


def test_re_dmd_weights_formula_and_invariances():
    motion = torch.tensor([0.3, -1.2, 2.0, 0.7], requires_grad=True)
    w = re_dmd_weights(motion, beta=2.0)
    z = (motion.detach() - motion.detach().mean()) / motion.detach().std(unbiased=False)
    expected = torch.exp(2 * z) / torch.exp(2 * z).mean()
    assert torch.allclose(w, expected, atol=1e-5)
    assert not w.requires_grad
    assert torch.allclose(re_dmd_weights(motion, renormalise=False), torch.exp(2 * z), atol=1e-5)
    # A reward's scale and offset do not matter after the batch z-score.
    assert torch.allclose(re_dmd_weights(10 * motion.detach() - 3), w, atol=1e-5)
    # Higher motion reward, higher weight; beta = 0 is plain DMD.
    assert torch.equal(torch.argsort(w), torch.argsort(motion.detach()))
    assert torch.allclose(re_dmd_weights(motion, beta=0.0), torch.ones(4))


def test_stream_r1_rollout_weights_combine_dimensions():
    rewards = {"visual": torch.tensor([1.0, 2.0, 3.0]), "motion": torch.tensor([3.0, 1.0, 2.0]),
               "text": torch.tensor([0.0, 0.0, 5.0])}
    only_visual = stream_r1_rollout_weights(rewards, {"visual": 1.0, "motion": 0.0, "text": 0.0})
    assert torch.allclose(only_visual, re_dmd_weights(rewards["visual"]), atol=1e-6)
    balance = {"visual": 0.5, "motion": 0.3, "text": 0.2}
    r = 0.5 * zscore(rewards["visual"]) + 0.3 * zscore(rewards["motion"]) + 0.2 * zscore(rewards["text"])
    assert torch.allclose(combined_reward(rewards, balance), r, atol=1e-6)
    w = stream_r1_rollout_weights(rewards, balance, beta=1.5)
    assert torch.allclose(w, torch.exp(1.5 * r) / torch.exp(1.5 * r).mean(), atol=1e-5)


# --- the adaptive balancer ------------------------------------------------------------------------


def _progress_by_hand(values: list[float]) -> float:
    half = len(values) // 2
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return (sum(values[-half:]) / half - sum(values[:half]) / half) / (std + 1e-6)


def test_balancer_favours_the_dimension_improving_least():
    bal = AdaptiveBalancer(window=6)
    assert bal.weights() == {k: pytest.approx(1 / 3) for k in ("visual", "motion", "text")}
    series = {"visual": [float(i) for i in range(10)],  # rising
              "motion": [1.0] * 10,  # flat
              "text": [5.0 - 0.5 * i for i in range(10)]}  # falling
    for i in range(10):
        bal.update({k: torch.tensor(v[i]) for k, v in series.items()})
        if i == 2:  # fewer than 4 values: equal weights
            assert list(bal.weights().values()) == pytest.approx([1 / 3] * 3)
    progress = {k: _progress_by_hand(v[-6:]) for k, v in series.items()}  # only the window counts
    assert bal.progress() == {k: pytest.approx(p, abs=1e-6) for k, p in progress.items()}
    assert progress["visual"] == pytest.approx(3 / math.sqrt(35 / 12), abs=1e-4)  # halves 4,5,6 | 7,8,9
    logits = torch.tensor([-progress[k] for k in ("visual", "motion", "text")])
    expected = torch.softmax(logits, 0)
    weights = bal.weights()
    assert [weights[k] for k in ("visual", "motion", "text")] == pytest.approx(expected.tolist(), abs=1e-6)
    assert weights["text"] > weights["motion"] > weights["visual"]
    assert sum(weights.values()) == pytest.approx(1.0)


def test_balancer_is_scale_free_and_restores_state():
    a, b = AdaptiveBalancer(window=8), AdaptiveBalancer(window=8)
    gen = torch.Generator().manual_seed(0)
    for i in range(8):
        noise = torch.randn(3, generator=gen)
        base = {"visual": 0.1 * i + noise[0].item(), "motion": noise[1].item(), "text": 0.3 * i + noise[2].item()}
        a.update(base)
        b.update({**base, "visual": 100 * base["visual"] - 7})  # same trend, another scale
    assert a.weights() == pytest.approx(b.weights(), abs=1e-5)
    c = AdaptiveBalancer(window=8)
    c.load_state_dict(a.state_dict())
    assert c.weights() == a.weights()


# --- saliency ---------------------------------------------------------------------------------------


def test_saliency_factorisation_by_hand():
    s = torch.zeros(1, 2, 2, 2)
    s[0, 0] = 1.0  # frame 0: flat, mean 1
    s[0, 1] = torch.tensor([[0.0, 2.0], [4.0, 2.0]])  # frame 1: mean 2
    out = saliency_weights(s, temporal_floor=0.5, spatial_floor=0.5)
    # temporal: frame means [1, 2] -> minmax [0, 1] -> 0.5 + 0.5 * [0, 1]
    assert torch.allclose(out.temporal, torch.tensor([[0.5, 1.0]]))
    # spatial: frame 0 constant -> floor; frame 1: s / 2 = [0, 1, 2, 1] -> minmax [0, .5, 1, .5]
    assert torch.allclose(out.spatial[0, 0], torch.full((2, 2), 0.5))
    assert torch.allclose(out.spatial[0, 1], torch.tensor([[0.5, 0.75], [1.0, 0.75]]))
    # product [0.25 x4 | 0.5, 0.75, 1, 0.75], mean 0.5 -> divide by 0.5
    assert torch.allclose(out.weight[0, 0], torch.full((2, 2), 0.5))
    assert torch.allclose(out.weight[0, 1], torch.tensor([[1.0, 1.5], [2.0, 1.5]]))


def test_saliency_weights_floors_and_mean_one():
    s = torch.rand(3, 5, 8, 8, generator=torch.Generator().manual_seed(1)) ** 3
    out = saliency_weights(s, temporal_floor=0.2, spatial_floor=0.4)
    assert out.temporal.min() >= 0.2 - 1e-6 and out.temporal.max() <= 1 + 1e-6
    assert torch.allclose(out.temporal.amin(1), torch.full((3,), 0.2)) and torch.allclose(out.temporal.amax(1), torch.ones(3))
    assert torch.allclose(out.spatial.amin((2, 3)), torch.full((3, 5), 0.4))
    assert torch.allclose(out.weight.mean((1, 2, 3)), torch.ones(3))
    # Scaling one sample's saliency changes nothing (every step is scale-free).
    scaled = s.clone()
    scaled[1] *= 1000
    assert torch.allclose(saliency_weights(scaled, 0.2, 0.4).weight, out.weight, atol=1e-5)
    # Floors of 1: uniform weights.
    assert torch.allclose(saliency_weights(s, 1.0, 1.0).weight, torch.ones_like(s))


def test_to_latent_weights_pools_by_hand():
    w = torch.arange(1 * 8 * 16 * 16, dtype=torch.float32).view(1, 8, 16, 16) + 1
    lat = to_latent_weights(w, temporal=4, spatial=8)
    assert lat.shape == (1, 1, 2, 2, 2)
    block = w[0, 4:8, 8:16, 0:8].mean()
    assert lat[0, 0, 1, 1, 0].item() == pytest.approx((block / w.mean()).item(), rel=1e-5)
    assert lat.mean().item() == pytest.approx(1.0, abs=1e-6)
    # Wan's VAE layout: 1 + 4 (F - 1) frames, the first latent frame is frame 0 alone.
    w9 = torch.rand(2, 9, 16, 16)
    lat9 = to_latent_weights(w9)
    assert lat9.shape == (2, 1, 3, 2, 2)
    ratio = lat9[:, 0, 0, 0, 0] / lat9[:, 0, 1, 0, 0]
    expected = w9[:, 0, :8, :8].mean((1, 2)) / w9[:, 1:5, :8, :8].mean((1, 2, 3))
    assert torch.allclose(ratio, expected, rtol=1e-5)
    with pytest.raises(ValueError):
        to_latent_weights(torch.rand(1, 6, 16, 16))
    with pytest.raises(ValueError):
        to_latent_weights(torch.rand(1, 8, 12, 16))


# --- where gradients flow ----------------------------------------------------------------------------


class AnalyticReward:
    """A reward with known pixel gradients: visual = sum(a * x^2), text = sum(c * x),
    motion = motion_magnitude (each per sample)."""

    dimensions = ("visual", "motion", "text")

    def __init__(self, shape):
        gen = torch.Generator().manual_seed(3)
        self.a = torch.rand(shape, generator=gen)  # [3, T, H, W]
        self.c = torch.randn(shape, generator=gen)

    def score(self, video, prompts):
        return {"visual": (self.a * video**2).sum((1, 2, 3, 4)), "motion": motion_magnitude(video),
                "text": (self.c * video).sum((1, 2, 3, 4))}


def tiny_generator(b=3, t=8, h=16, w=16):
    """A one-parameter-per-sample 'generator': video = tanh(theta_b * base). -> (theta, video)"""
    theta = torch.nn.Parameter(torch.tensor([0.5, 1.0, 1.5][:b]))
    base = torch.randn(b, 3, t, h, w, generator=torch.Generator().manual_seed(4))
    return theta, torch.tanh(theta.view(-1, 1, 1, 1, 1) * base)


def test_rollout_weights_are_constants_to_the_generator():
    theta, video = tiny_generator()
    reward = AnalyticReward(video.shape[1:]).score(video, ["p"] * 3)
    assert reward["motion"].requires_grad  # the reward itself depends on theta ...
    w = re_dmd_weights(reward["motion"])
    w_r1 = stream_r1_rollout_weights(reward, {"visual": 0.2, "motion": 0.5, "text": 0.3})
    assert not w.requires_grad and not w_r1.requires_grad  # ... the weights do not
    target = torch.tensor([0.0, 2.0, 1.0])
    per_sample = (theta - target) ** 2  # [B] a stand-in for each rollout's DMD loss
    (grad,) = torch.autograd.grad((w * per_sample).mean(), theta)
    # d/dtheta_b of mean_b(w_b (theta_b - y_b)^2) with w constant = w_b 2 (theta_b - y_b) / B
    expected = w * 2 * (theta.detach() - target) / 3
    assert torch.allclose(grad, expected, atol=1e-6)


def test_saliency_equals_autograd_of_an_analytic_reward():
    _, video = tiny_generator()
    video = video.detach()
    reward = AnalyticReward(video.shape[1:])
    s = reward_saliency(reward, video, ["p"] * 3, {"visual": 1.0, "motion": 0.0, "text": 0.0})
    by_hand = (2 * reward.a * video).abs().sum(1)  # d sum(a x^2) / dx = 2 a x, |.| summed over RGB
    assert torch.allclose(s, by_hand / by_hand.mean((1, 2, 3), keepdim=True), atol=1e-5)
    assert not s.requires_grad
    # Fused over two dimensions: each normalised to mean 1 per sample, then mixed.
    s2 = reward_saliency(reward, video, ["p"] * 3, {"visual": 0.25, "motion": 0.0, "text": 0.75})
    text = reward.c.abs().sum(0).expand_as(by_hand)  # d sum(c x) / dx = c
    expected = 0.25 * by_hand / by_hand.mean((1, 2, 3), keepdim=True) + 0.75 * text / text.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(s2, expected, atol=1e-5)


def test_pixel_weights_scale_the_dmd_loss_without_carrying_gradient():
    theta, video = tiny_generator(b=2)
    reward_model = torch.nn.Conv3d(3, 1, 1)  # a reward with parameters: they must stay untouched

    class ConvReward:
        dimensions = ("visual", "motion", "text")

        def score(self, v, prompts):
            r = reward_model(v).square().mean((1, 2, 3, 4))
            return {"visual": r, "motion": motion_magnitude(v), "text": r}

    reward_model.requires_grad_(False)
    w_pixel = stream_r1_pixel_weights(ConvReward(), video, ["p"] * 2, {"visual": 0.5, "motion": 0.5, "text": 0.0})
    assert w_pixel.shape == (2, 1, 2, 2, 2) and not w_pixel.requires_grad
    assert torch.allclose(w_pixel.mean((1, 2, 3, 4)), torch.ones(2), atol=1e-5)
    assert reward_model.weight.grad is None
    # Latents the generator made: the weighted DMD loss backpropagates through x only.
    x = theta.view(-1, 1, 1, 1, 1) * torch.ones(2, 4, 2, 2, 2)  # [B, C, F, h, w]
    x0_real, x0_fake = torch.zeros_like(x), 0.1 * torch.ones_like(x)
    w_rollout = re_dmd_weights(torch.tensor([0.0, 1.0]))
    weight = w_rollout[:, None, None, None, None] * w_pixel
    (grad,) = torch.autograd.grad(dmd_loss(x, x0_real, x0_fake, weight=weight), theta)
    # dmd_loss = mean(0.5 (x - (x - g))^2 weight) with g = (x0_fake - x0_real) / mean|x - x0_real|:
    # d/dx = weight * g / numel, summed over each sample's elements (x = theta_b everywhere).
    g = 0.1 / theta.detach()  # [B]
    expected = torch.stack([(weight[b] * g[b]).expand(4, 2, 2, 2).sum() / x.numel() for b in range(2)])
    assert torch.allclose(grad, expected, atol=1e-6)


def test_stream_r1_weights_from_the_shapes_reward_model():
    """The whole path on a real (tiny, untrained) reward model in eval mode: scores, rollout
    weights and pixel weights in the latent layout, with no gradient left on the reward."""
    from distill.rewards.shapes import ShapesVideoReward
    from distill.rewards.train import PRESETS

    torch.manual_seed(0)
    reward = ShapesVideoReward(PRESETS["tiny"].model).eval().requires_grad_(False)
    video = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    prompts = ["a red ball moving left", "a blue square growing on a white background"]
    balancer = AdaptiveBalancer(window=4)
    with torch.no_grad():
        scores = reward.score(video, prompts)
    balancer.update({k: scores[k].mean() for k in balancer.dims})
    w_rollout = stream_r1_rollout_weights(scores, balancer.weights())
    w_pixel = stream_r1_pixel_weights(reward, video, prompts, balancer.weights())
    assert w_rollout.shape == (2,) and w_pixel.shape == (2, 1, 2, 4, 4)
    assert torch.isfinite(w_pixel).all() and torch.allclose(w_pixel.mean((1, 2, 3, 4)), torch.ones(2), atol=1e-5)
    assert w_pixel.std() > 0  # the saliency is not flat
    assert all(p.grad is None for p in reward.parameters())
