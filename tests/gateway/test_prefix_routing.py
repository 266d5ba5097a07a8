"""Prefix-aware routing with bounded load (issue 20) against two real vLLMs with prefix caching (fleet A, B).

- A stateless client (no session id) resending the whole conversation each turn: every turn reaches the
  replica that holds the conversation, and that replica's own counter of prefix-cache hits rises.
- A burst on one hot prefix: the cache would pull every request to one replica; the load bound spreads them.
- Two gateway replicas send a new prefix to the same backend (rendezvous of the first block, no shared state).
- A dead backend among the candidates: the retries fail over to the live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import httpx

from localstack.processes import free_port
from tests.gateway.conftest import Fleet, Gateway, StartGateway, auth, vllm_metric
from tests.waiting import metric

DONE = "vllm:request_success_total"
HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
PREFIX = '{"policy": "prefix"}'


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


@contextlib.asynccontextmanager
async def held_stream(http: httpx.AsyncClient, body: dict[str, object]) -> AsyncIterator[str]:
    """A stream whose first chunk has arrived, held open (in flight at the gateway) until the block ends."""
    async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body) as resp:
        assert resp.status_code == 200
        chunks = resp.aiter_text()
        yield await anext(chunks)


async def test_a_burst_on_one_hot_prefix_spreads_once_the_bound_is_reached(
    start_gw: StartGateway, fleet: Fleet
) -> None:
    """Six long streams sharing a long prefix, opened one after another and held: each next one is best
    served (cache) where the first went, until that backend is at the bound; with factor 1.25 over two
    backends none carries more than ceil(1.25 x 6 / 2) = 4."""
    gw = prefix_gateway(start_gw, fleet)
    document = words(2, 250)
    async with gw.client() as http, contextlib.AsyncExitStack() as streams:
        for i in range(6):
            body = {"messages": [{"role": "system", "content": document},
                                 {"role": "user", "content": f"reader {i}"}],
                    "max_tokens": 3000, "ignore_eos": True, "stream": True}
            first = await streams.enter_async_context(held_stream(http, body))
            assert "[DONE]" not in first
        spills = metric(gw.url, "gateway_routing_decisions_total", policy="prefix", outcome="spill")
        outstanding = {port: metric(gw.url, "gateway_backend_outstanding_requests", backend=f"127.0.0.1:{port}")
                       for port in (fleet.a.port, fleet.b.port)}
        assert sum(outstanding.values()) == 6, outstanding  # precondition: all six still in flight
    assert 1 <= min(outstanding.values()) and max(outstanding.values()) <= 4, outstanding
    assert spills >= 1


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
