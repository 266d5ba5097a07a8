"""One limit shared by two gateway processes through Redis; 429 with Retry-After in OpenAI's shape."""

from __future__ import annotations

import asyncio
import time

import httpx

from localstack.services import RedisHandle
from tests.gateway.conftest import StartGateway, auth, chat_body


async def test_requests_per_minute_shared_by_two_gateways(start_gw: StartGateway, redis_server: RedisHandle) -> None:
    one, two = start_gw(rate_limit_rpm="5"), start_gw(rate_limit_rpm="5")
    statuses: list[int] = []
    limited: list[httpx.Response] = []
    if time.time() % 60 > 50:  # the window is a calendar minute: do not straddle two
        await asyncio.sleep(61 - time.time() % 60)
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
    assert 1 <= int(resp.headers["retry-after"]) <= 61
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert other_key.status_code == 200  # limits are per key
    assert 'gateway_rate_limited_total{limit="rpm"}' in metrics


async def test_concurrent_streams_limit_shared_by_two_gateways(start_gw: StartGateway) -> None:
    limits = {"rate_limit_concurrent": "2", "max_tokens_cap": "4000"}
    one, two = start_gw(**limits), start_gw(**limits)
    body = chat_body(max_tokens=4000, ignore_eos=True, stream=True)  # ~8 s each: long enough to overlap
    async with one.client() as a, two.client() as b:
        async with a.stream("POST", "/v1/chat/completions", headers=auth("carol"), json=body) as s1, \
                b.stream("POST", "/v1/chat/completions", headers=auth("carol"), json=body) as s2:
            assert s1.status_code == s2.status_code == 200
            third, fourth = await asyncio.gather(
                a.post("/v1/chat/completions", headers=auth("carol"), json=chat_body()),
                b.post("/v1/chat/completions", headers=auth("carol"), json=chat_body()),
            )
            other_key = await a.post("/v1/chat/completions", headers=auth("bob"), json=chat_body())
        # Both streams were closed by the client: their slots come back.
        deadline = time.monotonic() + 10
        while (after := await b.post("/v1/chat/completions", headers=auth("carol"), json=chat_body())).status_code \
                == 429:
            assert time.monotonic() < deadline, "the closed streams' slots were never released"
            await asyncio.sleep(0.2)
    for resp in (third, fourth):
        assert resp.status_code == 429, resp.text
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert other_key.status_code == 200
    assert after.status_code == 200
