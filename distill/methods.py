"""The weighting formulas of Reward Forcing (Re-DMD) and Stream-R1, as pure functions,
and at the end the student trainer's use of them (`RewardWeighting`).

Every weight returned here is detached: a constant to the generator. The generator's
gradient flows through the DMD loss term only, never through the weight that scales it
(the weights come from a reward of the generator's own output; a gradient through them
would train the generator to please the reward directly, which is reward fine-tuning,
not reward-weighted distillation).

How they meet the DMD loss (distill/losses.py dmd_loss, `weight` per sample [B] or
broadcastable to the latents [B, C, F, h, w]):

    scores = reward.score(frames, prompts)                                # {dim: [B]}
    w = re_dmd_weights(scores["motion"], beta=2.0)                        # Re-DMD: [B]
    # Stream-R1:
    balancer.update({k: scores[k].mean() for k in balancer.dims})
    w_rollout = stream_r1_rollout_weights(scores, balancer.weights())     # [B]
    s = reward_saliency(reward, frames, prompts, balancer.weights())      # [B, T, H, W]
    w_pixel = to_latent_weights(saliency_weights(s).weight)              # [B, 1, F, h, w]
    loss = dmd_loss(x, x0_real, x0_fake, weight=w_rollout[:, None, None, None, None] * w_pixel)

Batch normalisation choice: rewards are z-scored across the batch before the exponential
(r~ = (r - mean_batch r) / std_batch r). A reward model's scores are logits on its own
scale (the Shapes model's and VideoAlign's differ by orders of magnitude), so beta only
means the same thing across reward models, and across training as the scores drift, on a
normalised reward; the z-score is also invariant to a shift of the scores, which the
exponential would otherwise turn into a change of the loss scale. The weights are then
renormalised to mean 1 over the batch (an option, on by default), so a reward-weighted
run has the same loss scale, hence the same effective learning rate, as plain DMD at the
same budget: what the ablation compares is where the gradient goes, not how much of it.
Reward Forcing writes the weight as exp(beta * r) with beta = 2; the material we read
does not say that it renormalises, so that part is our choice (renormalise=False
gives the bare exponential of the normalised reward).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

EPS = 1e-6


# --- rollout weights ---------------------------------------------------------------------------


def zscore(r: torch.Tensor) -> torch.Tensor:
    """r~ = (r - mean(r)) / (std(r) + eps) over the batch (population std). [B] -> [B];
    all zeros when every sample scores the same (or B = 1): nothing to prefer."""
    r = r.detach().float()
    return (r - r.mean()) / (r.std(unbiased=False) + EPS)


def exp_weights(r_normalised: torch.Tensor, beta: float, renormalise: bool = True) -> torch.Tensor:
    """w_i = exp(beta * r~_i), optionally / mean_j exp(beta * r~_j) (mean 1 over the batch).
    [B] -> [B], detached. The renormalised form is a softmax over the batch times B."""
    logits = beta * r_normalised.detach().float()
    if renormalise:
        return torch.softmax(logits, dim=0) * logits.numel()
    return torch.exp(logits)


def re_dmd_weights(motion_reward: torch.Tensor, beta: float = 2.0, renormalise: bool = True) -> torch.Tensor:
    """Re-DMD (Reward Forcing): w_i = exp(beta * r~_i), r~ the batch z-score of the motion
    reward, computed without gradient. motion_reward [B] -> w [B] (mean 1 if renormalise)."""
    with torch.no_grad():
        return exp_weights(zscore(motion_reward), beta, renormalise)


def combined_reward(rewards: dict[str, torch.Tensor], balance: dict[str, float]) -> torch.Tensor:
    """r~ = sum_k lambda_k z(r_k): each dimension z-scored across the batch (so no
    dimension dominates by its scale), mixed by the balancer's weights lambda (sum 1).
    {dim: [B]} -> [B], detached."""
    with torch.no_grad():
        return sum(float(lam) * zscore(rewards[k]) for k, lam in balance.items())


def stream_r1_rollout_weights(rewards: dict[str, torch.Tensor], balance: dict[str, float], beta: float = 2.0,
                              renormalise: bool = True) -> torch.Tensor:
    """Stream-R1's inter-reliability weight: w_i = exp(beta * r~_i), r~ = combined_reward
    (balanced over visual / motion / text). {dim: [B]} -> [B], detached. beta: the
    material we read gives no value for Stream-R1; the default is Re-DMD's 2 so the two
    methods weigh rollouts equally hard in the ablation."""
    return exp_weights(combined_reward(rewards, balance), beta, renormalise)


class AdaptiveBalancer:
    """Stream-R1's adaptive reward balancing: favour the dimension improving least.

    update() takes each dimension's batch-mean reward once per step; the last `window`
    values are kept per dimension. With h_k those values (oldest first), split into an
    older and a newer half (the middle one, if odd, left out):

        progress_k = (mean(newer half) - mean(older half)) / (std(h_k) + eps)
        lambda_k   = softmax_k(-progress_k / temperature)

    Dividing by the window's own spread makes the rule scale-free: a dimension whose
    scores are 10x larger does not look 10x faster, and a steady rise gives progress of
    about sqrt(3) whatever its slope while noise gives about 0. The weights sum to 1.
    Until every dimension has 4 values, all weights are equal (1 / dims).

    Stream-R1 also subtracts the spread of the per-dimension improvements from the
    reward; that is one constant for the whole batch, and a constant added to every
    rollout's r~ cancels in the batch z-score and the mean-1 renormalisation, so it is
    not implemented.
    """

    def __init__(self, window: int = 50, dims: tuple[str, ...] = ("visual", "motion", "text"),
                 temperature: float = 1.0):
        if window < 4:
            raise ValueError("window must hold at least 4 steps (two per half)")
        self.window, self.dims, self.temperature = window, tuple(dims), temperature
        self.history: dict[str, deque[float]] = {k: deque(maxlen=window) for k in self.dims}

    def update(self, mean_rewards: dict[str, float | torch.Tensor]) -> None:
        for k in self.dims:
            self.history[k].append(float(mean_rewards[k]))

    def progress(self) -> dict[str, float]:
        """progress_k as in the class docstring (0 for a dimension with fewer than 4 values)."""
        out = {}
        for k, values in self.history.items():
            h = torch.tensor(list(values), dtype=torch.float64)
            if len(h) < 4:
                out[k] = 0.0
                continue
            half = len(h) // 2
            out[k] = float((h[-half:].mean() - h[:half].mean()) / (h.std(unbiased=False) + EPS))
        return out

    def weights(self) -> dict[str, float]:
        if any(len(v) < 4 for v in self.history.values()):
            return {k: 1.0 / len(self.dims) for k in self.dims}
        progress = self.progress()
        lam = torch.softmax(torch.tensor([-progress[k] / self.temperature for k in self.dims]), dim=0)
        return {k: float(v) for k, v in zip(self.dims, lam)}

    def state_dict(self) -> dict:
        return {k: list(v) for k, v in self.history.items()}

    def load_state_dict(self, state: dict) -> None:
        for k in self.dims:
            self.history[k] = deque(state.get(k, []), maxlen=self.window)


# --- per-pixel weights from the reward gradient ---------------------------------------------------


def pixel_saliency(grad: torch.Tensor) -> torch.Tensor:
    """s = sum over channels of |dR / dx|. grad [B, 3, T, H, W] -> s [B, T, H, W], detached."""
    return grad.detach().abs().sum(dim=1)


def reward_saliency(reward, video: torch.Tensor, prompts: list[str],
                    balance: dict[str, float]) -> torch.Tensor:
    """Stream-R1's saliency volume, fused over dimensions: for each dimension k,
    s_k = pixel_saliency(d sum_b R_k(b) / d video), scaled to mean 1 per sample (the
    dimensions' gradients differ in scale), then s = sum_k lambda_k s_k. Summing R over
    the batch gives each sample its own gradient, since a reward scores samples
    independently. video [B, 3, T, H, W] (no gradient needed on it) -> s [B, T, H, W],
    detached. `reward` is a RewardModel (parameters frozen)."""
    leaf = video.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = reward.score(leaf, prompts)
        dims = [k for k, lam in balance.items() if lam != 0]
        fused = torch.zeros(leaf.shape[0], *leaf.shape[2:], device=leaf.device)
        for i, k in enumerate(dims):
            (grad,) = torch.autograd.grad(scores[k].sum(), leaf, retain_graph=i < len(dims) - 1)
            s = pixel_saliency(grad)  # [B, T, H, W]
            fused = fused + balance[k] * s / (s.mean(dim=(1, 2, 3), keepdim=True) + EPS)
    return fused


def minmax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """(x - min) / (max - min) over `dims`, in [0, 1]; 0 where x is constant over dims."""
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return (x - low) / (high - low).clamp_min(EPS)


def floored(x: torch.Tensor, floor: float, dims: tuple[int, ...]) -> torch.Tensor:
    """w = floor + (1 - floor) * minmax(x): in [floor, 1], so no element is ever ignored."""
    return floor + (1 - floor) * minmax(x, dims)


@dataclass
class SaliencyWeights:
    weight: torch.Tensor  # [B, T, H, W] w_t * w_s renormalised to mean 1 per sample
    temporal: torch.Tensor  # [B, T] w_t in [temporal_floor, 1]
    spatial: torch.Tensor  # [B, T, H, W] w_s in [spatial_floor, 1] per frame


def saliency_weights(s: torch.Tensor, temporal_floor: float = 0.5, spatial_floor: float = 0.5) -> SaliencyWeights:
    """Stream-R1's intra-perplexity weight, factored into time and space.

        w_t(b, t)       = floor_t + (1 - floor_t) minmax_t(mean_hw s(b, t))    per frame
        w_s(b, t, h, w) = floor_s + (1 - floor_s) minmax_hw(s(b, t) / mean_hw s(b, t))
        w               = w_t w_s / mean_thw(w_t w_s)                          mean 1 per sample

    Dividing by the frame's mean saliency separates "which frame" from "where in it"; min-max
    over the frame is scale-invariant, so it is the same as minmax_hw(s). The floors
    (our defaults: 0.5, so each factor spans at most 2x) keep every frame and pixel in the
    loss. s [B, T, H, W] (>= 0) -> weights, detached."""
    s = s.detach().float()
    frame = s.mean(dim=(2, 3))  # [B, T]
    temporal = floored(frame, temporal_floor, dims=(1,))  # [B, T]
    spatial = floored(s / (frame[:, :, None, None] + EPS), spatial_floor, dims=(2, 3))  # [B, T, H, W]
    weight = temporal[:, :, None, None] * spatial
    weight = weight / weight.mean(dim=(1, 2, 3), keepdim=True)
    return SaliencyWeights(weight=weight, temporal=temporal, spatial=spatial)


def to_latent_weights(w: torch.Tensor, temporal: int = 4, spatial: int = 8) -> torch.Tensor:
    """Pixel weights [B, T, H, W] -> latent weights [B, 1, F, H/spatial, W/spatial] by
    average pooling over each latent's pixels, renormalised to mean 1 per sample, to
    multiply the DMD loss elementwise (broadcasts over the latent channels).
    T = temporal * F (this project's autoencoder), or T = 1 + temporal * (F - 1) (Wan's VAE:
    the first latent frame holds the first video frame alone)."""
    b, t, h, wd = w.shape
    if h % spatial or wd % spatial:
        raise ValueError(f"frame size {h}x{wd} is not a multiple of the spatial factor {spatial}")
    x = w.detach().float()[:, None]  # [B, 1, T, H, W]
    if t % temporal == 0:
        pooled = F.avg_pool3d(x, (temporal, spatial, spatial))
    elif t % temporal == 1:
        first = F.avg_pool3d(x[:, :, :1], (1, spatial, spatial))
        rest = F.avg_pool3d(x[:, :, 1:], (temporal, spatial, spatial)) if t > 1 else first[:, :, :0]
        pooled = torch.cat([first, rest], dim=2)
    else:
        raise ValueError(f"{t} frames is neither {temporal} * F nor 1 + {temporal} * (F - 1)")
    return pooled / pooled.mean(dim=(1, 2, 3, 4), keepdim=True)  # [B, 1, F, h, w]


def stream_r1_pixel_weights(reward, video: torch.Tensor, prompts: list[str], balance: dict[str, float],
                            temporal: int = 4, spatial: int = 8, temporal_floor: float = 0.5,
                            spatial_floor: float = 0.5) -> torch.Tensor:
    """The whole intra-perplexity path: reward gradient -> saliency -> factored weights ->
    latent layout. video [B, 3, T, H, W] -> [B, 1, F, h, w], mean 1 per sample, detached."""
    s = reward_saliency(reward, video, prompts, balance)
    return to_latent_weights(saliency_weights(s, temporal_floor, spatial_floor).weight, temporal, spatial)


# --- the weights of a student's DMD step ----------------------------------------------------------


class RewardWeighting:
    """The DMD weight of each method for the student trainer (distill/student.py), from
    rewards of the decoded rollout (constants to the generator: computed without gradient
    to it). `run` is a StudentRun, `par` its distill.parallel.Parallel.

    dmd        none
    re_dmd     per rollout exp(beta * z(r_motion)) (Reward Forcing's Re-DMD)
    stream_r1  per rollout exp(beta * sum_k lambda_k z(r_k)), lambda from the adaptive
               balancer, times per-pixel saliency weights of the reward gradient pooled to
               the latent grid (Stream-R1).

    Under torchrun the z-scores, the renormalisation and the balancer take the global batch
    (every process's rollouts): with one rollout per GPU a per-process z-score would be 0
    and every weight 1. A pretrained vision-language reward is sharded like the transformer
    (distill/parallel.py place_reward). Rollouts are decoded by the teacher's own decoder
    (the Shapes autoencoder, or the Wan VAE of a converted teacher)."""

    def __init__(self, run, teacher_dir: str, teacher_config, par):
        from distill.parallel import place_reward
        from distill.rewards.base import load_reward

        if not run.reward:
            raise ValueError(f"method {run.method} needs a reward model: --set reward=DIR (docs/rewards.md)")
        self.run, self.par = run, par
        self.reward = place_reward(load_reward(run.reward), par)
        if teacher_config.decoder.kind == "shapes_ae":
            from distill.teacher import load_autoencoder

            # decoder.path is relative to the model dir (export_model copies the autoencoder there)
            decoder_dir = Path(teacher_dir) / (teacher_config.decoder.path or ".")
            self.decode = load_autoencoder(decoder_dir).to(par.device).decode
        else:
            from engine.components import build_decoder

            from distill.student import frozen_dtype

            decoder = build_decoder(teacher_config, Path(teacher_dir), str(par.device),
                                    frozen_dtype(teacher_config, par))
            self.decode = lambda latents: decoder.decode_chunk(latents, decoder.init_decoder_state(len(latents)))[0]
        self.balancer = AdaptiveBalancer(window=run.balance_window)

    def __call__(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from distill.parallel import gather_batch

        with torch.no_grad():
            video = self.decode(latents.detach())  # [B, 3, T, H, W]
            scores = self.reward.score(video, prompts)
        b, first = len(latents), self.par.rank * len(latents)
        everyone = {k: gather_batch(v, self.par) for k, v in scores.items()}  # {dim: [world * B]}
        if self.run.method == "re_dmd":
            return re_dmd_weights(everyone["motion"], self.run.reward_beta)[first : first + b]  # [B]
        self.balancer.update({k: everyone[k].mean() for k in self.balancer.dims})
        balance = self.balancer.weights()
        per_rollout = stream_r1_rollout_weights(everyone, balance, self.run.reward_beta)[first : first + b]  # [B]
        per_pixel = stream_r1_pixel_weights(self.reward, video, prompts, balance)  # [B, 1, F, h, w]
        return per_rollout.view(-1, 1, 1, 1, 1) * per_pixel
