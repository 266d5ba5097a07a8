"""Admission control before the work: a bound on in-flight generation requests, and the event loop's lag.

A gateway process past what it can carry slows everything down (every stream's chunks, every probe, every
Redis call) unless it refuses what it cannot carry. So, before a generation request is parsed or admitted by
the rate limiter, `AdmissionMiddleware` checks two signals and answers a fast 503 `overloaded` (OpenAI's error
shape, `Retry-After`) when either is past its bound; streams already admitted continue untouched:

- in flight: generation requests this process is serving (a stream counts until its last byte), against
  `GatewaySettings.in_flight_limit` (set, or derived from the pod's CPU request);
- loop lag: how late the event loop runs a timer (`LoopLagMonitor`), against `overload_loop_lag_seconds`.
  Lag lowers the bound rather than refusing everything: each tick the loop runs late, the bound drops to 90 %
  of what is in flight (never below a floor, a tenth of the bound); each tick on time it grows back by 1 % of
  the bound. Refusing everything while late was measured to livelock (`make bench`, 2x overload on a busy
  core): the refusals' own cost kept the loop late, so nothing was admitted at all.

The lag is also what keeps overload from turning into a verdict about a backend (backends/pool.py): a timeout
seen while our own loop lags says nothing about the backend.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.gateway.errors import error_body
from app.gateway.logging import log
from app.gateway.metrics import Metrics

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
LAG_INTERVAL_SECONDS = 0.05  # how often the monitor's timer is due: the resolution of the lag signal
LAG_WINDOW_SECONDS = 1.0  # the lag reported is the worst seen this recently (a stall is not forgotten at once)


class LoopLagMonitor:
    """How late this event loop runs a timer due every LAG_INTERVAL_SECONDS.

    `lag()` is the worst lateness within the last LAG_WINDOW_SECONDS, or, if the monitor's own timer is
    overdue right now (the loop is blocked, or is only now running what piled up), how overdue it is: a stall
    counts from its first moment, even before the monitor gets to run again.
    """

    def __init__(self, metrics: Metrics, *, interval: float = LAG_INTERVAL_SECONDS,
                 window: float = LAG_WINDOW_SECONDS):
        self._metrics, self._interval, self._window = metrics, interval, window
        self._due: float | None = None  # when the monitor's timer is due; None until it runs
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag)
        self.last_late = 0.0  # how late the latest tick ran
        self.on_tick: list[Callable[[float], None]] = []  # called with each tick's lateness

    def lag(self) -> float:
        now = time.monotonic()
        overdue = max(0.0, now - self._due) if self._due is not None else 0.0
        horizon = now - self._window
        worst = max((lag for when, lag in self._recent if when >= horizon), default=0.0)
        return max(worst, overdue)

    async def run(self) -> None:
        while True:
            self._due = time.monotonic() + self._interval
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            late = max(0.0, now - (self._due or now))
            recent = self._recent
            recent.append((now, late))
            while recent and recent[0][0] < now - self._window:
                recent.popleft()
            self.last_late = late
            self._metrics.loop_lag.set(self.lag())
            for callback in self.on_tick:
                callback(late)


class Admission:
    """The two bounds and the count they apply to; what /readyz and the middleware ask."""

    def __init__(self, metrics: Metrics, monitor: LoopLagMonitor, *, max_in_flight: int, max_lag_seconds: float,
                 retry_after_seconds: int):
        self.metrics, self.monitor = metrics, monitor
        self.max_in_flight, self.max_lag = max_in_flight, max_lag_seconds
        self.retry_after = str(retry_after_seconds)
        self.in_flight = 0
        self.limit = max_in_flight  # the bound now: lowered while the loop lags, back up once it does not
        self.floor = max(1, max_in_flight // 10)
        self._shedding_since: float | None = None
        metrics.in_flight_limit.set(max_in_flight)
        monitor.on_tick.append(self._adapt)

    def _adapt(self, late: float) -> None:
        if late > self.max_lag:
            self.limit = max(self.floor, min(self.limit, int(self.in_flight * 0.9)))
        elif self.limit < self.max_in_flight:
            self.limit = min(self.max_in_flight, self.limit + max(1, self.max_in_flight // 100))
        self.metrics.in_flight_limit.set(self.limit)

    def overload(self) -> str | None:
        """Why a new generation request would be refused now ("in_flight", "loop_lag"), or None."""
        if self.in_flight >= self.limit:
            return "in_flight" if self.limit >= self.max_in_flight else "loop_lag"
        if self.in_flight >= self.floor and self.monitor.lag() > self.max_lag:
            return "loop_lag"  # late right now (a stall the monitor has not measured yet): no more than the floor
        return None

    def lagging(self) -> bool:
        """Our own loop is late enough that a timeout we saw may be ours, not the peer's."""
        return self.monitor.lag() > self.max_lag

    def lagging_with_work(self) -> bool:
        """Late, with at least the floor in flight: our own work is what makes us late. (Late with almost
        nothing in flight is starvation by the neighbours; refusing then would only turn answers into 503s.)"""
        return self.in_flight >= self.floor and self.lagging()

    def state(self) -> dict[str, object]:
        return {"overloaded": self.overload() is not None, "reason": self.overload(), "in_flight": self.in_flight,
                "limit": self.limit, "max_in_flight": self.max_in_flight,
                "loop_lag_ms": round(self.monitor.lag() * 1000, 1),
                "max_loop_lag_ms": round(self.max_lag * 1000, 1)}

    def shed(self, reason: str) -> None:
        self.metrics.overload_rejected.labels(reason).inc()
        if self._shedding_since is None:
            self._shedding_since = time.monotonic()
            log.warning("overloaded: refusing new generation requests", extra={"reason": reason, **self.state()})

    def admitted(self) -> None:
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        if self._shedding_since is not None:
            log.info("overload over: admitting again",
                     extra={"shed_for_s": round(time.monotonic() - self._shedding_since, 3)})
            self._shedding_since = None

    def finished(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)


def overloaded_response(reason: str, retry_after: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    what = ("the gateway is serving as many requests as it can carry" if reason == "in_flight"
            else "the gateway is running late (event loop lag)")
    body = json.dumps(error_body(503, f"Overloaded: {what}; retry after {retry_after} s, or on another replica",
                                 code="overloaded")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", retry_after.encode())]
    return body, headers


class AdmissionMiddleware:
    """Plain ASGI, inside the request-context middleware (so a refusal has a request id, is logged and counted
    with its route) and before routing, parsing and the rate limiter (so a refusal costs almost nothing)."""

    def __init__(self, app: ASGIApp, admission: Admission | None = None):
        self.app = app
        self.admission = admission  # set by the lifespan (it needs the running loop's monitor)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = self.admission
        if admission is None or scope["type"] != "http" or scope["path"] not in GENERATION_PATHS \
                or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        reason = admission.overload()
        if reason is not None:
            admission.shed(reason)
            scope["shed_route"] = scope["path"]
            body, headers = overloaded_response(reason, admission.retry_after)
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        admission.admitted()
        try:
            await self.app(scope, receive, send)
        finally:
            admission.finished()
