"""The `prefix` policy: to the backend most likely to hold the prompt's prefix in its KV cache, within a load
bound (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam, 2018).

- Cache estimate: per backend, an LRU of the block hashes recently routed to it (prefix_blocks.py); a
  backend holds a prompt's leading blocks up to the first one it lacks.
- Load, in what costs the GPU: requests in flight, plus queued prefill (estimated uncached prompt tokens
  whose first token is not out yet) at one per `prefill_tokens_per_load` tokens.
- Bound: a backend is a candidate while its load with this request on it is at most ceil(load_factor x the
  mean load with this request); if a heavy prompt fits nowhere, the backend least loaded after it serves.
- Among candidates: the most cached tokens minus the prefill queued before ours; ties, and the order of
  spill-over, by rendezvous hash of the route's key (the session id, else the first block). A new prefix
  therefore lands on the same backend from every gateway replica without shared state, and a session
  behaves as it did under the `session` policy until its backend is over the bound.
No randomness: two routers that see the same requests decide the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.gateway.backends.pool import Backend
from app.gateway.backends.prefix_blocks import BlockLRU
from app.gateway.backends.routing import Decision, Route, rendezvous_score


class PrefixAwarePolicy:
    name = "prefix"

    def __init__(self, *, load_factor: float, block_tokens: int, cache_tokens: int, prefill_tokens_per_load: int):
        self.load_factor = load_factor
        self.block_tokens = block_tokens
        self.capacity_blocks = max(cache_tokens // block_tokens, 1)
        self.prefill_tokens_per_load = prefill_tokens_per_load
        self._caches: dict[str, BlockLRU] = {}

    def load(self, backend: Backend) -> float:
        return backend.outstanding + backend.queued_prefill_tokens / self.prefill_tokens_per_load

    def weight(self, route: Route, cached_tokens: int) -> float:
        """What this request adds to a backend's load: 1, plus its prompt tokens that backend must prefill."""
        return 1 + max(route.prompt_tokens - cached_tokens, 0) / self.prefill_tokens_per_load

    def cached_tokens(self, backend: Backend, route: Route) -> int:
        cache = self._caches.get(backend.address)
        return cache.matched(route.blocks) * self.block_tokens if cache is not None else 0

    def choose(self, candidates: Sequence[Backend], route: Route) -> Decision:
        cached = {b.address: self.cached_tokens(b, route) for b in candidates}
        load = {b.address: self.load(b) for b in candidates}
        after = {b.address: load[b.address] + self.weight(route, cached[b.address]) for b in candidates}
        total = sum(load.values())

        def within_bound(b: Backend) -> bool:
            added = after[b.address] - load[b.address]
            return after[b.address] <= math.ceil(self.load_factor * (total + added) / len(candidates))

        def rank(b: Backend) -> tuple[float, int]:
            return cached[b.address] - b.queued_prefill_tokens, rendezvous_score(route.key, b.address)

        within = [b for b in candidates if within_bound(b)]
        if not within:  # a request heavier than the bound allows anywhere: the least loaded after it serves
            least = min(after.values())
            within = [b for b in candidates if after[b.address] == least]
        best = max(within, key=rank)
        return Decision(best, cached_tokens=cached[best.address],
                        spilled=best is not max(candidates, key=rank))

    def routed(self, backend: Backend, route: Route) -> None:
        if not route.blocks:
            return
        cache = self._caches.get(backend.address)
        if cache is None:
            cache = self._caches[backend.address] = BlockLRU(self.capacity_blocks)
        cache.add(route.blocks)

    def forget(self, address: str) -> None:
        self._caches.pop(address, None)
