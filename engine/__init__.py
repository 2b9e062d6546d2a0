"""Framecast inference engine: the causal streaming student, its KV cache, the few-step
sampler, autoencoders, text encoders, StreamSession and the batching scheduler.

    from engine import load_model
    model = load_model("tiny-random")           # or None (embedded default) or a model dir
    session = model.open_session("a red ball bouncing", seed=0)
    chunk = session.next_chunk()                # Chunk(index, frames uint8 [T, H, W, 3], pts, ...)
    session.update_prompt("a blue square moving left")   # takes effect at the next chunk

`engine` imports neither `server` nor `distill`. Importing it loads nothing heavy until a
name is used; no model is loaded until `load_model`.
"""

from .lazy import lazy_attributes

# Names resolve on first use, so importing a light submodule of this package does not load torch.
_LAZY = {
    "ModelConfig": ".config",
    "CheckpointError": ".errors",
    "EngineError": ".errors",
    "InvalidConfig": ".errors",
    "InvalidInput": ".errors",
    "InvalidPrompt": ".errors",
    "InvalidSeed": ".errors",
    "ModelNotFound": ".errors",
    "SessionClosed": ".errors",
    "ShapeMismatch": ".errors",
    "PRESETS": ".model",
    "StreamModel": ".model",
    "load_model": ".model",
    "save_model": ".model",
    "Chunk": ".session",
    "StreamSession": ".session",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = ["ModelConfig", "EngineError", "InvalidInput", "InvalidPrompt", "InvalidSeed", "InvalidConfig",
           "ShapeMismatch", "ModelNotFound", "CheckpointError", "SessionClosed", "StreamModel", "load_model",
           "save_model", "PRESETS", "Chunk", "StreamSession"]
