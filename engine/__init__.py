"""Framecast inference engine: the causal streaming student, its KV cache, the few-step
sampler, autoencoders, text encoders, StreamSession and the batching scheduler.

    from engine import load_model
    model = load_model("tiny-random")           # or None (embedded default) or a model dir
    session = model.open_session("a red ball bouncing", seed=0)
    chunk = session.next_chunk()                # Chunk(index, frames uint8 [T, H, W, 3], pts, ...)
    session.update_prompt("a blue square moving left")   # takes effect at the next chunk

`engine` imports neither `server` nor `distill`. Importing it loads torch but no model.
"""

from .config import ModelConfig
from .errors import (CheckpointError, EngineError, InvalidConfig, InvalidInput, InvalidPrompt, InvalidSeed,
                     ModelNotFound, SessionClosed, ShapeMismatch)
from .model import PRESETS, StreamModel, load_model, save_model
from .session import Chunk, StreamSession

__all__ = ["ModelConfig", "EngineError", "InvalidInput", "InvalidPrompt", "InvalidSeed", "InvalidConfig",
           "ShapeMismatch", "ModelNotFound", "CheckpointError", "SessionClosed", "StreamModel", "load_model",
           "save_model", "PRESETS", "Chunk", "StreamSession"]
