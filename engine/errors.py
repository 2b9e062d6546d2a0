"""Exception types the engine raises, so callers (server, CLI) can map them to
clear 4xx answers or exit codes instead of tracebacks."""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidInput(EngineError, ValueError):
    """The caller's input is wrong (maps to HTTP 400 / a WebSocket `error`)."""

    code = "invalid_request"


class InvalidPrompt(InvalidInput):
    code = "invalid_prompt"


class InvalidSeed(InvalidInput):
    code = "invalid_seed"


class InvalidConfig(InvalidInput):
    """A model config that cannot be built: unknown policy, inconsistent sizes."""

    code = "invalid_config"


class ShapeMismatch(InvalidInput):
    """Tensors whose shapes do not match the model they are given to."""

    code = "shape_mismatch"


class ModelNotFound(EngineError, LookupError):
    code = "unknown_model"


class CheckpointError(EngineError):
    """A checkpoint that is missing keys, has wrong shapes, is truncated or unknown."""

    code = "bad_checkpoint"


class SessionClosed(EngineError):
    code = "session_closed"


class CapacityError(EngineError):
    """No room for another stream (maps to the `server_full` error)."""

    code = "server_full"
