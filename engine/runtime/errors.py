"""Errors of the runtime backends, as engine errors so the CLI and the server show them
as one clear line instead of a traceback."""

from __future__ import annotations

from ..errors import EngineError


class RuntimeUnavailable(EngineError):
    """The chosen backend cannot run here: a package or a GPU is missing."""

    code = "runtime_unavailable"


class EngineNotBuilt(EngineError):
    """A TensorRT engine for this model, GPU and shapes is not in the engine cache.
    Engines are built ahead of serving (`framecast build-engines`), never on a request."""

    code = "engine_not_built"


class EngineBuildFailed(EngineError):
    code = "engine_build_failed"
