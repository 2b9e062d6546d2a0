"""What every router shares: the app state and the documented error responses."""

from __future__ import annotations

from fastapi import Request

from clients.protocol import ErrorBody

from ..errors import ApiError
from ..state import ServerState


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def error_responses(*statuses: int) -> dict[int | str, dict]:
    return {status: {"model": ErrorBody} for status in statuses}


def single_query_values(request: Request) -> None:
    """Refuse a repeated query parameter: every parameter here is a single value, and
    silently taking the last of several hides a client bug."""
    for name in set(request.query_params.keys()):
        if len(request.query_params.getlist(name)) > 1:
            raise ApiError("invalid_request", f"query parameter {name!r} is given more than once", name)
