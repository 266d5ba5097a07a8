"""Request id, access log and request metrics, as plain ASGI (no buffering of streamed bodies)."""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.gateway.logging import log, request_id_var
from app.gateway.metrics import Metrics

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode(errors="replace")
        request_id = incoming if REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        start = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "other")
            duration = time.monotonic() - start
            model = (scope.get("state") or {}).get("model", "")
            status_label = str(status or 499)  # 499: the client went away before we answered
            self.metrics.requests.labels(path, status_label, model).inc()
            self.metrics.latency.labels(path).observe(duration)
            if path not in QUIET_ROUTES or status >= 400:
                log.info(
                    "request",
                    extra={"method": scope["method"], "path": scope["path"], "route": path,
                           "status": status or 499, "duration_ms": round(duration * 1000, 1), "model": model},
                )
            request_id_var.reset(token)
