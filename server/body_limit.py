"""The request body limit, as ASGI middleware: a body over `limit` bytes is refused with
413 before it is read, and a body nobody read is not read at all.

* The limit is enforced where the app reads: on its first read when Content-Length already
  says too much, else (chunked) as soon as the bytes received pass it, so at most `limit`
  bytes of a body are ever held. The app reads a body only after the API key is checked
  (routes/videos.py), so an unauthenticated request is answered 401 without being read,
  whatever its size. Multipart uploads are bodies like any other.
* A response sent while the request body is still unread says `Connection: close`: uvicorn
  would otherwise read the rest of the upload (and throw it away) to keep the connection.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__("request_too_large", f"the request body is larger than this server's limit of "
                         f"{limit} bytes (max_body_bytes)")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").strip()
        # (uvicorn has refused a malformed Content-Length before this runs)
        declared_bytes = int(declared) if declared.isdigit() else None
        unread = bool(declared_bytes) or b"transfer-encoding" in headers
        received = 0

        async def counted() -> Message:
            nonlocal received, unread
            if declared_bytes is not None and declared_bytes > self.limit:
                raise BodyTooLarge(self.limit)  # answered by the app's ApiError handler, before any byte is read
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
                unread = message.get("more_body", False)
            return message

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counted, closing)
