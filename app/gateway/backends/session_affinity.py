"""The `session` policy (the gateway's routing before prefix-aware routing): a session sticks to its
rendezvous backend while it is healthy, so vLLM's prefix cache holds its history, with no load bound; a
request without a session goes to the backend with the fewest requests in flight (ties at random)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from app.gateway.backends.pool import Backend
from app.gateway.backends.routing import Decision, Route, rendezvous_score


class SessionAffinityPolicy:
    name = "session"

    def choose(self, candidates: Sequence[Backend], route: Route) -> Decision:
        if route.session_id:
            sid = route.session_id
            return Decision(max(candidates, key=lambda b: rendezvous_score(sid, b.address)))
        return Decision(min(candidates, key=lambda b: (b.outstanding, random.random())))

    def routed(self, backend: Backend, route: Route) -> None:
        pass

    def forget(self, address: str) -> None:
        pass
