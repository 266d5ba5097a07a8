"""Redis goes away and comes back: chat keeps answering, limits fail open (or closed), sessions survive."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import generate_latest

from app.gateway.metrics import Metrics
from app.gateway.ratelimit.limiter import RateLimiter
from app.gateway.redis_client import RedisGuard
from localstack.services import RedisHandle, start_redis
from stackspec.settings import StackSettings
from tests.gateway.conftest import Gateway, StartGateway, auth, chat_body
from tests.waiting import wait_until_async


@pytest.fixture(scope="module")
def own_redis(build_dir: Path, stack_settings: StackSettings) -> Iterator[RedisHandle]:
    handle = start_redis(build_dir / "redis-outage", settings=stack_settings, password="outage-password")
    yield handle
    handle.stop()


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


async def wait_redis(gw: Gateway, state: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient(base_url=gw.url) as http:
        while True:
            ready = await http.get("/readyz")
            body: dict[str, object] = ready.json()
            if body["redis"] == state:
                assert ready.status_code == 200  # backends are fine: still ready
                return body
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)


async def test_outage_and_recovery(start_gw: StartGateway, own_redis: RedisHandle) -> None:
    env = {"redis_url": own_redis.url, "redis_password": own_redis.password or "", "redis_retry_seconds": "0.5"}
    open_gw = start_gw(**env)
    closed_gw = start_gw(**env, rate_limit_fail_open="false")
    sid = "outage-session-1"
    headers = {**auth("alice"), "X-Session-Id": sid}
    async with open_gw.client() as http, closed_gw.client() as closed:
        first = await http.post("/v1/chat/completions", headers=headers, json=chat_body("before the outage"))
        assert first.status_code == 200
        own_redis.stop()
        try:
            await wait_redis(open_gw, "down")
            during = await http.post("/v1/chat/completions", headers=headers, json=chat_body("during"))
            assert during.status_code == 200, during.text  # answered, without history ...
            assert during.headers["x-session-stored"] == "false"  # ... and the client is told it was not saved
            alone = await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body("during"))
            assert during.json()["usage"]["prompt_tokens"] == alone.json()["usage"]["prompt_tokens"]
            stream = await http.post("/v1/chat/completions", headers=headers, json=chat_body("s", stream=True))
            assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
            # Streamed: a chunk with no choices, just before [DONE], says the turn was not saved.
            events = [e.removeprefix("data: ") for e in stream.text.split("\n\n") if e.strip()]
            notice = json.loads(events[-2])
            assert notice["choices"] == [] and notice["session"] == {
                "id": sid, "stored": False, "message": notice["session"]["message"]}
            read = await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))
            assert read.status_code == 503 and read.json()["error"]["code"] == "sessions_unavailable"
            refused = await closed.post("/v1/chat/completions", headers=auth("alice"), json=chat_body())
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "rate_limit_unavailable"
            metrics = (await http.get("/metrics")).text
            assert metric(metrics, "gateway_rate_limit_fail_open_total") >= 3
            assert metric(metrics, "gateway_redis_errors_total") >= 3
            assert metric(metrics, "gateway_redis_up") == 0
            assert metric(metrics, "gateway_session_turns_not_stored_total") == 2
        finally:
            own_redis.restart()
        await wait_redis(open_gw, "up")
        stored = await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))
    assert stored.status_code == 200
    answer = first.json()["choices"][0]["message"]["content"]
    # Written before the outage (AOF on disk); turns during the outage were not stored.
    assert stored.json()["messages"] == [
        {"role": "user", "content": "before the outage"},
        {"role": "assistant", "content": answer},
    ]


async def test_a_slot_release_that_fails_is_retried_until_redis_answers(own_redis: RedisHandle) -> None:
    """Redis frozen at the moment a request ends: the release fails, and is retried (not left to expire)
    once Redis answers again, so the caller is not locked out for the slot TTL."""
    metrics = Metrics()
    guard = RedisGuard.from_url(own_redis.url, own_redis.password, metrics, timeout=0.3, retry_seconds=0.2)
    limiter = RateLimiter(guard, metrics, rpm=1000, concurrent=5, fail_open=True, slot_ttl_seconds=120)
    plain = redis.Redis(port=own_redis.port, password=own_redis.password)
    key = "qs:rl:slots:key:frozen-release"
    plain.delete(key)
    slot = await limiter.admit("key:frozen-release")
    assert plain.zcard(key) == 1
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        await slot.release()  # times out: handed to the background retry
        assert metric((await asyncio.to_thread(lambda: metrics_text(metrics))), "gateway_redis_errors_total") >= 1
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    await wait_until_async(lambda: asyncio.to_thread(lambda: plain.zcard(key) == 0),
                           "the slot is given back once Redis answers", within=20)
    await guard.close()


def metrics_text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()
