"""What a model can do, as plain JSON-ready data, for `GET /v1/models` and `framecast convert`.
Computed from the config alone, so a server can list models it has not loaded."""

from __future__ import annotations

import math
from typing import Any

from ..config import ModelConfig
from .wan_layout import original_key_shapes


def transformer_parameters(config: ModelConfig) -> int:
    """Parameters of the Wan transformer the config describes, from its shapes alone (without
    the optional linear-state readouts)."""
    return sum(math.prod(shape) for shape in original_key_shapes(config.transformer).values())


def describe(config: ModelConfig) -> dict[str, Any]:
    att, sampler, lat = config.attention, config.sampler, config.latent
    streaming = att.policy != "full"
    return {
        "name": config.name,
        "description": config.description,
        "width": lat.width,
        "height": lat.height,
        "fps": lat.fps,
        "streaming": streaming,  # False: a bidirectional teacher, clips only
        "prompt_switch": streaming,  # KV re-cache at a chunk boundary
        "chunk_latent_frames": att.chunk_frames,
        "frames_per_chunk": config.frames_per_chunk,
        "steps_per_chunk": list(sampler.steps_per_chunk),
        "timesteps": list(sampler.timesteps),
        "shift": sampler.shift,
        "attention": {
            "policy": att.policy,
            "sink_frames": att.sink_frames,
            "window_frames": att.window_frames,
            **({"ema_decay": att.ema_decay} if att.policy == "ema_sink" else {}),
        },
        "text_encoder": {"kind": config.text_encoder.kind, "max_tokens": config.text_encoder.max_tokens},
        "decoder": config.decoder.kind,
        "parameters": transformer_parameters(config),
        "dtype": config.dtype,
        "format": config.provenance.get("format", "framecast"),
    }
