"""A request-body size limit, decided before the body is read: one large request cannot hurt the server.

A body whose `Content-Length` is over the limit is refused before a byte of it is read; a chunked
body (no length declared) is counted as it arrives and refused as soon as it passes the limit. The
app learns it from `receive()`, which raises `BodyTooLarge` (an `HTTPException` with status 413)
the first time the app asks for a body over the limit, so the app's exception handler answers in
the app's own error format. Any answer to such a request carries `Connection: close`: the server
(uvicorn) then closes the connection instead of reading and discarding the rest of the upload.

Why not FastAPI's `max_body_size` (FastAPI 0.165, from Starlette 1.10's `RequestBodyLimitMiddleware`):
for a declared length over the limit it replaces the app's answer with a plain-text "Content Too
Large" (no JSON error naming the limit), and it keeps the connection open, so uvicorn goes on reading
an upload it has already refused (a 100 MB body: the whole 100 MB).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """The request body is over `limit` bytes (HTTP 413); `declared` is its Content-Length, if it had one."""

    def __init__(self, limit: int, declared: int | None = None):
        size = f"is {declared} bytes" if declared is not None else "went past it while being read"
        super().__init__(413, f"request body {size}; the limit is {limit} bytes (setting max_body_bytes)")
        self.limit = limit
        self.declared = declared


class BodySizeLimit:
    """ASGI middleware: `receive()` raises BodyTooLarge rather than hand the app more than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        over = declared is not None and declared > self.max_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal over, received
            if declared is not None and declared > self.max_bytes:
                raise BodyTooLarge(self.max_bytes, declared)  # before reading any of it
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # a chunked body: stop at the first chunk past the limit
                    over = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def send_closing(message: Message) -> None:
            if over and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited_receive, send_closing)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:  # the HTTP server refuses a malformed length before the app runs
        return None
