"""Prefix-aware routing with bounded load (issue 20) against two real vLLMs with prefix caching (fleet A, B).

- A stateless client (no session id) resending the whole conversation each turn: every turn reaches the
  replica that holds the conversation, and that replica's own counter of prefix-cache hits rises.
- A burst on one hot prefix: the cache would pull every request to the replica that holds it; once that one is
  at the load bound (the paced replica, holding a long stream), they spill to the other.
- Two gateway replicas send a new prefix to the same backend (rendezvous of the first block, no shared state).
- A dead backend among the candidates: the retries fail over to the live one.
"""

from __future__ import annotations

import asyncio
import random

from app.gateway.backends.pool import BackendPool
from app.gateway.backends.routing import make_router, rendezvous_score
from app.gateway.metrics import Metrics
from app.gateway.settings import RoutingTuning
from localstack.processes import free_port
from localstack.services import VllmHandle
from tests.gateway.conftest import Fleet, Gateway, StartGateway, auth, vllm_metric
from tests.waiting import metric

DONE = "vllm:request_success_total"
HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
PREFIX = '{"policy": "prefix"}'

# The gateway's own hashing of a request (Router.route), to know where a cold gateway sends a document.
HASHING = make_router(BackendPool(Metrics(), eject_after_failures=3), Metrics(), RoutingTuning())


def words(seed: int, count: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"])
                    for _ in range(count))


def prefix_gateway(start_gw: StartGateway, fleet: Fleet, **overrides: str) -> Gateway:
    gw = start_gw(routing=PREFIX, **overrides)
    gw.wait_backends_healthy(2)
    return gw


def counters(fleet: Fleet, name: str) -> dict[int, float]:
    return {h.port: vllm_metric(h, name) for h in (fleet.a, fleet.b)}


def delta(after: dict[int, float], before: dict[int, float]) -> dict[int, float]:
    return {port: after[port] - before[port] for port in after}


async def test_a_stateless_conversation_stays_on_the_replica_that_caches_it(
    start_gw: StartGateway, fleet: Fleet
) -> None:
    gw = prefix_gateway(start_gw, fleet)
    messages = [{"role": "system", "content": words(1, 250)}]  # a long system prompt, resent every turn
    done_before, hits_before = counters(fleet, DONE), counters(fleet, HITS)
    async with gw.client() as http:
        for turn in range(4):
            messages.append({"role": "user", "content": f"question {turn}: {words(10 + turn, 20)}"})
            resp = await http.post("/v1/chat/completions", headers=auth("alice"),  # no session id
                                   json={"messages": messages, "max_tokens": 8, "temperature": 0})
            assert resp.status_code == 200, resp.text
            messages.append({"role": "assistant", "content": resp.json()["choices"][0]["message"]["content"]})
    served = delta(counters(fleet, DONE), done_before)
    assert sorted(served.values()) == [0, 4], served  # every turn on one replica
    holder = max(served, key=lambda port: served[port])
    hits = delta(counters(fleet, HITS), hits_before)
    assert hits[holder] > 0, hits  # vLLM reused the conversation's prefix
    cache_hits = metric(gw.url, "gateway_routing_decisions_total", policy="prefix", outcome="cache_hit")
    assert cache_hits == 3  # turns 2-4 were routed for the cache, turn 1 by rendezvous


def hot_document_for(target: VllmHandle, other: VllmHandle) -> str:
    """A long document whose first block the rendezvous hash gives to `target` (so a cold gateway sends it there)."""
    for seed in range(1000):
        document = words(1000 + seed, 250)
        key = HASHING.route({"messages": [{"role": "system", "content": document}]}).key
        if rendezvous_score(key, f"127.0.0.1:{target.port}") > rendezvous_score(key, f"127.0.0.1:{other.port}"):
            return document
    raise AssertionError("no document hashes to the target")


async def test_a_burst_on_one_hot_prefix_spreads_once_the_bound_is_reached(
    start_gw: StartGateway, fleet: Fleet
) -> None:
    """The paced backend P holds one long stream of a hot document (it is where that prefix is cached, and its
    load is 1 while the fast backend A has 0). Further requests on the same document would be best served from
    P's cache, but P is at the bound (ceil(1.25 x the mean) with them on it): each goes to A — a spill-over —
    and P never carries more. Each of them is answered before the next is sent, so the loads at each decision
    are exactly those (P's stream decodes at tens of tokens a second for far longer than the test takes)."""
    paced = fleet.paced()
    gw = start_gw(routing=PREFIX, backends=f"127.0.0.1:{paced.port},127.0.0.1:{fleet.a.port}")
    gw.wait_backends_healthy(2)
    document = hot_document_for(paced, fleet.a)
    messages = [{"role": "system", "content": document}]
    served_before = {h.port: vllm_metric(h, DONE) for h in (paced, fleet.a)}
    async with gw.client() as http:
        body = {"messages": [*messages, {"role": "user", "content": "summarise it at length"}],
                "max_tokens": 1000, "ignore_eos": True, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body) as held:
            assert held.status_code == 200
            chunks = held.aiter_text()
            assert "[DONE]" not in await anext(chunks)
            for i in range(4):
                resp = await http.post("/v1/chat/completions", headers=auth("alice"), json={
                    "messages": [*messages, {"role": "user", "content": f"reader {i}"}], "max_tokens": 4})
                assert resp.status_code == 200, resp.text
            outstanding = {port: metric(gw.url, "gateway_backend_outstanding_requests", backend=f"127.0.0.1:{port}")
                           for port in (paced.port, fleet.a.port)}
            # precondition: P's stream was in flight throughout (still is), A's answers all done
            assert outstanding == {paced.port: 1, fleet.a.port: 0}, outstanding
    served = {h.port: vllm_metric(h, DONE) - served_before[h.port] for h in (paced, fleet.a)}
    assert served[fleet.a.port] == 4, served  # every request after the first spilled to A
    assert metric(gw.url, "gateway_routing_decisions_total", policy="prefix", outcome="spill") == 4


async def test_two_gateway_replicas_send_a_new_prefix_to_the_same_backend(
    start_gw: StartGateway, fleet: Fleet
) -> None:
    one, two = prefix_gateway(start_gw, fleet), prefix_gateway(start_gw, fleet)
    for seed in range(3):
        served_by = []
        for gw in (one, two):
            before = counters(fleet, DONE)
            async with gw.client() as http:
                resp = await http.post("/v1/chat/completions", headers=auth("alice"), json={
                    "messages": [{"role": "system", "content": words(100 + seed, 120)},
                                 {"role": "user", "content": "hello"}], "max_tokens": 4})
                assert resp.status_code == 200, resp.text
            served = delta(counters(fleet, DONE), before)
            served_by.append(max(served, key=lambda port: served[port]))
        assert served_by[0] == served_by[1], seed


async def test_a_dead_backend_fails_over_to_the_live_one(start_gw: StartGateway, fleet: Fleet) -> None:
    dead = free_port()
    gw = start_gw(routing=PREFIX, backends=f"127.0.0.1:{dead},127.0.0.1:{fleet.a.port}")
    async with gw.client() as http:
        results = await asyncio.gather(*(
            http.post("/v1/chat/completions", headers=auth("alice"), json={
                "messages": [{"role": "system", "content": words(200 + i, 80)}, {"role": "user", "content": "hi"}],
                "max_tokens": 4}) for i in range(6)))
    assert [r.status_code for r in results] == [200] * 6, [r.text for r in results]
