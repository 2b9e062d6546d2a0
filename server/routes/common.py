"""What every router shares: the app state and the documented error responses."""

from __future__ import annotations

from fastapi import Request
from fastapi.routing import APIRoute

from clients.protocol import ErrorBody

from ..errors import ApiError
from ..state import ServerState


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def error_responses(*statuses: int) -> dict[int | str, dict]:
    return {status: {"model": ErrorBody} for status in statuses}


def _query_names(dependant) -> set[str]:
    """Query parameters a route declares, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def strict_query(request: Request) -> None:
    """Refuse unknown and repeated query parameters: every parameter here is a single value,
    and silently ignoring a misspelt one or taking the last of several hides a client bug."""
    route = request.scope.get("route")
    known = _query_names(route.dependant) if isinstance(route, APIRoute) else set()
    for name in set(request.query_params.keys()):
        if name not in known:
            raise ApiError("invalid_request", f"unknown query parameter {name[:64]!r}", name[:64])
        if len(request.query_params.getlist(name)) > 1:
            raise ApiError("invalid_request", f"query parameter {name!r} is given more than once", name)
