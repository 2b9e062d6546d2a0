"""The async client: live streams over WebSocket and clip jobs over HTTP.

    async with FramecastClient("http://127.0.0.1:8000") as client:
        async with client.stream("a red ball rolling", format="fmp4") as stream:
            async for frame in stream.frames():   # frame.image: [H, W, 3] uint8
                ...
        job = await client.generate_video("a red ball", "clip.mp4", seconds=2)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import AsyncIterator, Callable

import httpx
import pydantic
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from clients.framecast_client.config import Endpoint, resolve_endpoint
from clients.framecast_client.errors import (ConnectionLost, FramecastError, JobFailed, ProtocolError, ServerFull,
                                             ServerUnavailable, Unauthorized, error_for_code)
from clients.framecast_client.stream import Stream, _closed_error
from clients.protocol import (Error, ErrorBody, ModelList, SessionStart, SessionStarted, VideoCreate,
                              VideoDeleted, VideoJob, VideoList, parse_server_message)

MAX_MEDIA_MESSAGE_BYTES = 64 * 1024 * 1024
TERMINAL_JOB_STATES = ("completed", "failed", "cancelled")


class FramecastClient:
    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 30.0, connect_timeout: float = 10.0):
        """`url`/`api_key` default to $FRAMECAST_URL / $FRAMECAST_API_KEY."""
        self.endpoint: Endpoint = resolve_endpoint(url, api_key)
        self.connect_timeout = connect_timeout
        self._http = httpx.AsyncClient(base_url=self.endpoint.http_url, headers=self.endpoint.headers(),
                                       timeout=httpx.Timeout(timeout, connect=connect_timeout))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "FramecastClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- streaming ----------------------------------------------------------------

    async def open_stream(self, prompt: str, *, seed: int | None = None, model: str | None = None,
                          format: str = "fmp4", fps: float | None = None, max_seconds: float | None = None,
                          max_buffered: int = 32) -> Stream:
        """Connect, send session.start, and return once session.started has arrived.
        format "webrtc" (needs the `webrtc` extra, aiortc): the frames come off a WebRTC
        video track, decoded (`frames()`), and the control messages over its data channel."""
        start = SessionStart(prompt=prompt, seed=seed, model=model, format=format, fps=fps,
                             max_seconds=max_seconds)
        if format == "webrtc":
            try:
                from clients.framecast_client.webrtc import open_webrtc_stream
            except ImportError as exc:
                raise FramecastError(f"format webrtc needs aiortc: pip install 'framecast[webrtc]' ({exc})") from None
            return await open_webrtc_stream(self._http, start, self.connect_timeout, max_buffered=max_buffered)
        url = self.endpoint.realtime_url
        try:
            ws = await connect(url, additional_headers=self.endpoint.headers(), compression=None,
                               open_timeout=self.connect_timeout, max_size=MAX_MEDIA_MESSAGE_BYTES)
        except InvalidStatus as exc:
            raise _handshake_error(exc, url) from None
        except (OSError, asyncio.TimeoutError, InvalidURI) as exc:
            raise ServerUnavailable(f"cannot reach {url}: {_describe_os_error(_root_os_error(exc) or exc)}") from None
        except InvalidHandshake as exc:
            raise ProtocolError(f"{url} did not accept a WebSocket: {exc}") from None
        try:
            sent_at = time.monotonic()
            try:
                await ws.send(start.model_dump_json(exclude_none=True))
            except ConnectionClosed:
                pass  # refused at once (bad key, full): the reason is in what it sent before closing
            started = await _receive_started(ws, self.connect_timeout)
        except BaseException:
            await ws.close()
            raise
        return Stream(ws, start, started, sent_at, max_buffered=max_buffered)

    @contextlib.asynccontextmanager
    async def stream(self, prompt: str, **options) -> AsyncIterator[Stream]:
        """`async with client.stream(prompt) as s:` — closes the socket on exit."""
        stream = await self.open_stream(prompt, **options)
        try:
            yield stream
        finally:
            await stream.close()

    # -- clip jobs ----------------------------------------------------------------

    async def create_video(self, prompt: str, *, seconds: float = 4.0, seed: int | None = None,
                           size: str | None = None, fps: float | None = None,
                           model: str | None = None) -> VideoJob:
        body = VideoCreate(prompt=prompt, seconds=seconds, seed=seed, size=size, fps=fps, model=model)
        response = await self._call("POST", "/v1/videos", json=body.model_dump(exclude_none=True))
        return _parse(VideoJob, response)

    async def get_video(self, video_id: str) -> VideoJob:
        return _parse(VideoJob, await self._call("GET", f"/v1/videos/{video_id}"))

    async def list_videos(self) -> VideoList:
        return _parse(VideoList, await self._call("GET", "/v1/videos"))

    async def delete_video(self, video_id: str) -> VideoDeleted:
        return _parse(VideoDeleted, await self._call("DELETE", f"/v1/videos/{video_id}"))

    async def list_models(self) -> ModelList:
        return _parse(ModelList, await self._call("GET", "/v1/models"))

    async def wait_video(self, video_id: str, *, progress: Callable[[VideoJob], None] | None = None,
                         poll_interval: float = 0.5, timeout: float | None = None) -> VideoJob:
        """Poll until the job is completed (returned) or failed/cancelled (JobFailed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get_video(video_id)
            if progress is not None:
                progress(job)
            if job.status == "completed":
                return job
            if job.status in TERMINAL_JOB_STATES:
                detail = f": {job.error.message}" if job.error else ""
                raise JobFailed(f"video job {job.id} {job.status}{detail}", job,
                                job.error.code if job.error else None)
            if deadline is not None and time.monotonic() > deadline:
                raise JobFailed(f"video job {job.id} still {job.status} after {timeout:g}s", job, "timeout")
            await asyncio.sleep(poll_interval)

    async def download_video(self, video_id: str, path: str | os.PathLike) -> int:
        """Write the job's MP4 to `path` (via a temporary file); returns its size in bytes."""
        tmp = f"{os.fspath(path)}.part"
        size = 0
        try:
            async with self._http.stream("GET", f"/v1/videos/{video_id}/content") as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _http_error(response)
                with open(tmp, "wb") as out:
                    async for block in response.aiter_bytes():
                        out.write(block)
                        size += len(block)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.endpoint.http_url) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        os.replace(tmp, path)
        return size

    async def generate_video(self, prompt: str, path: str | os.PathLike, *,
                             progress: Callable[[VideoJob], None] | None = None,
                             poll_interval: float = 0.5, timeout: float | None = None, **options) -> VideoJob:
        """create_video + wait_video + download_video."""
        job = await self.create_video(prompt, **options)
        if progress is not None:
            progress(job)
        job = await self.wait_video(job.id, progress=progress, poll_interval=poll_interval, timeout=timeout)
        await self.download_video(job.id, path)
        return job

    async def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        return await _call_raw(self._http, method, path, **kwargs)


async def _call_raw(http: httpx.AsyncClient, method: str, path: str, allow: tuple[int, ...] = (),
                    **kwargs) -> httpx.Response:
    """One request; transport failures and error statuses (but `allow`) as the client's exceptions."""
    try:
        response = await http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise _transport_error(exc, str(http.base_url).rstrip("/")) from None
    if response.status_code >= 400 and response.status_code not in allow:
        raise _http_error(response)
    return response


# -- helpers: turn transport failures into the client's exceptions ---------------------

async def _receive_started(ws, timeout: float) -> SessionStarted:
    try:
        message = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise ProtocolError(f"no session.started within {timeout:g}s") from None
    except ConnectionClosed as exc:
        raise _closed_error(exc) from None
    if isinstance(message, bytes):
        raise ProtocolError("binary message before session.started")
    try:
        parsed = parse_server_message(message)
    except pydantic.ValidationError:
        raise ProtocolError(f"unexpected first message: {message[:200]!r}") from None
    if isinstance(parsed, Error):
        raise error_for_code(parsed.error.code, parsed.error.message)
    if not isinstance(parsed, SessionStarted):
        raise ProtocolError(f"expected session.started, got {parsed.type}")
    return parsed


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is `framecast serve` running there?)"
    if isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException)):
        return "timed out connecting"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    return str(exc) or type(exc).__name__


def _error_from_body(status: int, body: bytes, fallback: str) -> FramecastError:
    try:
        detail = ErrorBody.model_validate_json(body).error
        code, message = detail.code, detail.message
    except (pydantic.ValidationError, ValueError):
        code, message = None, (body.decode("utf-8", "replace")[:200] or fallback)
    if status in (401, 403) or code == "unauthorized":
        return Unauthorized(message or "unauthorized: check the API key", code or "unauthorized")
    if code is None and status in (429, 503):
        return ServerFull(message, "server_full")
    if code is None:
        return FramecastError(f"HTTP {status}: {message}")
    return error_for_code(code, message)


def _handshake_error(exc: InvalidStatus, url: str) -> FramecastError:
    response = exc.response
    return _error_from_body(response.status_code, response.body or b"",
                            f"{url} refused the WebSocket with HTTP {response.status_code}")


def _http_error(response: httpx.Response) -> FramecastError:
    return _error_from_body(response.status_code, response.content, f"HTTP {response.status_code}")


def _transport_error(exc: httpx.TransportError, url: str) -> FramecastError:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ServerUnavailable(f"cannot reach {url}: {_describe_os_error(_root_os_error(exc) or exc)}")
    return ConnectionLost(f"HTTP connection to {url} failed: {exc}")


def _root_os_error(exc: BaseException) -> OSError | None:
    """The innermost OSError under httpx/httpcore/anyio wrappers (refused, DNS, ...)."""
    found = None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def _parse(model, response: httpx.Response):
    try:
        return model.model_validate_json(response.content)
    except pydantic.ValidationError as exc:
        raise ProtocolError(f"unexpected {model.__name__} from the server: {exc}") from None
