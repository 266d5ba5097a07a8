"""Responses while the gateway shuts down: connections closed by answers, and the end of the grace in
OpenAI's shape.

From the drain's start, every response carries `Connection: close`: the edge's kept-alive connection ends
with an answer (a clean end it sees) rather than when the listener stops (where the edge's next request on
it could meet the close, and a POST that may have been read is not sent again elsewhere).

When GATEWAY_SHUTDOWN_GRACE_SECONDS runs out, uvicorn cancels every request still running; a request whose
response had not started would get uvicorn's plain-text `500 Internal Server Error`. This ASGI wrapper
answers it instead with a 503 in OpenAI's error shape, `Retry-After` and `Connection: close`: a client (or
its SDK's retry) knows to try again, on another gateway. A streamed response that already started ends as
the stream code ends it; nothing more can be said on it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.gateway.errors import error_body

RETRY_AFTER_SECONDS = 1  # another gateway is ready now; the edge does not retry a request a gateway read
SHUTDOWN_BODY = json.dumps(error_body(
    503, "The gateway shut down before this request finished; send it again", code="gateway_shutting_down",
)).encode()


class ShutdownResponses:
    """Wraps the app: `Connection: close` once `draining()`; a request cancelled before its response started
    gets the shutdown 503."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.draining():
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            # uvicorn cancels requests only when the grace ends (a client going away is a receive event).
            if started:
                raise
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(SHUTDOWN_BODY)).encode()),
                (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                (b"connection", b"close"),
            ]})
            await send({"type": "http.response.body", "body": SHUTDOWN_BODY, "more_body": False})
