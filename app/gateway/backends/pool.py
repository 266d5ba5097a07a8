"""The set of vLLM backends and what the gateway knows about each (health, load, models)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.gateway.logging import log
from app.gateway.metrics import Metrics

# Failures that are a clock running out: with our own loop late, the clock may be what was slow.
TIMEOUT_KINDS = frozenset({"connect_timeout", "timeout"})


@dataclass(eq=False)
class Backend:
    address: str  # host:port
    healthy: bool = False
    outstanding: int = 0
    queued_prefill_tokens: int = 0  # estimated prompt tokens sent to it whose prefill is not over (routing)
    consecutive_failures: int = 0
    models: list[dict[str, Any]] = field(default_factory=list)
    last_probe: float = 0.0

    @property
    def base_url(self) -> str:
        host, _, port = self.address.rpartition(":")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # a bare IPv6 address from DNS
        return f"http://{host}:{port}"


class BackendPool:
    """Backends by address. Health comes from active probes (health.py) and passive ejection (here).

    Overload never changes a verdict: while our own event loop lags (`lagging()`), a timeout (a probe's, a
    connect's, a first token's) says as much about us as about the backend, so it is counted
    (gateway_backend_verdicts_withheld_total) and held against nobody. A refused connection or a 5xx is an
    answer from the backend and still counts. Ejection on timeouts alone then rests on the probe: a probe
    that fails while we do not lag is the evidence.
    """

    def __init__(self, metrics: Metrics, *, eject_after_failures: int,
                 lagging: Callable[[], bool] = lambda: False):
        self._metrics = metrics
        self._eject_after = eject_after_failures
        self._lagging = lagging
        self._backends: dict[str, Backend] = {}

    def all(self) -> list[Backend]:
        return list(self._backends.values())

    def healthy(self) -> list[Backend]:
        return [b for b in self._backends.values() if b.healthy]

    def set_addresses(self, addresses: list[str]) -> None:
        """Replace the set (DNS re-resolution); known backends keep their state, in-flight requests finish."""
        wanted = set(addresses)
        for gone in set(self._backends) - wanted:
            log.info("backend removed", extra={"backend": gone})
            del self._backends[gone]
            self._metrics.backend_healthy.remove(gone)
            self._metrics.backend_outstanding.remove(gone)
            self._metrics.backend_queued_prefill.remove(gone)
        for new in addresses:
            if new not in self._backends:
                log.info("backend added", extra={"backend": new})
                self._backends[new] = Backend(new)
                self._metrics.backend_healthy.labels(new).set(0)
                self._metrics.backend_outstanding.labels(new).set(0)
                self._metrics.backend_queued_prefill.labels(new).set(0)

    def models(self) -> list[dict[str, Any]]:
        """The models served by healthy backends, deduplicated by id."""
        seen: dict[str, dict[str, Any]] = {}
        for b in self.healthy():
            for m in b.models:
                seen.setdefault(str(m.get("id")), m)
        return list(seen.values())

    def mark_probe(self, backend: Backend, ok: bool, models: list[dict[str, Any]] | None = None,
                   *, timed_out: bool = False) -> None:
        backend.last_probe = time.monotonic()
        if not ok and timed_out and self._lagging():
            self._metrics.verdicts_withheld.labels("probe_timeout").inc()
            log.warning("probe timed out while our event loop lags: no verdict", extra={"backend": backend.address})
            return
        if ok:
            if not backend.healthy:
                log.info("backend healthy", extra={"backend": backend.address})
            backend.healthy, backend.consecutive_failures = True, 0
            backend.models = models or backend.models
        elif backend.healthy:
            log.warning("backend failed its health probe", extra={"backend": backend.address})
            backend.healthy = False
        self._sync(backend)

    def record_success(self, backend: Backend) -> None:
        backend.consecutive_failures = 0

    def record_failure(self, backend: Backend, kind: str) -> None:
        """Passive ejection: a refused connection ejects at once; 5xx/timeouts after N in a row."""
        self._metrics.upstream_errors.labels(backend.address, kind).inc()
        if kind in TIMEOUT_KINDS and self._lagging():
            self._metrics.verdicts_withheld.labels(kind).inc()
            return
        backend.consecutive_failures += 1
        if backend.healthy and (kind in ("connect", "connect_timeout")
                                or backend.consecutive_failures >= self._eject_after):
            log.warning("backend ejected", extra={"backend": backend.address, "reason": kind})
            backend.healthy = False
        self._sync(backend)

    def acquire(self, backend: Backend) -> None:
        backend.outstanding += 1
        self._metrics.backend_outstanding.labels(backend.address).set(backend.outstanding)

    def release(self, backend: Backend) -> None:
        backend.outstanding -= 1
        if backend.address in self._backends:
            self._metrics.backend_outstanding.labels(backend.address).set(backend.outstanding)

    def queue_prefill(self, backend: Backend, tokens: int) -> None:
        """Add (or, negative, remove) prompt tokens waiting for their prefill on `backend` (routing's load)."""
        backend.queued_prefill_tokens += tokens
        if backend.address in self._backends:
            self._metrics.backend_queued_prefill.labels(backend.address).set(backend.queued_prefill_tokens)

    def _sync(self, backend: Backend) -> None:
        if backend.address in self._backends:
            self._metrics.backend_healthy.labels(backend.address).set(1 if backend.healthy else 0)
