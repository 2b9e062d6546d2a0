"""One error type for everything the server refuses, mapped once to an HTTP status and a
WebSocket close code, and the handlers that give every HTTP error the same JSON shape:
``{"error": {"code", "message", "param"}}`` (clients.protocol.ErrorBody)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from clients.protocol import CloseCode, ErrorBody, ErrorDetail

log = logging.getLogger("framecast.server")

# code -> (HTTP status, WebSocket close code); anything unlisted is a 400 / 4400.
ERROR_CODES: dict[str, tuple[int, int]] = {
    "unauthorized": (401, CloseCode.UNAUTHORIZED),
    "not_found": (404, CloseCode.NOT_FOUND),
    "unknown_model": (400, CloseCode.NOT_FOUND),
    "conflict": (409, CloseCode.BAD_REQUEST),
    "rate_limited": (429, CloseCode.TRY_AGAIN_LATER),
    "queue_full": (429, CloseCode.TRY_AGAIN_LATER),
    "server_full": (503, CloseCode.TRY_AGAIN_LATER),
    "model_loading": (503, CloseCode.TRY_AGAIN_LATER),
    "shutting_down": (503, CloseCode.GOING_AWAY),
    "binary_not_allowed": (400, CloseCode.UNSUPPORTED_DATA),
    "message_too_large": (413, CloseCode.TOO_BIG),
    "request_too_large": (413, CloseCode.TOO_BIG),
    "unsupported_media_type": (415, CloseCode.BAD_REQUEST),
    "method_not_allowed": (405, CloseCode.BAD_REQUEST),
    "start_timeout": (408, CloseCode.START_TIMEOUT),
    "stalled": (408, CloseCode.STALLED),
    "internal_error": (500, CloseCode.INTERNAL),
}
STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "unauthorized", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "request_too_large", 415: "unsupported_media_type",
                429: "rate_limited", 503: "server_full"}
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class ApiError(Exception):
    """A refusal with a stable `code` (clients.protocol.ErrorCode) and a readable message."""

    def __init__(self, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param
        self.headers = headers or {}  # HTTP only, e.g. Retry-After

    @property
    def status(self) -> int:
        return ERROR_CODES.get(self.code, (400, CloseCode.BAD_REQUEST))[0]

    @property
    def close_code(self) -> int:
        return ERROR_CODES.get(self.code, (400, CloseCode.BAD_REQUEST))[1]

    def detail(self) -> ErrorDetail:
        return ErrorDetail(code=self.code, message=self.message, param=self.param)


def from_validation_error(exc: ValidationError | RequestValidationError, default_code: str,
                          tag: str | None = None) -> ApiError:
    """The first problem of a pydantic/FastAPI validation error as an ApiError naming its field
    (`tag`: a discriminated union's tag, which pydantic puts in front of the field name)."""
    errors = exc.errors()
    if not errors:
        return ApiError(default_code, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return ApiError("invalid_json", f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    # FastAPI prefixes the location with where it came from (body, query, path).
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header", tag)]
    param = ".".join(loc) or None
    code = default_code
    if param == "prompt":
        code = "invalid_prompt"
    elif param == "seed":
        code = "invalid_seed"
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = "field required"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field"
    return ApiError(code, f"{param}: {message}" if param else message, param)


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = {**error.headers, **(headers or {})}
    if error.code == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    body = ErrorBody(error=error.detail()).model_dump(mode="json")
    return JSONResponse(body, status_code=error.status, headers=headers)


def api_methods(request: Request) -> list[str]:
    """Every method an API route serves at this path, found by asking each route whether it
    would take the request under that method (FastAPI wraps included routers, so reading
    `.methods` off `app.routes` finds nothing)."""
    routes = [route for route in request.app.routes if not isinstance(route, Mount)]
    return [method for method in HTTP_METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]


def allowed_methods(request: Request) -> list[str]:
    """api_methods; the static mount at `/` takes any path and method, so it counts only
    where no API route has the path (then its own GET, HEAD)."""
    return api_methods(request) or ["GET", "HEAD"]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # 400 as OpenAI's APIs answer, in the one error shape (not FastAPI's 422 list).
        return error_response(from_validation_error(exc, "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404 and request.method not in api_methods(request) and api_methods(request):
            # The static mount found no file at a path the API serves under other methods
            # (GET /v1/realtime/webrtc falls through to it): the method is what is wrong.
            status = 405
        code = STATUS_CODES.get(status, "invalid_request" if status < 500 else "internal_error")
        message = exc.detail if isinstance(exc.detail, str) and status == exc.status_code else "request failed"
        headers = dict(getattr(exc, "headers", None) or {})
        if status == 405:
            allowed = ", ".join(allowed_methods(request))
            headers["Allow"] = allowed
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        body = ErrorBody(error=ApiError(code, message).detail()).model_dump(mode="json")
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError("internal_error", "internal server error"))
