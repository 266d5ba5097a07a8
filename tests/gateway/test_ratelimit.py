"""One limit shared by two gateway processes through Redis; 429 with Retry-After in OpenAI's shape."""

from __future__ import annotations

import asyncio

import httpx
import redis

from localstack.services import RedisHandle
from tests.gateway.conftest import StartGateway, auth, chat_body
from tests.waiting import wait_until_async


async def test_requests_per_minute_shared_by_two_gateways(start_gw: StartGateway, redis_server: RedisHandle) -> None:
    one, two = start_gw(rate_limit_rpm="5"), start_gw(rate_limit_rpm="5")
    # carol's and bob's requests of the last minute (other tests) would count: start from empty windows.
    redis.Redis(port=redis_server.port, password=redis_server.password).delete(
        "qs:rl:requests:key:carol", "qs:rl:requests:key:bob")
    statuses: list[int] = []
    limited: list[httpx.Response] = []
    async with one.client() as a, two.client() as b:
        for i in range(8):
            resp = await (a if i % 2 else b).post("/v1/chat/completions", headers=auth("carol"),
                                                  json=chat_body(max_tokens=1))
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                limited.append(resp)
        other_key = await a.post("/v1/chat/completions", headers=auth("bob"), json=chat_body(max_tokens=1))
        metrics = (await a.get("/metrics")).text + (await b.get("/metrics")).text
    assert statuses == [200] * 5 + [429] * 3  # alternating between the two processes: one shared count
    resp = limited[0]
    # A sliding window: the wait is until the oldest admitted request leaves it, never past the window.
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert other_key.status_code == 200  # limits are per key
    assert 'gateway_rate_limited_total{limit="rpm"}' in metrics


async def test_concurrent_requests_limit_shared_by_two_gateways(
    start_gw: StartGateway, black_hole: int, redis_server: RedisHandle
) -> None:
    """Two requests held open (their backend hangs until the first-token timeout) fill carol's two slots."""
    # The hold lasts the first-token timeout: long enough for the checks below on a slow, loaded machine.
    limits = {"rate_limit_concurrent": "2", "backends": f"127.0.0.1:{black_hole}", "first_token_timeout": "10",
              "retry_attempts": "1"}
    one, two = start_gw(expect_ready=False, **limits), start_gw(expect_ready=False, **limits)
    slots = redis.Redis(port=redis_server.port, password=redis_server.password)
    key = "qs:rl:slots:key:carol"  # one member per held sequence, scored by its deadline
    body = chat_body(stream=True)
    async with one.client() as a, two.client() as b:
        held = [asyncio.create_task(c.post("/v1/chat/completions", headers=auth("carol"), json=body)) for c in (a, b)]
        await wait_until_async(lambda: asyncio.to_thread(lambda: slots.zcard(key) == 2),
                               "the two held requests take their slots", within=10)
        third, fourth = await asyncio.gather(
            a.post("/v1/chat/completions", headers=auth("carol"), json=chat_body()),
            b.post("/v1/chat/completions", headers=auth("carol"), json=chat_body()),
        )
        timed_out = await asyncio.gather(*held)  # the hung backend: 504 after the first-token timeout
    for resp in (third, fourth):
        assert resp.status_code == 429, resp.text
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert [r.status_code for r in timed_out] == [504, 504]
    assert slots.zcard(key) == 0  # released when the requests ended
