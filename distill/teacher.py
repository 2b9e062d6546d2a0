"""The bidirectional teacher: the shared transformer with full attention, trained by flow
matching on Shapes latents (or latents of your own videos) with caption dropout (for
classifier-free guidance), and its 50-step guided sampler.

    framecast distill teacher --preset shapes --autoencoder DIR --run-dir runs/teacher
    framecast distill teacher --preset shapes --autoencoder DIR --data my-videos/   # + captions.jsonl
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from tqdm import tqdm

from engine.config import (AttentionConfig, DecoderConfig, LatentConfig, ModelConfig, SamplerConfig,
                           TextEncoderConfig, TransformerConfig)
from engine.shapes.captions import swapped_caption
from engine.transformer import CausalWanTransformer, build_transformer

from .common import (EMA, CaptionCache, CaptionChoice, Checkpointer, MetricsLog, ShapesLatents, TrainResult,
                     VideoFolderLatents, WeightsDtype, autocast, resolve_device, run_to_json, step_generator)
from .losses import add_noise, blur_latents, flow_matching_loss, sample_sigmas

# The default model's architecture: 6 layers of 3 x 64 heads (4.0 M parameters) over
# 16x16x16 latents (128x128 frames), the prompt read as slots (engine/shapes/slots.py: one
# token for the background and one per object, no weights) as context, and a learned table of
# each token's place in the frame (absolute_positions). Student and teacher share it. Sized
# for 2 CPU cores: a teacher step of 96 single frames in bf16 takes ~1.2-1.4 s there, and the
# student streams a chunk (0.75 s of video, 4, 3, then 2 steps) in ~0.1-0.2 s
# (the 1.3 M model of the first default model was 3x cheaper and could not hold shapes
# and motion; a 15.7 M one, twice as wide, drew less shape at 3/4 of the chain's compute and
# more at 1.3x, docs/default-model.md, "A teacher twice as wide" and "The wide teacher carried
# to 3900 steps": the `shapes-wide` presets, not the default chain's until a student of it is
# shipped).
SHAPES_MODEL = ModelConfig(
    name="shapes-teacher",
    transformer=TransformerConfig(num_attention_heads=3, attention_head_dim=64, ffn_dim=768, num_layers=6,
                                  text_dim=384, in_channels=16, out_channels=16),
    attention=AttentionConfig(policy="full", chunk_frames=3, sink_frames=3, window_frames=6),
    sampler=SamplerConfig(),
    latent=LatentConfig(channels=16, height=128, width=128, fps=16.0),
    text_encoder=TextEncoderConfig(kind="shapes", dim=384, max_tokens=32, feature_norm="rms"),
    decoder=DecoderConfig(kind="shapes_ae", path="."),
    absolute_positions=True,
    # Measured on the 5000-step teacher, 8 standard prompts at 50 steps: prompt accuracy 0.18
    # at guidance 4, 0.25 at 8, 0.23 at 12 (objects only show up as colour at higher guidance).
    guidance_scale=8.0,
    # people's prompts are read as their canonical caption (docs/default-model.md); the teacher
    # trains on the captions themselves either way
    prompt_rewrite="shapes",
)
TINY_MODEL = ModelConfig(
    name="tiny-teacher",
    transformer=TransformerConfig(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2,
                                  text_dim=32, in_channels=4, out_channels=4),
    attention=AttentionConfig(policy="full", chunk_frames=1, sink_frames=1, window_frames=2),
    latent=LatentConfig(channels=4, height=32, width=32, fps=16.0),
    text_encoder=TextEncoderConfig(kind="hash", dim=32, max_tokens=8),
    decoder=DecoderConfig(kind="shapes_ae", path="."),
    guidance_scale=2.0,
)


@dataclass(frozen=True)
class TeacherRun:
    model: ModelConfig = SHAPES_MODEL
    autoencoder: str = "engine/models/shapes-default"  # directory with autoencoder.json/.safetensors
    data: str | None = None  # a folder of your videos with captions.jsonl (distill/data/video_folder.py);
    #                          None: the Shapes world
    latent_frames: int = 6  # clip length in latent frames (x4 video frames)
    batch_size: int = 8  # clips a step (0: single frames only, see image_batch)
    # > 0: also this many single latent frames a step (4 video frames each, encoded on their
    # own by the autoencoder), drawn from the clip pool with their clip's captions: joint
    # image/video training as Wan's. A frame is 64 tokens against a clip's 384, so a step of
    # frames sees 6x the scenes a step of clips does for the same compute: what the object's
    # shape needs, while motion needs the clips. Needs pool_size > 0. The hard-negative term
    # (negative_captions) applies to the clips only.
    image_batch: int = 0
    # True: a single frame keeps its place in its clip (the temporal rotary position of its
    # latent frame), so in clips that start with their scene (max_start_frame 0) frame 5 is
    # known to be 1.25 s in, where a moving object has moved to. False (as before): every
    # single frame sits at position 0.
    frame_positions: bool = True
    # Clips rendered and encoded once, then drawn with random paraphrases (0: new clips
    # every step). Cached in the run dir, so a resumed run does not encode them again.
    pool_size: int = 0
    # The Shapes world's clips: windows starting at a random frame up to `max_start_frame` of
    # each scene's stream, its objects placed by `layout` (engine.shapes.scene.SceneSampling:
    # "random", or "canonical", where the i-th object the caption names starts in a fixed
    # place). "canonical" with max_start_frame 0 makes where each object is, and so its
    # outline at every noise level, follow from the prompt.
    layout: str = "random"
    # Which way the world's circling objects turn (engine.shapes.scene.SceneSampling.orbit):
    # "either" (drawn) or "clockwise" (always).
    orbit: str = "either"
    # Which of a clip's captions a step reads: "paraphrases" (a random one of its paraphrases,
    # which leave out sizes, the background or the motion and use synonyms) or "canonical"
    # (always the first, which names every attribute in the canonical words, so that a caption
    # fixes its scene's first frame). In an 840-scene screen a paraphrase-trained model drew
    # blobs where the canonical-trained one drew the asked shapes (docs/default-model.md).
    captions: CaptionChoice = "paraphrases"
    max_start_frame: int = 480
    steps: int = 600
    lr: float = 1e-3
    warmup: int = 50
    decay_from: int = 0  # > 0: constant lr until this step, then linear decay to final_lr_fraction at `steps`
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    caption_dropout: float = 0.1
    # auto: this process's GPU if there is one, else the CPU (as the student's). On a GPU the
    # pool is encoded there and kept in host memory; each step's batch goes to the device.
    device: str = "auto"
    # > 0: weight of a hard-negative hinge (distill.losses.hard_negative_loss): each captioned
    # clip is also denoised under its caption with a shape noun or the directions swapped
    # (engine.shapes.captions.swapped_caption), whose fit of the objects must be `negative_margin`
    # worse. One more forward per step (~1.7x the step). The teacher ignores shape and motion
    # words otherwise (bench/teacher_conditioning.py; docs/default-model.md).
    negative_captions: float = 0.0
    negative_margin: float = 0.2
    # > 0: this share of each step's clips and frames is noised from a spatially blurred copy
    # of itself (Gaussian, `blur_sigma` latent pixels), the target still the sharp clip. In
    # sampling from pure noise the teacher's midway states hold soft blobs, never the crisp
    # shapes its training inputs show at those noise levels, so it learnt to read an object's
    # outline from the clip and never from the prompt; from a blurred input only the prompt
    # can tell a star from a circle (input perturbation against exposure bias, Ning et al. 2023).
    # Measured as a 500-step fine-tune: no shape (docs/default-model.md); off until a run shows it pays.
    blur_inputs: float = 0.0
    blur_sigma: float = 1.0
    # > 0: weight of an auxiliary loss on the Shapes world's scenes: a linear head on the tokens
    # after block `shape_layer` (0: half the blocks) predicts which shape (or the background)
    # each token shows, as the share of its pixels (`ShapesLatents.pool_shape_maps`, soft
    # cross-entropy). Where the noise hides the outline only the caption tells the shape, so
    # the term pays for carrying the shape word to the object's tokens, which the flow loss
    # alone never taught. Training-only: the head (own AdamW, constant lr) is not exported.
    # Measured (docs/default-model.md): the tokens then carry the caption's shape, the samples
    # still draw none; off until a run shows it pays.
    shape_labels: float = 0.0
    shape_layer: int = 0
    # > 0: weight of a loss on the *prediction* rather than the tokens: a small frozen CNN (the
    # shape critic, trained first on the pool's clean latents against the same per-token shape
    # maps, cached in the run dir) reads the clean estimate x_t - s v of each sample with
    # s <= shape_critic_sigma and must find the true shape in the object's tokens. The flow
    # loss barely pays for an outline (a blob in the right place fits about as well); this
    # term pays for drawing it, with gradients through the transformer's output.
    shape_critic: float = 0.0
    shape_critic_sigma: float = 0.85
    autocast: bool = False  # bf16 autocast for the forwards (distill.common.autocast)
    ema_decay: float = 0.99
    # A teacher model dir (the same network: every weight's name and shape are checked) whose
    # weights start this run, the raw weights and their EMA alike, with a fresh optimiser, at
    # step 0 of this run's own schedule: how a finished teacher (a shipped one, whose run dir
    # is gone) is carried on. Ignored once the run dir holds a checkpoint (a resume).
    init_from: str | None = None
    log_every: int = 10
    ckpt_every: int = 50
    seed: int = 0
    # How the exported transformer's weights are stored ("float32" or "bfloat16"): a bf16 file loads
    # into the model's own dtype (engine.model.load_transformer_weights) at half the size on disk.
    weights_dtype: WeightsDtype = "float32"
    extra: dict = field(default_factory=dict)


# The slot teacher (docs/default-model.md, "The slot teacher"): 4096 clips encoded once
# (12 min), each object placed where its caption's order puts it (canonical layout, from the
# scene's first frame), read by their canonical caption; then 3000 steps of 96 single latent
# frames in bf16 (1.2 s a step on 2 cores, about an hour), each frame at its place in its
# clip, lr 2e-3 held to 2400 and then decayed linearly to a tenth. Frames only: it draws
# shapes in the asked colours and places, and keeps objects where they start (no motion).
SHAPES_TEACHER = TeacherRun(batch_size=0, image_batch=96, pool_size=4096, layout="canonical", max_start_frame=0,
                            captions="canonical", steps=3000, lr=2e-3, decay_from=2400, warmup=300,
                            ema_decay=0.9995, autocast=True, log_every=25, ckpt_every=250)

# The slot teacher carried on (run it in a finished `shapes` run's dir: it resumes at step
# 3000) with a table of places in time (`model.frame_time`, docs/distill.md): 800 steps
# more, lr 1e-3 held to 3500 and then decayed to a tenth (15 min). Each frame is now told
# where it is in its clip, so a moving object is drawn where it has got to.
SHAPES_TIME_TEACHER = replace(SHAPES_TEACHER, model=SHAPES_MODEL.updated(frame_time=6), steps=3800, lr=1e-3,
                              decay_from=3500)

# `shapes-time` carried on (run it in the same dir: it resumes at step 3800) 1000 steps more
# at lr 3e-4, decayed to a tenth from 4300, with an EMA horizon of 1000 steps instead of
# 2000, which had left the table of places in time short of the trained one (19 min).
# Its objects move about twice as often the asked way (docs/default-model.md, v6).
SHAPES_TIME_CARRY = replace(SHAPES_TIME_TEACHER, steps=4800, lr=3e-4, decay_from=4300, ema_decay=0.999)

# The slot teacher's model twice as wide, with the table of places in time (the `shapes-wide` presets).
SHAPES_WIDE_MODEL = SHAPES_MODEL.updated(
    transformer=SHAPES_MODEL.transformer.updated(num_attention_heads=6, ffn_dim=1536), frame_time=6)

SHAPES_WIDE_TEACHER = replace(SHAPES_TEACHER, model=SHAPES_WIDE_MODEL, steps=2200, lr=1e-3, decay_from=1700,
                              ema_decay=0.999)

# A frames-only run (batch_size 0) still encodes its clip pool this many clips at a time.
FRAMES_ONLY_CLIP_BATCH = 16


def clip_batch_of(batch_size: int) -> int:
    """Clips a teacher run of this batch_size draws at a time (its pool's too)."""
    return batch_size or FRAMES_ONLY_CLIP_BATCH

PRESETS: dict[str, TeacherRun] = {
    "shapes": SHAPES_TEACHER,
    "shapes-time": SHAPES_TIME_TEACHER,
    "shapes-time-carry": SHAPES_TIME_CARRY,
    # `shapes-time-carry` carried on once more in the same dir (it resumes at step 4800): the same
    # recipe, the lr back at 3e-4 and decayed to a tenth from 5300 (18 min; docs/default-model.md, v7).
    "shapes-time-carry-2": replace(SHAPES_TIME_CARRY, steps=5800, decay_from=5300),
    # and once more (it resumes at step 5800): the same recipe, decayed from 6300 (18 min; v8).
    "shapes-time-carry-3": replace(SHAPES_TIME_CARRY, steps=6800, decay_from=6300),
    # and a fourth time (it resumes at step 6800), decayed from 7300: the shipped teacher,
    # distill/weights/shapes-teacher (docs/default-model.md, "The shipped teacher").
    "shapes-time-carry-4": replace(SHAPES_TIME_CARRY, steps=7800, decay_from=7300),
    # The wide teacher (docs/default-model.md, "A teacher twice as wide"): the slot teacher's
    # recipe with a transformer twice as wide (6 heads of 64, ffn 1536, 15.7 M parameters) and
    # the table of places in time from the start, lr 1e-3 decayed to a tenth from 1700 to 2200
    # (2.6 s a step on 2 cores, 95 min)...
    "shapes-wide": SHAPES_WIDE_TEACHER,
    # ...carried on in the same dir (it resumes at step 2200, lr back at 1e-3) and decayed to a
    # tenth again from 3400 (74 min): the first teacher past the shipped one, and its student the
    # first past v10 ("The wide teacher carried to 3900 steps", "The student of the wide teacher").
    # Stored in bf16 (31 MB, not 63): v11's teacher (distill/weights/shapes-teacher until v12).
    "shapes-wide-carry": replace(SHAPES_WIDE_TEACHER, steps=3900, decay_from=3400, weights_dtype="bfloat16"),
    # ...and carried on once more from its weights in a run dir of its own (`--set init_from=`
    # that teacher: a fresh optimizer, lr warmed up to 1e-3 again and decayed to a tenth from
    # 700 to 1200, the same 4096 clips; 64 min): the shipped teacher, distill/weights/shapes-teacher,
    # v12's (docs/default-model.md, "The shipped teacher carried on 1200 steps more").
    "shapes-wide-carry-on": replace(SHAPES_WIDE_TEACHER, steps=1200, decay_from=700, ckpt_every=100,
                                    weights_dtype="bfloat16"),
    "tiny": TeacherRun(model=TINY_MODEL, latent_frames=2, batch_size=2, steps=30, lr=2e-3, warmup=2, log_every=5,
                       ckpt_every=10, ema_decay=0.9),
}


def build_text_encoder_for(config: ModelConfig):
    from engine.components import build_text_encoder

    return build_text_encoder(config, None, "cpu")


def load_autoencoder(path: str | Path):
    from engine.autoencoder import ShapesAutoencoder

    return ShapesAutoencoder.load(path).eval().requires_grad_(False)


def lr_at(run: TeacherRun, step: int) -> float:
    scale = min(1.0, (step + 1) / max(1, run.warmup))
    if 0 < run.decay_from < run.steps and step >= run.decay_from:
        done = (step - run.decay_from) / (run.steps - run.decay_from)
        scale *= 1.0 - (1.0 - run.final_lr_fraction) * done
    return run.lr * scale


def train_teacher(run: TeacherRun, run_dir: Path, out_dir: Path | None = None, threads: int = 0,
                  progress: bool = True) -> TrainResult:
    """Train (or resume) the teacher; writes the EMA weights as a model dir (default run_dir/model)."""
    if threads:
        torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(run_to_json(run), indent=2) + "\n")

    # --- build -------------------------------------------------------------------------
    device = resolve_device(run.device)
    model = build_transformer(run.model, seed=run.seed).train().to(device)
    if run.init_from and Checkpointer(run_dir).latest() is None:  # before the pool: a wrong dir fails at once
        from engine.model import load_transformer_weights

        load_transformer_weights(model, Path(run.init_from) / "transformer.safetensors")
        print(f"starting from the weights of {run.init_from}", file=sys.stderr)
    ema = EMA(model, run.ema_decay)  # a copy of the weights it starts from
    opt = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay, betas=(0.9, 0.99))
    autoencoder = load_autoencoder(run.autoencoder).to(device)
    captions = CaptionCache(build_text_encoder_for(run.model))
    lat = run.model.latent
    clip_batch = clip_batch_of(run.batch_size)
    if run.data is None:
        data = ShapesLatents(autoencoder, run.latent_frames, clip_batch, run.seed, lat.height, lat.width,
                             int(lat.fps), max_start_frame=run.max_start_frame, pool_size=run.pool_size,
                             cache_dir=run_dir, progress=progress, layout=run.layout, captions=run.captions,
                             orbit=run.orbit)
    else:
        data = VideoFolderLatents(autoencoder, run.data, run.latent_frames, clip_batch, run.seed, lat.height,
                                  lat.width, lat.fps, pool_size=run.pool_size, cache_dir=run_dir, progress=progress,
                                  captions=run.captions)
    attention = model.clip_attention(run.latent_frames)
    frame_attention = model.full_attention(1)
    if run.batch_size <= 0 and run.image_batch <= 0:
        raise ValueError("batch_size and image_batch are both 0: nothing to train on")
    modules, optimizers = {"model": model, "ema": ema.shadow}, {"opt": opt}
    shapes = ShapeLabels(run, model, data, run_dir, progress) if run.shape_labels > 0 else None
    if shapes is not None:
        shapes.head.to(device)  # in place: the head's optimizer keeps its parameters
        modules["shape_head"], optimizers["shape_head"] = shapes.head, shapes.opt
    critic = ShapeCritic(run, data, run_dir, progress) if run.shape_critic > 0 else None
    if critic is not None:
        critic.net.to(device)
    labelled = shapes or critic  # both read the pool's per-token shape maps
    ckpt = Checkpointer(run_dir)
    metrics = MetricsLog(run_dir)

    # --- resume ------------------------------------------------------------------------
    step = 0
    if (latest := ckpt.latest()) is not None:
        step, _ = ckpt.load(latest, modules, optimizers,
                            optional=("shape_head", "output_refiner", "spatial_position", "frame_time"))
        print(f"resumed from {latest} at step {step}", file=sys.stderr)

    # --- loop: sample, loss, step, EMA, log, checkpoint ---------------------------------
    bar = tqdm(total=run.steps, initial=step, desc="teacher", unit="step", dynamic_ncols=True, disable=not progress)
    start, losses, all_losses, negatives, shape_losses, critic_losses = time.time(), [], [], [], [], []
    while step < run.steps:
        gen = step_generator(run.seed, step)
        parts = []  # (x0, texts, attention, shape maps or None): the step's clips, then its single frames
        if run.batch_size:
            parts.append((*data.batch(step), attention, labelled.clip_maps(step) if labelled else None))  # [B, C, F, h, w]
        if run.image_batch:
            if run.frame_positions:  # each frame at its latent frame's place in the clip
                _, frame, _ = data.single_frames_draw(step, run.image_batch)
                frame_attention = model.full_attention(1, positions=torch.from_numpy(frame)[:, None].to(device))
            parts.append((*data.single_frames(step, run.image_batch), frame_attention,
                          labelled.frame_maps(step) if labelled else None))  # [B', C, 1, h, w]
        flow, weight, hinge, shape_loss, critic_loss = 0.0, 0, None, 0.0, 0.0
        for x0, texts, attn, maps in parts:
            # drawn on the host generator whatever the device, so a GPU run sees a CPU run's draws
            feats = captions(texts)
            drop = torch.rand(len(texts), generator=gen) < run.caption_dropout
            feats = torch.where(drop[:, None, None], torch.zeros_like(feats), feats)  # unconditional = zeros
            noise = torch.randn(x0.shape, generator=gen)
            sigma = sample_sigmas(len(texts), run.model.sampler.shift, gen)
            blurred = torch.rand(len(texts), generator=gen) < run.blur_inputs if run.blur_inputs > 0 else None
            x0, feats, drop, noise, sigma = (t.to(device) for t in (x0, feats, drop, noise, sigma))
            maps = maps.to(device) if maps is not None else None
            source = x0
            if blurred is not None:  # drawn after the noise, so the rest of the step's draws match a run without
                source = torch.where(blurred.to(device)[:, None, None, None, None], blur_latents(x0, run.blur_sigma), x0)
            xt = add_noise(source, noise, sigma)
            with autocast(model, run.autocast):
                v = model.denoise(xt, sigma * 1000, model.embed_text(feats), attn)
            # clips and frames weigh by their latent frames: a frame counts as a clip's frame
            frames = x0.shape[0] * x0.shape[2]
            flow = flow + flow_matching_loss(v, x0, noise) * frames
            weight += frames
            if shapes is not None:
                shape_loss = shape_loss + shapes.loss(maps) * frames
            if critic is not None:
                critic_loss = critic_loss + critic.loss(xt, v, sigma, maps) * frames
            if run.negative_captions > 0 and attn is attention:
                negative = hard_negative_term(model, captions, texts, drop, xt, sigma, x0, noise, v, attention, run,
                                              step)
                if negative is not None:
                    hinge = run.negative_captions * negative
                    negatives.append(negative.item())
        flow = flow / weight
        loss = flow if hinge is None else flow + hinge
        if shapes is not None:
            shape_loss = shape_loss / weight
            loss = loss + run.shape_labels * shape_loss
            shape_losses.append(shape_loss.item())
        if critic is not None:
            critic_loss = critic_loss / weight
            loss = loss + run.shape_critic * critic_loss
            critic_losses.append(float(critic_loss.detach()))

        for group in opt.param_groups:
            group["lr"] = lr_at(run, step)
        opt.zero_grad(set_to_none=True)
        if shapes is not None:
            shapes.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
        opt.step()
        if shapes is not None:
            shapes.opt.step()
        ema.update(model, step)
        step += 1

        losses.append(flow.item())  # the flow-matching loss alone; the hinge is logged apart
        all_losses.append(losses[-1])
        if step % run.log_every == 0 or step == run.steps:
            mean = sum(losses) / len(losses)
            logged = {"loss/flow": mean, "grad_norm": float(grad_norm), "lr": lr_at(run, step)}
            if negatives:
                logged["loss/negative"] = sum(negatives) / len(negatives)
            if shape_losses:
                logged["loss/shapes"] = sum(shape_losses) / len(shape_losses)
            if critic_losses:
                logged["loss/shape_critic"] = sum(critic_losses) / len(critic_losses)
            metrics.log(step, logged)
            bar.set_postfix(loss=f"{mean:.4f}")
            losses, negatives, shape_losses, critic_losses = [], [], [], []
        bar.update(1)
        if step % run.ckpt_every == 0 or step == run.steps:
            ckpt.save(step, modules, optimizers)
    bar.close()
    metrics.close()

    out_dir = out_dir or run_dir / "model"
    export_model(run, run.autoencoder, ema.shadow, out_dir, seconds=time.time() - start, stage="teacher",
                 data=f"videos and captions.jsonl of {run.data}" if run.data else None)
    return TrainResult(out_dir, step, time.time() - start, all_losses)


def shape_layer(asked: int, layers: int) -> int:
    """The block the `shape_labels` head reads after: `asked`, or half the blocks for 0."""
    return asked or layers // 2


class PoolShapeMaps:
    """The pool's per-token shape maps (`ShapesLatents.pool_shape_maps`, tokens of the model's
    patch) and the rows of them a training step's clips and single frames take."""

    def __init__(self, run: TeacherRun, data, run_dir: Path, progress: bool, term: str):
        if not isinstance(data, ShapesLatents) or data.pool is None:
            raise ValueError(f"{term} needs the Shapes world's scenes and a clip pool (data unset, pool_size > 0)")
        self.data, self.run = data, run
        token = run.model.latent.spatial_compression * run.model.transformer.patch_size[1]
        self.maps = data.pool_shape_maps(token, run_dir, progress)  # [N, F, K, h, w]

    def clip_maps(self, step: int) -> torch.Tensor:
        """The maps of the clips `data.batch(step)` gives: [B, F, K, h, w]."""
        return self.maps[torch.from_numpy(self.data.batch_draw(step)[0])]

    def frame_maps(self, step: int) -> torch.Tensor:
        """The maps of the frames `data.single_frames(step, image_batch)` gives: [B', 1, K, h, w]."""
        index, frame, _ = self.data.single_frames_draw(step, self.run.image_batch)
        return self.maps[torch.from_numpy(index), torch.from_numpy(frame)].unsqueeze(1)

    @staticmethod
    def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
        """Cross-entropy against the maps' shares (not one label), per token: `dim` is the classes'."""
        return -(target * torch.log_softmax(logits.float(), dim)).sum(dim)


class ShapeLabels(PoolShapeMaps):
    """The `shape_labels` term: the pool's per-token shape maps, a linear head reading the
    tokens after block `shape_layer` (a forward hook, so the engine's forward is untouched),
    and its own optimizer. Training-only; the exported model has no head."""

    def __init__(self, run: TeacherRun, model: CausalWanTransformer, data, run_dir: Path, progress: bool):
        layers = len(model.blocks)
        layer = shape_layer(run.shape_layer, layers)
        if not 1 <= layer <= layers:
            raise ValueError(f"shape_layer {layer} is not a block of this {layers}-block model")
        super().__init__(run, data, run_dir, progress, "shape_labels")
        dim = run.model.transformer.num_attention_heads * run.model.transformer.attention_head_dim
        torch.manual_seed(run.seed + 1)
        self.head = torch.nn.Linear(dim, self.maps.shape[2])
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=run.lr, weight_decay=run.weight_decay)
        self.tokens: torch.Tensor | None = None
        model.blocks[layer - 1].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.tokens = output

    def loss(self, maps: torch.Tensor) -> torch.Tensor:
        """Soft cross-entropy of the head on the tokens the last forward kept, against `maps`
        [B, F, K, h, w] (tokens in the transformer's order: frame, row, column)."""
        logits = self.head(self.tokens.float())  # [B, N, K]
        target = maps.permute(0, 1, 3, 4, 2).reshape(logits.shape)
        return self.soft_cross_entropy(logits, target, -1).mean()


class ShapeCritic(PoolShapeMaps):
    """The `shape_critic` term. A small CNN over a latent frame says which shape (or the
    background) each token shows, as `ShapeLabels`' maps give it; it is trained first on the
    pool's clean latents (lightly noised, so that a nearly clean estimate reads the same),
    checked on pool frames it did not train on, cached in the run dir, and then frozen: during
    the teacher's training only the transformer's clean estimate x_t - s v learns from it."""

    steps, batch, channels = 2000, 128, 64

    def __init__(self, run: TeacherRun, data, run_dir: Path, progress: bool):
        from safetensors.torch import load_file, save_file

        super().__init__(run, data, run_dir, progress, "shape_critic")
        stride = run.model.transformer.patch_size[1]  # latent cells a token spans: the critic answers per token
        token = run.model.latent.spatial_compression * stride
        k, c = self.maps.shape[2], data.pool.shape[1]
        torch.manual_seed(run.seed + 2)
        layers = [torch.nn.Conv2d(c, self.channels, 3, padding=1), torch.nn.SiLU(),
                  torch.nn.Conv2d(self.channels, self.channels, 3, padding=1), torch.nn.SiLU(),
                  torch.nn.Conv2d(self.channels, self.channels, 3, padding=1, stride=stride), torch.nn.SiLU(),
                  torch.nn.Conv2d(self.channels, self.channels, 3, padding=1), torch.nn.SiLU(),
                  torch.nn.Conv2d(self.channels, k, 1)]
        self.net = torch.nn.Sequential(*layers)
        file = run_dir / f"shape-critic-{run.seed}-{len(self.maps)}-{token}px.safetensors"
        if file.is_file():
            self.net.load_state_dict(load_file(file))
        else:
            self._train(progress)
            save_file(self.net.state_dict(), file)
        self.net.requires_grad_(False).eval()
        print(f"shape critic: names the shape of {self.accuracy():.3f} of held-out object tokens", file=sys.stderr)

    def _split(self) -> int:
        return len(self.maps) - max(1, len(self.maps) // 16)  # the last 16th of the pool is held out

    def _frames(self, rng: np.random.Generator, low: int, high: int, count: int):
        index, frame = rng.integers(low, high, size=count), rng.integers(self.maps.shape[1], size=count)
        i, f = torch.from_numpy(index), torch.from_numpy(frame)
        return self.data.pool[i, :, f].float(), self.maps[i, f]  # [n, C, h, w], [n, K, h', w']

    def _train(self, progress: bool) -> None:
        opt = torch.optim.AdamW(self.net.parameters(), lr=2e-3, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=self.steps, pct_start=0.1)
        rng, gen = np.random.default_rng([self.run.seed, 5]), torch.Generator().manual_seed(self.run.seed + 5)
        for _ in tqdm(range(self.steps), desc="shape critic", unit="step", disable=not progress, dynamic_ncols=True):
            x, maps = self._frames(rng, 0, self._split(), self.batch)
            s = 0.2 * torch.rand(len(x), 1, 1, 1, generator=gen)
            x = (1 - s) * x + s * torch.randn(x.shape, generator=gen)
            ce = self.soft_cross_entropy(self.net(x), maps, 1)  # [n, h', w']
            loss = ce.mean() + ce[maps[:, 0] < 0.5].mean()  # the object tokens count again: most are background
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()

    @torch.no_grad()
    def accuracy(self) -> float:
        x, maps = self._frames(np.random.default_rng([self.run.seed, 6]), self._split(), len(self.maps), 512)
        pred, target = self.net(x).argmax(1), maps.argmax(1)
        objects = maps[:, 0] < 0.5
        return float((pred == target)[objects].float().mean())

    def loss(self, xt: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Soft cross-entropy of the critic on the clean estimates of the samples with s <=
        shape_critic_sigma, over their tokens that are mostly object (0 when there are none)."""
        keep = sigma <= self.run.shape_critic_sigma
        if not bool(keep.any()):
            return v.sum() * 0
        s = sigma[keep].view(-1, 1, 1, 1, 1)
        x0 = xt[keep].float() - s * v[keep].float()  # [b, C, F, h, w]
        frames = x0.transpose(1, 2).flatten(0, 1)  # [b*F, C, h, w]
        target = maps[keep].flatten(0, 1)  # [b*F, K, h', w']
        ce = self.soft_cross_entropy(self.net(frames), target, 1)
        objects = target[:, 0] < 0.5
        return ce[objects].mean() if bool(objects.any()) else ce.sum() * 0


def hard_negative_term(model, captions: CaptionCache, texts: list[str], dropped: torch.Tensor, xt: torch.Tensor,
                       sigma: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, v: torch.Tensor, attention,
                       run: TeacherRun, step: int) -> torch.Tensor | None:
    """The hard-negative hinge over the step's captioned clips that have a swappable word
    (None when none has): their x_t denoised again under the swapped captions."""
    from .losses import hard_negative_loss

    rng = np.random.default_rng([run.seed, 3, step])
    pairs = [(i, swapped) for i, text in enumerate(texts)
             if not dropped[i] and (swapped := swapped_caption(text, rng)) is not None]
    if not pairs:
        return None
    keep = torch.tensor([i for i, _ in pairs])
    negative = captions([s for _, (s, _) in pairs]).to(xt.device)
    with autocast(model, run.autocast):
        v_negative = model.denoise(xt[keep], sigma[keep] * 1000, model.embed_text(negative), attention)
    return hard_negative_loss(v[keep], v_negative, x0[keep], noise[keep], run.negative_margin)


def export_model(run, autoencoder_dir: str | Path, transformer: torch.nn.Module, out_dir: Path, seconds: float,
                 stage: str, data: str | None = None) -> None:
    """A self-contained model dir: model.json (config + provenance), transformer, and the
    autoencoder's files when the model has its own (a Wan model refers to its VAE's folder)."""
    from engine.model import save_model

    run_fields = {k: v for k, v in run_to_json(run).items() if k != "model"}
    provenance = {"stage": stage, "command": " ".join(["framecast"] + sys.argv[1:]),
                  "data": data or "Shapes world (distill/data/shapes.py), generated on the fly",
                  "run": run_fields,
                  "train_seconds_last_invocation": round(seconds)}
    config = run.model.model_copy(update={"provenance": provenance})
    save_model(out_dir, config, transformer, weights_dtype=run.weights_dtype)
    if config.decoder.kind != "shapes_ae":
        return
    for name in ("autoencoder.json", "autoencoder.safetensors"):
        src = Path(autoencoder_dir) / name
        if src.resolve() != (out_dir / name).resolve():
            shutil.copyfile(src, out_dir / name)


# --- sampling ------------------------------------------------------------------------------

@torch.no_grad()
def sample_teacher(transformer: CausalWanTransformer, config: ModelConfig, text_feats: torch.Tensor,
                   latent_frames: int, steps: int = 50, guidance: float | None = None,
                   generator: torch.Generator | None = None, return_trajectory_at: list[float] | None = None,
                   start: tuple[torch.Tensor, float] | None = None, shared_noise: bool = False):
    """Euler sampling of the probability-flow ODE with classifier-free guidance.

    text_feats [B, L, text_dim] -> x0 [B, C, F, h, w]; with `return_trajectory_at`
    (noise levels s), also the states x_s on the way (for the student's ODE init). With
    `start` = (x_s, s), sampling begins from that noisy state and skips the schedule's
    levels above s (SDEdit: how much of a clip the teacher keeps from each level; x_s is
    taken to be at the first level of the schedule at or below s, one step of it away at most).
    `shared_noise`: every latent frame starts from the same noise (a frames-only teacher,
    which draws each frame on its own, then draws one object in every frame, not a new one)."""
    guidance = config.guidance_scale if guidance is None else guidance
    lat = config.latent
    b, device = text_feats.shape[0], text_feats.device
    x = torch.randn((b, lat.channels, 1 if shared_noise else latent_frames, lat.latent_height, lat.latent_width),
                    generator=generator, device=generator.device if generator is not None else device)
    x = x.expand(-1, -1, latent_frames, -1, -1).contiguous()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=config.sampler.shift)
    scheduler.set_timesteps(steps)
    first = 0
    if start is not None:
        x, level = start[0].to(x), start[1]
        first = int((scheduler.sigmas[:-1] > level + 1e-6).sum())
        scheduler.set_begin_index(first)
    cond = transformer.embed_text(text_feats)
    uncond = transformer.embed_text(torch.zeros_like(text_feats))
    attention = transformer.clip_attention(latent_frames)
    targets = sorted(return_trajectory_at or [], reverse=True)
    trajectory: list[torch.Tensor] = []
    for i, t in enumerate(scheduler.timesteps[first:], start=first):
        sigma, sigma_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
        tt = t.to(device).expand(b)
        if guidance == 1.0:
            v = transformer.denoise(x, tt, cond, attention)
        else:
            both = transformer.denoise(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, uncond]), attention)
            v_cond, v_uncond = both.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        while targets and sigma_next < targets[0] <= sigma + 1e-6:  # a level inside this Euler step
            trajectory.append(x + (targets.pop(0) - sigma) * v)
        x = scheduler.step(v, t, x).prev_sample
    return (x, trajectory) if return_trajectory_at is not None else x


class TeacherGenerator:
    """The teacher as a clip generator for the evaluator: generate(prompt, seconds, seed)
    -> uint8 [T, H, W, 3] by 50-step guided sampling of clips of its training length."""

    def __init__(self, model_dir: str | Path, steps: int = 50, guidance: float | None = None,
                 shared_noise: bool = False):
        from engine.components import build_text_encoder
        from engine.model import load_transformer_weights

        model_dir = Path(model_dir)
        self.config = ModelConfig.load(model_dir / "model.json")
        self.transformer = build_transformer(self.config).eval()
        load_transformer_weights(self.transformer, model_dir / "transformer.safetensors")
        self.text_encoder = build_text_encoder(self.config, model_dir, "cpu")
        self.autoencoder = load_autoencoder(model_dir)
        self.steps, self.guidance, self.shared_noise = steps, guidance, shared_noise
        run = self.config.provenance.get("run", {})
        # the clip length it trained on: a frames-only teacher (batch_size 0) never saw a clip
        # longer than one latent frame, so it is sampled at the length asked for
        self.latent_frames = int(run.get("latent_frames", 6)) if run.get("batch_size", 1) else 1
        self.fps = self.config.latent.fps

    @torch.no_grad()
    def generate(self, prompt: str, seconds: float, seed: int | None = None):
        from engine.model import read_prompt
        from engine.session import to_uint8_frames

        total = max(1, round(seconds * self.fps))
        latent_frames = max(self.latent_frames, -(-total // self.config.latent.temporal_compression))
        gen = torch.Generator().manual_seed(seed or 0)
        x0 = sample_teacher(self.transformer, self.config, self.text_encoder.encode([read_prompt(self.config, prompt)]),
                            latent_frames,
                            steps=self.steps, guidance=self.guidance, generator=gen, shared_noise=self.shared_noise)
        return to_uint8_frames(self.autoencoder.decode(x0))[:total]
