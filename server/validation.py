"""Checks of a request against the served model and the server's limits, shared by the
WebSocket stream and the HTTP jobs (the pydantic messages check the rest)."""

from __future__ import annotations

from .errors import ApiError

MIN_FPS = 1.0  # below this a "video" is a slide show, and frame timing loses its precision


def check_model(model, requested: str | None) -> None:
    if requested is not None and requested != model.name:
        raise ApiError("unknown_model", f"model {requested!r} is not served here; this server serves "
                       f"{model.name!r}", "model")


def check_prompt(prompt: str, max_chars: int) -> str:
    if not prompt.strip():
        raise ApiError("invalid_prompt", "prompt must not be blank", "prompt")
    if len(prompt) > max_chars:
        raise ApiError("invalid_prompt", f"prompt has {len(prompt)} characters; the limit is {max_chars}", "prompt")
    return prompt


def read_as(model, prompt: str) -> str | None:
    """The protocol's `read_as`: what `model` reads for `prompt` when it rewrites it, else None."""
    read = model.read_prompt(prompt)
    return None if read == prompt else read


def check_output(model, fps: float | None, size: str | None) -> float:
    """The output fps (frames are dropped evenly below the model's); ApiError for a size or
    fps this model cannot make."""
    if size is not None and size != f"{model.width}x{model.height}":
        raise ApiError("invalid_request", f"this model makes {model.width}x{model.height} video, not {size}", "size")
    if fps is not None and not MIN_FPS <= fps <= model.fps:
        raise ApiError("invalid_request", f"fps must be between {MIN_FPS:g} and the model's {model.fps:g}", "fps")
    return fps or model.fps


def check_seconds(model, seconds: float, limit: float, param: str) -> float:
    """At least one chunk of the model's video (it generates whole chunks; 1e-9 s would be
    one frame of one) and at most `limit`."""
    chunk_s = model.frames_per_chunk / model.fps
    if seconds < chunk_s * (1 - 1e-9):
        raise ApiError("invalid_request", f"{param} must be at least {chunk_s:g} (one chunk of this model's "
                       "video)", param)
    if seconds > limit:
        raise ApiError("invalid_request", f"{param} must be at most {limit:g}", param)
    return seconds
