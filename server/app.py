"""The app factory. Nothing heavy happens at import: the lifespan opens the job store and
starts loading the model in a thread; `/healthz` answers at once, `/readyz` once the model
is loaded and warmed up.

    uvicorn --factory server.app:create_app      # settings from FRAMECAST_* variables
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from clients.protocol import PROTOCOL_VERSION

from .body_limit import BodyLimitMiddleware
from .errors import install_error_handlers
from .logs import install_redaction
from .routes import health, models, stream, videos
from .websocket import FINISH_WAIT_S
from .settings import Settings
from .state import ServerState

log = logging.getLogger("framecast.server")

WEB_DIR = Path(__file__).resolve().parent.parent / "clients" / "web"
PLACEHOLDER_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Framecast</title></head>
<body><h1>Framecast</h1><p>The web viewer is not installed. Stream from
<code>/v1/realtime/video</code> or see <a href="/docs">the API docs</a>.</p></body></html>"""


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: ServerState = app.state.server
    await asyncio.to_thread(state.open_jobs)
    # Loading runs beside serving, so /healthz and /readyz answer while a large model loads.
    loading = asyncio.create_task(state.load(), name="framecast-load")
    try:
        yield
    finally:
        state.shutting_down = True
        if not loading.done():
            # A thread cannot be interrupted; the load finishes before shutting down cleanly.
            await asyncio.shield(loading)
        await asyncio.to_thread(state.shutdown)


def _openapi_without_422(app: FastAPI):
    """Validation errors answer 400 in the ErrorBody shape (errors.py); drop FastAPI's
    generated 422 entries so the document says what the server does."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def create_app(settings: Settings | None = None, model: Any = None) -> FastAPI:
    """`model`: an already loaded engine model (the CLI loads it first to fail fast on a bad
    path); None loads `settings.model` in the lifespan."""
    settings = settings or Settings()
    logging.getLogger("framecast").setLevel(settings.log_level.upper())
    install_redaction(settings.api_keys)
    app = FastAPI(title="Framecast", version=f"protocol {PROTOCOL_VERSION}", lifespan=lifespan,
                  description="Real-time streaming video generation: live streams over WebSocket "
                              "(/v1/realtime/video), clips as jobs shaped like OpenAI's Videos API.")
    app.state.server = ServerState(settings, model)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    install_error_handlers(app)
    for router in (health.router, models.router, videos.router, stream.router):
        app.include_router(router)
    app.openapi = _openapi_without_422(app)  # type: ignore[method-assign]
    if (WEB_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    else:
        @app.get("/", include_in_schema=False)
        async def placeholder() -> HTMLResponse:
            return HTMLResponse(PLACEHOLDER_PAGE)
    return app


def bind_socket(settings: Settings) -> socket.socket:
    """The listening socket (OSError when the address is taken). Connections accepted on it
    inherit its send buffer size (Linux copies SO_SNDBUF from the listener) and its TCP user
    timeout."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if settings.socket_send_buffer_bytes:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_send_buffer_bytes)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
            # A stalled stream is ended by the server (websocket.py, stall_timeout_s), but its
            # socket would stay open with full buffers for as long as the client never
            # reads: the kernel drops a connection whose sent data goes unacknowledged this
            # long (zero-window probes included). Its clock starts when the client's window
            # closes, the server's once the server-side buffers are full too (seconds later
            # on a low-bitrate stream): twice the stall timeout lets the server, which says
            # why (4408), usually go first.
            grace_s = 2 * settings.stall_timeout_s + 2 * FINISH_WAIT_S
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(1000 * grace_s))
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any):
    """The uvicorn settings this app is served with (CLI, tests and benchmarks alike)."""
    import uvicorn

    options: dict[str, Any] = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                                   ws_max_size=settings.ws_max_frame_bytes, lifespan="on",
                                   # Running jobs get shutdown_grace_s in the lifespan; connections
                                   # are closed before that, so uvicorn itself need not wait long.
                                   timeout_graceful_shutdown=5)
    if settings.forwarded_allow_ips is not None:
        options["forwarded_allow_ips"] = settings.forwarded_allow_ips
    options.update(overrides)
    return uvicorn.Config(app, **options)
