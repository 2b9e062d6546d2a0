"""Wan2.1 text-to-video in diffusers format (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers), as a
teacher and as the base every student needs (its umT5 text encoder, tokenizer and VAE):

    <root>/transformer/   config.json + diffusion_pytorch_model*.safetensors (maybe sharded)
    <root>/text_encoder/  UMT5EncoderModel (transformers)
    <root>/tokenizer/     the umT5 tokenizer
    <root>/vae/           AutoencoderKLWan (diffusers)
    <root>/scheduler/     scheduler_config.json (the teacher's flow shift)

Our transformer *is* diffusers' WanTransformer3DModel, so the transformer's config.json maps
field for field onto TransformerConfig and its weights load without renaming.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import (AttentionConfig, DecoderConfig, LatentConfig, ModelConfig, SamplerConfig, TextEncoderConfig,
                      TransformerConfig)
from ..errors import CheckpointError
from .files import read_json, read_safetensors_dir

# Wan2.1's native 480p layout: 832x480 frames, 16 fps, 16 latent channels (Wan's sample_fps 16;
# Self-Forcing and its successors all train on [21, 16, 60, 104] latents).
WAN_WIDTH, WAN_HEIGHT, WAN_FPS = 832, 480, 16.0
# Wan's text_len: prompts are encoded to 512 umT5 tokens, zero past the prompt's own.
WAN_TEXT_TOKENS = 512
# Wan's generate.py defaults for text-to-video when the folder has no scheduler config.
WAN_SAMPLE_SHIFT, WAN_GUIDANCE = 5.0, 5.0
# Config fields that only image-to-video / other Wan variants set; a text-to-video model has them null.
UNSUPPORTED_WHEN_SET = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")


def transformer_config(root: Path) -> TransformerConfig:
    """transformer/config.json -> TransformerConfig (the same fields, one to one)."""
    path = Path(root) / "transformer" / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{root}: not a diffusers Wan folder (no transformer/config.json)")
    raw = read_json(path)
    if raw.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise CheckpointError(f"{path}: a {raw['_class_name']}, expected WanTransformer3DModel")
    set_unsupported = [k for k in UNSUPPORTED_WHEN_SET if raw.get(k) is not None]
    if set_unsupported:
        raise CheckpointError(f"{path}: sets {set_unsupported}: an image-to-video or other Wan variant; "
                              "only text-to-video Wan2.1 is supported")
    fields = {k: v for k, v in raw.items() if k in TransformerConfig.model_fields}
    unknown = sorted(k for k, v in raw.items()
                     if not k.startswith("_") and k not in fields and k not in UNSUPPORTED_WHEN_SET and v is not None)
    if unknown:
        raise CheckpointError(f"{path}: unknown transformer settings {unknown}")
    try:
        return TransformerConfig(**fields)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def transformer_weights(root: Path) -> dict[str, torch.Tensor]:
    return read_safetensors_dir(Path(root) / "transformer")


def text_encoder_config(root: Path) -> TextEncoderConfig:
    """umT5 from the folder: width from text_encoder/config.json (4096 for umt5-xxl)."""
    root = Path(root)
    for part in ("text_encoder", "tokenizer"):
        if not (root / part).is_dir():
            raise CheckpointError(f"{root}: no {part}/ folder (the umT5 text encoder every Wan model needs)")
    raw = read_json(root / "text_encoder" / "config.json")
    if "d_model" not in raw:
        raise CheckpointError(f"{root / 'text_encoder' / 'config.json'}: no d_model; not a T5/umT5 encoder")
    return TextEncoderConfig(kind="umt5", dim=int(raw["d_model"]), max_tokens=WAN_TEXT_TOKENS,
                             path=str(root.resolve()))


def vae_config(root: Path) -> DecoderConfig:
    vae = Path(root) / "vae"
    if not (vae / "config.json").is_file():
        raise CheckpointError(f"{root}: no vae/config.json (the Wan VAE)")
    return DecoderConfig(kind="wan_vae", path=str(vae.resolve()))


def scheduler_shift(root: Path) -> float:
    """The teacher's flow shift from scheduler/scheduler_config.json (UniPC's `flow_shift` or
    FlowMatchEuler's `shift`), else Wan's default."""
    path = Path(root) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return WAN_SAMPLE_SHIFT
    raw = read_json(path)
    shift = raw.get("flow_shift") or raw.get("shift")
    return float(shift) if shift else WAN_SAMPLE_SHIFT


def latent_config(size: tuple[int, int] = (WAN_WIDTH, WAN_HEIGHT), fps: float = WAN_FPS,
                  channels: int = 16) -> LatentConfig:
    width, height = size
    return LatentConfig(channels=channels, width=width, height=height, fps=fps)


def teacher_config(root: Path, name: str = "wan2.1-t2v", size: tuple[int, int] = (WAN_WIDTH, WAN_HEIGHT),
                   decoder: DecoderConfig | None = None) -> ModelConfig:
    """The bidirectional Wan model as a teacher: full attention, the scheduler's shift, Wan's
    guidance. (The few-step sampler fields are unused by a teacher; chunk sizes say how the
    distillation pipeline slices clips, 3 latent frames as the students use.)"""
    root = Path(root)
    t = transformer_config(root)
    try:
        return ModelConfig(
            name=name,
            description=f"Wan2.1 text-to-video ({t.num_layers} layers, width {t.inner_dim}) from {root.name}, "
                        "bidirectional teacher",
            transformer=t,
            attention=AttentionConfig(policy="full", chunk_frames=3, sink_frames=3, window_frames=18),
            sampler=SamplerConfig(shift=scheduler_shift(root)),
            latent=latent_config(size, channels=t.in_channels),
            text_encoder=text_encoder_config(root),
            decoder=decoder or vae_config(root),
            guidance_scale=WAN_GUIDANCE,
            dtype="bfloat16",
        )
    except ValueError as exc:
        raise CheckpointError(f"{root}: {exc}") from exc
