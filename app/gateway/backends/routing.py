"""Which backend serves a request: the routing interface, the policy factory, and what the policies share.

A policy (`RoutingPolicy`) picks among the pool's backends for a `Route` (what routing knows about a request:
its session id, the chained hashes of its prompt's blocks, its size). The proxy asks `Router.choose` on every
attempt (excluding the backends already tried, so the retries fail over) and tells it when an attempt starts
and when its prefill is over (`Router.started` / `Router.prefilled`), which is the load the policies bound.

The policies, one module each:
- `prefix` (prefix_aware.py): the backend most likely to hold the prompt's prefix, within a load bound;
- `session` (session_affinity.py): a session's rendezvous backend, anything else to the fewest in flight;
- `round_robin` (round_robin.py): a baseline for the routing benchmark.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.gateway.backends.pool import Backend, BackendPool
from app.gateway.backends.prefix_blocks import CHARS_PER_TOKEN, block_hashes, estimate_tokens, prompt_text
from app.gateway.metrics import Metrics
from app.gateway.settings import RoutingTuning

DEFAULT_CACHE_TOKENS = 100_000  # the gateway on its own, without the stack's capacity model


def rendezvous_score(key: str, address: str) -> int:
    """Highest random weight: every gateway replica ranks the backends for `key` alike, with no shared state,
    and when a backend leaves only its own keys move."""
    digest = hashlib.blake2b(f"{key}|{address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class Route:
    """What routing knows about a request. `blocks` are the chained hashes of the prompt's full blocks;
    `key` orders ties and spill-over: the session id, else the first block (or the whole short prompt)."""

    session_id: str | None = None
    blocks: tuple[int, ...] = ()
    key: str = ""
    prompt_tokens: int = 0


NO_ROUTE = Route()


def live_candidates(backends: Sequence[Backend], exclude: Collection[Backend]) -> list[Backend]:
    candidates = [b for b in backends if b.healthy and b not in exclude]
    if not candidates:
        # Nobody looks healthy (e.g. probes not run yet): still try what we have rather than fail blind.
        candidates = [b for b in backends if b not in exclude]
    return candidates


@dataclass
class Decision:
    backend: Backend
    cached_tokens: int = 0  # the policy's estimate of the prompt's tokens the backend holds
    spilled: bool = False  # the best backend for the cache was over the load bound


class RoutingPolicy(Protocol):
    name: str

    def choose(self, candidates: Sequence[Backend], route: Route) -> Decision:
        """One of `candidates` (non-empty, healthy and not yet tried) for `route`."""

    def routed(self, backend: Backend, route: Route) -> None:
        """`route` was sent to `backend` (the policy may remember what that backend now caches)."""

    def forget(self, address: str) -> None:
        """The backend left the pool."""


class Router:
    """The proxy's view of routing: the pool, a policy, the load the policy is given (queued prefill per
    backend), and the decisions' metrics."""

    def __init__(self, pool: BackendPool, policy: RoutingPolicy, metrics: Metrics, *, block_tokens: int):
        self.pool, self.policy, self._metrics = pool, policy, metrics
        self.block_chars = block_tokens * CHARS_PER_TOKEN
        self._known: set[str] = set()

    def route(self, body: dict[str, Any], session_id: str | None = None) -> Route:
        """What routing needs of a request body (chat or completions), hashed once per request."""
        text = prompt_text(body)
        blocks = tuple(block_hashes(text, self.block_chars))
        if session_id:
            key = session_id
        elif blocks:
            key = f"{blocks[0]:016x}"
        else:  # shorter than a block: the whole prompt
            key = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).hexdigest()
        return Route(session_id=session_id, blocks=blocks, key=key, prompt_tokens=estimate_tokens(text))

    def choose(
        self, route: Route, *, exclude: Collection[Backend] = (), among: Sequence[Backend] | None = None
    ) -> Decision | None:
        """A backend of the pool (or of `among`) not in `exclude`, or None when there is none."""
        started = time.perf_counter()
        everyone = self.pool.all()
        addresses = {b.address for b in everyone}
        for gone in self._known - addresses:
            self.policy.forget(gone)
        self._known = addresses
        candidates = live_candidates(everyone if among is None else among, exclude)
        if not candidates:
            return None
        decision = self.policy.choose(candidates, route)
        policy = self.policy.name
        self._metrics.routing_decision_seconds.labels(policy).observe(time.perf_counter() - started)
        outcome = "spill" if decision.spilled else "cache_hit" if decision.cached_tokens else "miss"
        self._metrics.routing_decisions.labels(policy, outcome).inc()
        self._metrics.routing_prompt_tokens.labels(policy).inc(route.prompt_tokens)
        self._metrics.routing_cached_tokens.labels(policy).inc(min(decision.cached_tokens, route.prompt_tokens))
        return decision

    def started(self, decision: Decision, route: Route) -> int:
        """An attempt on the decision's backend begins: its uncached prompt tokens count as queued prefill
        until `prefilled` (the first byte of a stream, or the whole answer). Returns what was added."""
        self.policy.routed(decision.backend, route)
        queued = max(route.prompt_tokens - decision.cached_tokens, 0)
        self.pool.queue_prefill(decision.backend, queued)
        return queued

    def prefilled(self, backend: Backend, queued: int) -> None:
        self.pool.queue_prefill(backend, -queued)


def make_router(pool: BackendPool, metrics: Metrics, tuning: RoutingTuning) -> Router:
    return Router(pool, make_policy(tuning), metrics, block_tokens=tuning.block_tokens)


def make_policy(tuning: RoutingTuning) -> RoutingPolicy:
    # Imported here: the policies import this module's shared pieces.
    from app.gateway.backends.prefix_aware import PrefixAwarePolicy
    from app.gateway.backends.round_robin import RoundRobinPolicy
    from app.gateway.backends.session_affinity import SessionAffinityPolicy

    if tuning.policy == "prefix":
        return PrefixAwarePolicy(
            load_factor=tuning.load_factor,
            block_tokens=tuning.block_tokens,
            cache_tokens=tuning.cache_tokens or DEFAULT_CACHE_TOKENS,
            prefill_tokens_per_load=tuning.prefill_tokens_per_load,
        )
    if tuning.policy == "round_robin":
        return RoundRobinPolicy()
    return SessionAffinityPolicy()


def choose_backend(
    backends: Sequence[Backend], *, session_id: str | None, exclude: Collection[Backend] = ()
) -> Backend | None:
    """Today's rule as a function (session rendezvous, else least outstanding): kept for its callers."""
    from app.gateway.backends.session_affinity import SessionAffinityPolicy

    candidates = live_candidates(backends, exclude)
    if not candidates:
        return None
    return SessionAffinityPolicy().choose(candidates, Route(session_id=session_id)).backend
