"""The `round_robin` policy: each backend in turn, blind to sessions, prefixes and load (the benchmark's
baseline; what a plain Kubernetes Service does)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from app.gateway.backends.pool import Backend
from app.gateway.backends.routing import Decision, Route


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Backend], route: Route) -> Decision:
        ordered = sorted(candidates, key=lambda b: b.address)
        return Decision(ordered[next(self._turn) % len(ordered)])

    def routed(self, backend: Backend, route: Route) -> None:
        pass

    def forget(self, address: str) -> None:
        pass
