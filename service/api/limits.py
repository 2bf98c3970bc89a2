"""A request body limit enforced while the body streams in, not only from Content-Length.

A chunked upload has no Content-Length, and a client may lie in it; counting the bytes as they arrive is
the only limit that holds. Whatever was stored before the limit tripped stays stored (the spool writes are
atomic per instance), so a 413 never loses an instance that was already accepted.
"""

from __future__ import annotations

import json

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLargeError(HTTPException):
    """Raised from inside receive(), so FastAPI's body parsing passes it on as the 413 it is."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"request body exceeds the limit of {limit // (1024 * 1024)} MiB (LUMBAR_AI_MAX_UPLOAD_MB)",
        )


class BodySizeLimit:
    """ASGI middleware: 413 when Content-Length or the bytes received exceed ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_413(send, BodyTooLargeError(self.max_bytes))
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError as exc:
            if started:
                raise
            await _send_413(send, exc)


async def _send_413(send: Send, exc: BodyTooLargeError) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
