"""Request id, access log and request metrics, as plain ASGI (no buffering of streamed bodies).

Two ids per request. Ours (`request_id_var`: this process's random prefix and a counter) is what every
log line carries and what vLLM gets as its request id: a client must not choose ids inside vLLM (two
clients sending one id would collide there). The client's `X-Request-Id`, if well formed, is kept for
the logs (`client_request_id`) and echoed in the response; without one, the response carries ours.
"""

from __future__ import annotations

import itertools
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.gateway.logging import client_request_id_var, log, request_id_var
from app.gateway.metrics import Metrics

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_ID_PREFIX = "gw-" + os.urandom(6).hex()
_ids = itertools.count(1)
QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode(errors="replace")
        client_id = incoming if REQUEST_ID_RE.match(incoming) else ""
        request_id = f"{_ID_PREFIX}-{next(_ids)}"
        token = request_id_var.set(request_id)
        client_token = client_request_id_var.set(client_id)
        echoed = (client_id or request_id).encode()
        start = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", echoed)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or scope.get("shed_route") or "other"  # shed: refused before routing
            duration = time.monotonic() - start
            model = (scope.get("state") or {}).get("model", "")
            status_label = str(status or 499)  # 499: the client went away before we answered
            self.metrics.requests.labels(path, status_label, model).inc()
            self.metrics.latency.labels(path).observe(duration)
            # A shed request (admission.py) is counted, not logged: under overload a line each costs the loop
            # most behind; the onset and the end of shedding are logged instead.
            if (path not in QUIET_ROUTES or status >= 400) and not scope.get("shed_route"):
                log.info(
                    "request",
                    extra={"method": scope["method"], "path": scope["path"], "route": path,
                           "status": status or 499, "duration_ms": round(duration * 1000, 1), "model": model},
                )
            request_id_var.reset(token)
            client_request_id_var.reset(client_token)
