"""Routing against two real vLLMs: session affinity, least-outstanding spreading, client-disconnect cancel."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis

from app.gateway.backends.routing import rendezvous_score
from localstack.services import RedisHandle, VllmHandle
from tests.gateway.conftest import Fleet, Gateway, StartGateway, auth, chat_body, vllm_metric

DONE = "vllm:request_success_total"


def session_for(target: VllmHandle, others: list[VllmHandle]) -> str:
    """A session id that rendezvous hashing maps to `target` among `others`."""
    while True:
        sid = f"sess-{uuid.uuid4()}"
        scores = {h.port: rendezvous_score(sid, f"127.0.0.1:{h.port}") for h in others}
        if max(scores, key=lambda p: scores[p]) == target.port:
            return sid


async def test_a_session_sticks_to_one_backend(gw: Gateway, fleet: Fleet) -> None:
    backends = [fleet.a, fleet.b]
    for target in backends:
        sid = session_for(target, backends)
        before = {h.port: vllm_metric(h, DONE) for h in backends}
        async with gw.client() as http:
            for i in range(3):
                resp = await http.post("/v1/chat/completions", headers={**auth("alice"), "X-Session-Id": sid},
                                       json=chat_body(f"turn {i}", max_tokens=2))
                assert resp.status_code == 200
        after = {h.port: vllm_metric(h, DONE) for h in backends}
        assert after[target.port] - before[target.port] == 3
        assert sum(after.values()) - sum(before.values()) == 3


async def test_requests_without_session_spread_by_outstanding_load(gw: Gateway, fleet: Fleet) -> None:
    backends = [fleet.a, fleet.b]
    before = {h.port: vllm_metric(h, DONE) for h in backends}

    async def one() -> None:
        async with gw.client() as http:
            resp = await http.post("/v1/chat/completions", headers=auth("alice"),
                                   json=chat_body(max_tokens=150, ignore_eos=True))
            assert resp.status_code == 200

    await asyncio.gather(*(one() for _ in range(6)))
    deltas = [vllm_metric(h, DONE) - before[h.port] for h in backends]
    assert sum(deltas) == 6
    assert min(deltas) >= 2, deltas  # not all on one backend


# Timing-sensitive on a 2-core machine shared by three CPU vLLMs (see README "Known issues"): a real
# regression fails every attempt; a stall of the machine gets two more.
@pytest.mark.flaky(reruns=2, reruns_delay=2)
async def test_client_disconnect_cancels_the_vllm_request(
    gw: Gateway, fleet: Fleet, redis_server: RedisHandle
) -> None:
    """Close the connection mid-stream: vLLM stops generating (it would otherwise run to 4000 tokens, ~8 s).

    An attempt counts only if vLLM still shows the request running when we close: on a busy machine a slow
    test process can be overtaken by the generation itself, which says nothing about cancellation.
    """
    backends = [fleet.a, fleet.b]
    running = "vllm:num_requests_running"
    for _attempt in range(3):
        generated_before = sum(vllm_metric(h, "vllm:generation_tokens_total") for h in backends)
        async with gw.client() as http:
            body = chat_body("go on forever", max_tokens=4000, ignore_eos=True, stream=True)
            async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body) as resp:
                assert resp.status_code == 200
                # Keep the iterator referenced: an abandoned one is closed by the GC, which already disconnects.
                lines = resp.aiter_lines()
                received = 0
                while received < 5:
                    received += (await anext(lines)).startswith("data:")
                was_running = sum(vllm_metric(h, running) for h in backends) == 1
            # leaving the block closes the connection mid-stream
        deadline = time.monotonic() + 15
        while sum(vllm_metric(h, running) for h in backends) > 0:
            assert time.monotonic() < deadline, "vLLM kept generating after the client went away"
            await asyncio.sleep(0.1)
        generated = sum(vllm_metric(h, "vllm:generation_tokens_total") for h in backends) - generated_before
        if was_running:
            assert generated < 4000, "vLLM generated the whole answer for a client that had gone"
            break
    else:
        raise AssertionError("in 3 attempts the request never showed as running in vLLM while we streamed")
    # The gateway released the stream's concurrency slot and its active-stream gauge.
    r = redis.Redis(port=redis_server.port, password=redis_server.password, decode_responses=True)
    deadline = time.monotonic() + 5
    while int(r.get("qs:rl:concurrent:key:alice") or 0) != 0:
        assert time.monotonic() < deadline, "the stream's concurrency slot was not released"
        await asyncio.sleep(0.1)
    async with gw.client() as http:
        assert "gateway_active_streams 0.0" in (await http.get("/metrics")).text
    assert "client disconnected mid-stream" in gw.log()


async def test_backends_from_dns(start_gw: StartGateway, fleet: Fleet) -> None:
    """A DNS name (the headless Service in a cluster; `localhost` here) is resolved into backends."""
    gw = start_gw(backends="", backends_dns=f"localhost:{fleet.a.port}", dns_interval_seconds="0.5")
    async with gw.client() as http:
        resp = await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body())
        ready = (await http.get("/readyz")).json()
    assert resp.status_code == 200
    assert ready["backends"][f"127.0.0.1:{fleet.a.port}"]["healthy"] is True
