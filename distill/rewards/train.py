"""Train the Shapes video reward model (distill/rewards/shapes.py) on the Shapes world.

    framecast distill reward --preset shapes --threads 1 --out distill/rewards/weights/shapes-reward
    framecast distill reward --evaluate distill/rewards/weights/shapes-reward --eval-clips 64
    framecast distill reward --preset tiny --run-dir /tmp/reward --dry-run

Re-running the same command resumes from the run dir's last checkpoint; the EMA weights
are exported to --out (default RUN_DIR/reward) with the held-out accuracies in reward.json.

Every step draws B real clips (random windows of random training scenes) and, for each,
one visually corrupted copy, one re-timed copy and mismatched captions (corrupt.py).
Loss: a Bradley-Terry pairwise loss per dimension, softplus(s_negative - s_real), i.e.
-log sigmoid of the margin, plus a small penalty on the squared scores so the logits
stay near zero (only their differences are trained). Held-out accuracy is the fraction
of such pairs ranked the right way round on scenes training never draws.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from distill.common import EMA, CaptionCache, Checkpointer, MetricsLog, TrainResult, run_to_json, warmup_cosine_lr

from .base import motion_magnitude
from .batches import Batch, heldout_batch, shapes_world, training_batch
from .corrupt import CAPTION_KINDS, MOTION_KINDS, VISUAL_KINDS
from .shapes import ShapesRewardConfig, ShapesVideoReward, text_encoder

MOVING = 1e-3  # motion_magnitude below which a clip is still (re-timing it changes nothing)


@dataclass(frozen=True)
class RewardRun:
    """One training run: the network's config plus how to train it."""

    model: ShapesRewardConfig
    steps: int = 450  # ~15 min on one CPU thread shared with other jobs (about 2 s a step)
    batch_size: int = 6  # real clips per step; each adds a visual and a motion negative
    num_frames: int = 8  # training clips: 0.5 s at 16 fps (half the cost of 1 s; the trunk pools over time)
    eval_frames: int = 16  # held-out clips: 1 s, the length the model is judged at
    max_start_frame: int = 480  # clips are windows of a stream starting anywhere up to here
    caption_negatives: int = 3  # mismatched captions per real clip (cheap: they share the clip's trunk pass)
    lr: float = 2e-3
    warmup: int = 30
    final_lr_fraction: float = 0.1  # cosine decay from lr down to lr * this
    score_penalty: float = 1e-3
    ema_decay: float = 0.98
    log_every: int = 10
    eval_every: int = 150
    eval_clips: int = 16
    ckpt_every: int = 40
    seed: int = 0


PRESETS: dict[str, RewardRun] = {
    # The shipped model (about 150k parameters, ~0.6 MB).
    "shapes": RewardRun(model=ShapesRewardConfig()),
    # For tests: 32x32 frames, a few thousand parameters.
    "tiny": RewardRun(
        model=ShapesRewardConfig(height=32, width=32, stem_channels=8, colour_channels=4, channels=(8, 16),
                                 heads_hidden=16, attention_heads=2),
        steps=6, batch_size=2, num_frames=8, eval_frames=8, caption_negatives=1, lr=3e-3, warmup=1, log_every=2,
        eval_every=6, eval_clips=2, ckpt_every=3, ema_decay=0.5),
}


# --- loss ------------------------------------------------------------------------------------------


def batch_scores(model: ShapesVideoReward, batch: Batch, text, in_batch: bool = True) -> dict[str, torch.Tensor]:
    """Scores of the real clips and their negatives. text: prompts -> [N, L, D] features.
    -> {"visual": [2, B] (real, corrupted), "motion": [2, B], "text": [1 + K, B] (true
    caption, K mismatched), with in_batch "text_batch": [B, B], clip i with caption j
    (every other clip's caption is a free negative: no extra trunk pass or text encoding),
    and the attribute heads' logits "shown": [3B, A] (real clips, then the visual and the
    motion negatives), "named": [(1 + K) B, A]}"""
    b = len(batch.captions)
    pooled, tokens = model.features(torch.cat([batch.video, batch.visual_negative, batch.motion_negative]))
    visual = model.visual_head(pooled).squeeze(-1).view(3, b)
    motion = model.motion_head(pooled).squeeze(-1).view(3, b)
    real, real_pooled = tokens[:b], pooled[:b]  # [B, N, C], [B, P]
    true_text = text(batch.captions)  # [B, L, D]
    scores = {"visual": visual[[0, 1]], "motion": motion[[0, 2]]}
    all_text = true_text
    if batch.wrong_captions:
        wrong_text = text([c for wrong in batch.wrong_captions for c in wrong])  # [K*B, L, D]
        all_text = torch.cat([true_text, wrong_text])
        k = len(batch.wrong_captions)
        wrong = model.text_alignment(real_pooled.repeat(k, 1), real.repeat(k, 1, 1), wrong_text,
                                     attribute_grad=False).view(-1, b)
    if in_batch:
        matrix = model.text_alignment(real_pooled.repeat_interleave(b, 0), real.repeat_interleave(b, 0),
                                      true_text.repeat(b, 1, 1), attribute_grad=False).view(b, b)
        scores["text_batch"] = matrix
        true = matrix.diagonal()
    else:
        true = model.text_alignment(real_pooled, real, true_text, attribute_grad=False)
    scores["text"] = torch.cat([true[None], wrong]) if batch.wrong_captions else true[None]
    scores["shown"] = model.clip_attributes(pooled)  # [3B, A]: real, visual and motion negatives
    scores["named"] = model.named_attributes(all_text)
    return scores


def moving_mask(video: torch.Tensor) -> torch.Tensor:
    """[B] 1.0 where the clip moves at all: a still clip re-timed is the same clip."""
    return (motion_magnitude(video) > MOVING).float()


def reward_loss(scores: dict, batch: Batch, score_penalty: float) -> tuple[torch.Tensor, dict]:
    """Bradley-Terry pairwise loss, softplus(s_neg - s_real) = -log sigmoid(s_real - s_neg),
    per dimension, + score_penalty * mean squared score. Text: the mean over the
    attribute-swapped captions, plus (with "text_batch") the mean over the other clips'
    captions, so the few hard negatives are not drowned by the many easy ones. Plus the
    attribute heads' binary cross-entropy against the scene labels (what each clip
    shows, what each caption names). Motion pairs of clips that do not move are skipped.
    -> (loss, {name: float})"""
    moving = moving_mask(batch.video)
    visual = F.softplus(scores["visual"][1] - scores["visual"][0]).mean()
    motion_pairs = F.softplus(scores["motion"][1] - scores["motion"][0])  # [B]
    motion = (motion_pairs * moving).sum() / moving.sum().clamp_min(1.0)
    text = F.softplus(scores["text"][1:] - scores["text"][:1]).mean() if len(scores["text"]) > 1 else 0.0
    if "text_batch" in scores and len(scores["text_batch"]) > 1:
        matrix = scores["text_batch"]  # [clip, caption]
        others = ~torch.eye(len(matrix), dtype=torch.bool)
        text = text + F.softplus(matrix - matrix.diagonal()[:, None])[others].mean()
    attributes = (shown_attribute_loss(scores["shown"], batch)
                  + F.binary_cross_entropy_with_logits(scores["named"], batch.named))
    penalty = sum((scores[k] ** 2).mean() for k in ("visual", "motion", "text"))
    loss = visual + motion + text + attributes + score_penalty * penalty
    logs = {"loss/total": loss.item(), "loss/visual": visual.item(), "loss/motion": motion.item(),
            "loss/text": float(text.detach()) if torch.is_tensor(text) else text, "loss/attributes": attributes.item(),
            "train_acc/visual": (scores["visual"][0] > scores["visual"][1]).float().mean().item(),
            "train_acc/text": (scores["text"][:1] > scores["text"][1:]).float().mean().item()}
    return loss, logs


def shown_attribute_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Binary cross-entropy of the clip attribute head [3B, A] against the scenes' labels.
    The negatives still show their scene (three times the examples for no extra trunk
    pass), except what their corruption changed: a colour-shifted clip's colours and a
    re-timed clip's motions are left out."""
    b = len(batch.captions)
    target = batch.shown.repeat(3, 1)  # [3B, A]
    keep = torch.ones_like(target)
    keep[b:2 * b][torch.tensor([k == "colour" for k in batch.visual_kinds])] = 0
    motion_slots = torch.tensor([a.startswith("motion:") for a in batch.attribute_names])
    keep[2 * b:, motion_slots] = 0
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per * keep).sum() / keep.sum()


def lr_at(run: RewardRun, step: int) -> float:
    """Linear warm-up, then cosine decay to lr * final_lr_fraction at the last step."""
    return warmup_cosine_lr(run.lr, step, run.warmup, run.steps, run.final_lr_fraction)


# --- held-out accuracy ---------------------------------------------------------------------------------


def heldout_accuracy(model: ShapesVideoReward, run: RewardRun, clips: int, text=None) -> dict[str, float]:
    """Pairwise accuracy on held-out clips 0..clips-1, each against every negative kind:
    "visual/<kind>": P(real ranked above it), "motion/<kind>" (moving clips only),
    "text/<kind>": P(true caption above the mismatched one); "visual", "motion", "text":
    the means over kinds."""
    text = text or model.encode_prompts
    world = shapes_world(run)
    hits: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for index in range(clips):
            batch = heldout_batch(world, run, index)
            scores = batch_scores(model, batch, text, in_batch=False)
            for i, kind in enumerate(VISUAL_KINDS):
                hits.setdefault(f"visual/{kind}", []).append(float(scores["visual"][0, i] > scores["visual"][1, i]))
            if bool(moving_mask(batch.video[:1])[0]):
                for i, kind in enumerate(MOTION_KINDS):
                    hits.setdefault(f"motion/{kind}", []).append(float(scores["motion"][0, i] > scores["motion"][1, i]))
            for i, kind in enumerate(CAPTION_KINDS):
                hits.setdefault(f"text/{kind}", []).append(float(scores["text"][0, i] > scores["text"][1, i]))
    model.train(was_training)
    out = {k: sum(v) / len(v) for k, v in hits.items()}
    for dim in ("visual", "motion", "text"):
        per_kind = [v for k, v in out.items() if k.startswith(dim + "/")]
        if per_kind:
            out[dim] = sum(per_kind) / len(per_kind)
    return out


# --- the training run ------------------------------------------------------------------------------------


def train_reward(run: RewardRun, run_dir: Path, out_dir: Path | None = None, threads: int = 0,
                 progress: bool = True) -> TrainResult:
    """Train (or resume) in run_dir; export the EMA model to out_dir (default run_dir/reward)
    with the command that made it and its held-out accuracies (TrainResult.figures)."""
    if threads:
        torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(run_to_json(run), indent=2) + "\n")

    # --- build ------------------------------------------------------------------------------
    torch.manual_seed(run.seed)
    model = ShapesVideoReward(run.model).train()
    ema = EMA(model, run.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=0.0)
    captions = CaptionCache(text_encoder(run.model.max_tokens))
    world = shapes_world(run)
    ckpt = Checkpointer(run_dir)
    metrics = MetricsLog(run_dir)

    # --- resume -------------------------------------------------------------------------------
    step, spent = 0, 0.0
    if (latest := ckpt.latest()) is not None:
        step, extra = ckpt.load(latest, {"model": model, "ema": ema.shadow}, {"opt": opt})
        spent = extra.get("seconds", 0.0)
        print(f"resumed from {latest} at step {step}", file=sys.stderr)

    # --- loop: sample, loss, step, EMA, log, evaluate, checkpoint --------------------------------------
    start = time.time() - spent
    bar = tqdm(total=run.steps, initial=step, desc="reward", unit="step", dynamic_ncols=True, disable=not progress)
    window: dict[str, list[float]] = {}
    losses: list[float] = []
    while step < run.steps:
        batch = training_batch(world, run, step)
        loss, logs = reward_loss(batch_scores(model, batch, captions), batch, run.score_penalty)
        for group in opt.param_groups:
            group["lr"] = lr_at(run, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model, step)
        step += 1
        bar.update(1)
        losses.append(logs["loss/total"])
        for k, v in logs.items():
            window.setdefault(k, []).append(v)
        if step % run.log_every == 0 or step == run.steps:
            means = {k: sum(v) / len(v) for k, v in window.items()}
            metrics.log(step, {**means, "lr": lr_at(run, step - 1)})
            bar.set_postfix(loss=f"{means['loss/total']:.3f}")
            window = {}
        if step % run.eval_every == 0 or step == run.steps:
            accuracy = heldout_accuracy(ema.shadow, run, run.eval_clips, captions)
            metrics.log(step, {f"heldout/{k}": v for k, v in accuracy.items()})
            bar.write(f"step {step}: held-out accuracy (EMA) " +
                      ", ".join(f"{d} {accuracy[d]:.3f}" for d in ("visual", "motion", "text") if d in accuracy))
        if step % run.ckpt_every == 0 or step == run.steps:
            ckpt.save(step, {"model": model, "ema": ema.shadow}, {"opt": opt}, {"seconds": time.time() - start})
    bar.close()
    metrics.close()

    # --- export: the EMA weights with how they were made ----------------------------------------------------
    final = ema.shadow.eval()
    accuracy = heldout_accuracy(final, run, run.eval_clips, captions)
    out_dir = out_dir or run_dir / "reward"
    final.save(out_dir, provenance={
        "command": " ".join(["framecast"] + sys.argv[1:]), "run": run_to_json(run), "steps": step,
        "train_seconds": round(time.time() - start, 1), "heldout_clips": run.eval_clips,
        "heldout_accuracy": {k: round(v, 4) for k, v in accuracy.items()}})
    return TrainResult(out_dir, step, time.time() - start, losses, accuracy)
