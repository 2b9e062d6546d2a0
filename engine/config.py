"""One typed config per model: it is the constructor's argument and what `model.json`
holds, so a checkpoint always knows how to rebuild itself. Defaults live here only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidConfig


class FrozenConfig(BaseModel):
    """Base of every config here: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def updated(self, **changes: Any):
        """A copy with `changes` applied and validated again (model_copy does not validate)."""
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise InvalidConfig(str(exc)) from exc


class TransformerConfig(FrozenConfig):
    """Exactly the constructor arguments of diffusers' `WanTransformer3DModel`, so a real
    Wan2.1 config.json maps onto it one to one (Wan2.1-T2V-1.3B: heads 12, head dim 128,
    ffn 8960, layers 30, text_dim 4096)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 2
    attention_head_dim: int = 24
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 32
    freq_dim: int = 256
    ffn_dim: int = 96
    num_layers: int = 2
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


Policy = Literal["full", "sink_window", "ema_sink", "linear_state"]


class AttentionConfig(FrozenConfig):
    """How a chunk attends to the past (DESIGN.md, "Attention, positions and the cache").

    full          bidirectional over the whole clip (the teacher); no cache.
    sink_window   block-causal: the current chunk sees `sink_frames` fixed first frames and
                  the last `window_frames` frames (sink 0 and a large window = plain causal).
    ema_sink      as sink_window, but each frame leaving the window is folded into the sink:
                  sink <- a * sink + (1 - a) * evicted (Reward Forcing, a = ema_decay).
    linear_state  as sink_window, plus a running linear-attention state of evicted frames read
                  through a zero-initialised projection (Hybrid Forcing).

    `text_padding` is how the cross-attention treats the zero padding after a prompt's tokens:
    attend   as diffusers' Wan does: every padding position is the projection of zeros, one
             key repeated (L - words) times, which a small model learns to use as a sink.
    mask     the prompt's tokens only (a prompt with none, the unconditional branch, attends
             to its all-zero context).

    `rope_theta` is the base of the 3D rotary position tables (Wan: 10000). Its rotation
    frequencies run from 1 down to theta^-1 radians per position; on a small latent grid (8x8
    tokens) theta = 10000 leaves most of a head's rotated pairs turning by under 0.2 rad across
    the whole grid, so they carry no position. A smaller base spreads them over the grid.
    """

    policy: Policy = "sink_window"
    chunk_frames: int = Field(3, ge=1)  # latent frames generated per chunk
    sink_frames: int = Field(3, ge=0)
    window_frames: int = Field(9, ge=1)  # past latent frames kept beside the sink
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    backend: str = "native"  # a diffusers attention backend name: native (torch SDPA), xformers, flash ...
    text_padding: Literal["attend", "mask"] = "attend"
    rope_theta: float = Field(10000.0, gt=1.0)

    @property
    def streaming(self) -> bool:
        """Chunks attend through a KV cache (every policy but the teacher's 'full')."""
        return self.policy != "full"

    @model_validator(mode="after")
    def _check(self) -> "AttentionConfig":
        if self.policy == "ema_sink" and self.sink_frames < 1:
            raise ValueError("ema_sink needs sink_frames >= 1")
        return self


class SamplerConfig(FrozenConfig):
    """Few-step flow matching (Self-Forcing): timesteps in [0, 1000] before the shift."""

    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = Field(5.0, gt=0)
    num_train_timesteps: int = 1000
    # Steps per chunk: chunk i uses steps_per_chunk[min(i, len-1)] (diagonal: 4, 3, 2).
    steps_per_chunk: tuple[int, ...] = (4,)
    # After a chunk is denoised, one forward over the clean chunk at t=0 writes its K/V.
    # False: keep the K/V of the last (partially noisy) step instead (diagonal distillation).
    refresh_context: bool = True

    @model_validator(mode="after")
    def _check(self) -> "SamplerConfig":
        if any(s < 1 or s > len(self.timesteps) for s in self.steps_per_chunk):
            raise ValueError(f"steps_per_chunk must be within 1..{len(self.timesteps)}")
        if list(self.timesteps) != sorted(self.timesteps, reverse=True):
            raise ValueError("timesteps must decrease")
        return self


class LatentConfig(FrozenConfig):
    """Wan latent layout: 4x temporal, 8x spatial compression."""

    channels: int = 16
    temporal_compression: int = 4
    spatial_compression: int = 8
    height: int = 64  # pixels
    width: int = 64
    fps: float = 16.0

    @property
    def latent_height(self) -> int:
        return self.height // self.spatial_compression

    @property
    def latent_width(self) -> int:
        return self.width // self.spatial_compression


class TextEncoderConfig(FrozenConfig):
    kind: Literal["hash", "minilm", "umt5", "shapes"] = "hash"  # shapes: engine/shapes/slots.py
    dim: int = 32
    max_tokens: int = 16
    path: str | None = None  # local directory (relative paths are relative to the model dir)
    sha256: str | None = None
    # "rms": each token's features scaled to unit root-mean-square (padding stays zero), so
    # the context enters the transformer at the scale its projections are initialised for.
    feature_norm: Literal["none", "rms"] = "none"


class DecoderConfig(FrozenConfig):
    kind: Literal["standin", "shapes_ae", "wan_vae", "taehv"] = "standin"
    path: str | None = None


# How a model's forwards run (engine/runtime): eager torch (the reference), torch.compile,
# ONNX Runtime or TensorRT. load_model(backend=...) and `--backend` override it.
Runtime = Literal["eager", "compile", "onnxruntime", "tensorrt"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)


class ModelConfig(FrozenConfig):
    name: str = "tiny-random"
    description: str = ""
    transformer: TransformerConfig = TransformerConfig()
    attention: AttentionConfig = AttentionConfig()
    sampler: SamplerConfig = SamplerConfig()
    latent: LatentConfig = LatentConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    guidance_scale: float = 1.0  # for the teacher's 50-step sampling; students are guidance-free
    # "mean": the prompt also conditions every block's modulation, as SD3 and Flux add a pooled
    # text vector to the timestep embedding: the mean of the projected context goes through a
    # zero-initialised MLP (`pooled_text_embedder`, absent from Wan checkpoints) into the time
    # embedding. "none": text enters through the cross-attention only, as in Wan.
    text_pooling: Literal["none", "mean"] = "none"
    # > 0: a convolutional refiner after the unpatchify (`output_refiner`, absent from Wan
    # checkpoints): per latent frame, two 3x3 convolutions with this many hidden channels over
    # per-pixel features of the last tokens, the flow prediction and the clean estimate it
    # implies, added to the prediction (zero-initialised: a no-op until trained). Tokens of
    # 2x2 latent pixels each write their own patch; the refiner lets neighbouring pixels agree
    # across token borders (U-ViT ends in a 3x3 convolution for the same reason). 0: none.
    # Measured on a Shapes teacher: 4-5 % lower flow loss, no shapes (docs/default-model.md).
    output_refiner: int = Field(0, ge=0)
    # True: a learned embedding of each token's place in the latent frame (`spatial_position`,
    # [tokens a frame, D], zero-initialised, absent from Wan checkpoints) is added to the patch
    # tokens of every frame, as DiT adds its 2D table. With rotary positions alone attention
    # sees only offsets between tokens, so a model must infer where the frame's middle or edge
    # is; a small one does not, and cannot put an object where its prompt (or a canonical
    # layout) says. The same table for every frame: streaming and the cache are unchanged.
    absolute_positions: bool = False
    # > 0: a teacher trained on single frames (`framecast distill teacher --set batch_size=0`).
    # A learned table [frame_time, D] (`frame_time`, zero-initialised) of each latent frame's
    # place in its clip is added to that frame's tokens, and the model sees a clip one frame
    # at a time (attention within each frame, `CausalWanTransformer.clip_attention`), as it
    # was trained. Rotary positions cannot tell a lone frame where it is in its clip (between
    # tokens of one frame they cancel), so without the table a frames-only teacher learns the
    # average of a moving object's path and nothing moves. Teachers only: a student is told
    # nothing of where it is in its stream, and its config sets 0.
    frame_time: int = Field(0, ge=0)
    # What the network's output is. "flow": the flow v = noise - x0 itself (Wan). "sample": the
    # clean sample x0, turned into the flow v = (x_t - x0) / s inside `denoise` (s clipped at
    # SAMPLE_MIN_SIGMA), so samplers, losses and students see a flow either way. Predicting the
    # clean sample suits tokens that are wide next to the model (JiT, "Back to Basics: Let
    # Denoising Generative Models Denoise", 2025): clean frames lie on a low-dimensional
    # manifold, noise does not. Measured on the Shapes pixel control: backgrounds and no objects
    # after 1500 steps, where the flow output draws blobs (docs/default-model.md).
    prediction: Literal["flow", "sample"] = "flow"
    # "shapes": the model reads each prompt as its canonical Shapes caption
    # (engine.shapes.captions.canonical_prompt: the canonical words, the unsaid filled in, a
    # background that differs from the objects), as video models' prompt extenders rewrite what
    # people type into the phrasing their model knows best; a prompt naming nothing of the world
    # is read as written. "none": as written. Measured on the held-out prompts
    # (docs/default-model.md).
    prompt_rewrite: Literal["none", "shapes"] = "none"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    runtime: Runtime = "eager"
    provenance: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        t, lat = self.transformer, self.latent
        if t.in_channels != lat.channels:
            raise ValueError(f"transformer.in_channels {t.in_channels} != latent.channels {lat.channels}")
        if t.text_dim != self.text_encoder.dim:
            raise ValueError(f"transformer.text_dim {t.text_dim} != text_encoder.dim {self.text_encoder.dim}")
        for side in (lat.height, lat.width):
            if side % (lat.spatial_compression * t.patch_size[1]):
                raise ValueError(f"frame size {lat.width}x{lat.height} must divide by "
                                 f"{lat.spatial_compression * t.patch_size[1]}")
        if t.attention_head_dim % 2:
            raise ValueError("attention_head_dim must be even (rotary embedding)")
        if self.output_refiner and self.prediction != "flow":
            raise ValueError("output_refiner refines a flow prediction: use it with prediction 'flow'")
        return self

    # --- derived sizes -------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        p = self.transformer.patch_size
        return (self.latent.latent_height // p[1]) * (self.latent.latent_width // p[2])

    @property
    def frames_per_chunk(self) -> int:
        """Video frames each streamed chunk yields."""
        return self.attention.chunk_frames * self.latent.temporal_compression

    # --- JSON ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            return cls.model_validate_json(Path(path).read_text())
        except ValidationError as exc:
            raise InvalidConfig(f"{path}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise InvalidConfig(f"{path}: cannot read model config: {exc}") from exc


def build_config(**overrides: Any) -> ModelConfig:
    """A ModelConfig from nested dict overrides, with validation errors as InvalidConfig."""
    try:
        return ModelConfig.model_validate(overrides)
    except ValidationError as exc:
        raise InvalidConfig(str(exc)) from exc
