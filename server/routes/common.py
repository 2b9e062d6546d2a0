"""What every router shares: the app state and the documented error responses."""

from __future__ import annotations

from fastapi import Request

from clients.protocol import ErrorBody

from ..state import ServerState


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def error_responses(*statuses: int) -> dict[int | str, dict]:
    return {status: {"model": ErrorBody} for status in statuses}
