"""Overload (issue 21): shed what the process cannot carry, keep verdicts about backends and shared limits.

- past its in-flight bound a gateway answers new generation requests 503 `overloaded` with Retry-After at
  once, while the admitted streams run to their end; /readyz says overloaded, then recovers;
- a stalled event loop (the test hook, GATEWAY_TEST_HOOKS) does not eject a healthy backend;
- with the limits' Redis pool exhausted, an admission queues and is decided by Redis, never locally; past
  the pool's bounded wait it is refused as overload, still never decided locally, and Redis is not "down".
Timing goals (how fast the 503 is) live in bench/; nothing here depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import generate_latest

from app.gateway.errors import ApiError
from app.gateway.metrics import Metrics
from app.gateway.ratelimit.limiter import RateLimiter
from app.gateway.redis_client import RedisGuard
from localstack.services import RedisHandle, start_redis
from stackspec.settings import StackSettings
from tests.gateway.conftest import Fleet, StartGateway, auth, chat_body
from tests.waiting import metric, wait_until, wait_until_async

ADMITTED = 2


def readyz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


async def test_a_burst_past_the_in_flight_bound_is_shed_and_admitted_streams_complete(
    start_gw: StartGateway, fleet: Fleet
) -> None:
    # The paced model streams like a GPU (tens of tokens/s): two 200-token streams stay in flight for
    # seconds after their first chunk. The lag bound is set out of reach: this test is about the count.
    gw = start_gw(backends=f"127.0.0.1:{fleet.paced().port}", max_in_flight=str(ADMITTED),
                  overload_loop_lag_seconds="60", overload_retry_after_seconds="2")
    overload = readyz(gw.url).json()["overload"]
    assert overload["loop_lag_ms"] >= 0
    assert {k: v for k, v in overload.items() if k != "loop_lag_ms"} == {
        "overloaded": False, "reason": None, "in_flight": 0, "limit": ADMITTED, "max_in_flight": ADMITTED,
        "max_loop_lag_ms": 60000.0}
    body = chat_body("tell me a long story", stream=True, max_tokens=200, ignore_eos=True)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(gw.client())
        lines: list[AsyncIterator[str]] = []
        for _ in range(ADMITTED):
            resp = await stack.enter_async_context(
                http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body))
            assert resp.status_code == 200
            it = resp.aiter_lines()
            assert (await anext(it)).startswith("data: ")  # streaming: admitted and in flight
            lines.append(it)

        ready = readyz(gw.url)
        assert ready.status_code == 503
        assert ready.json()["overload"]["overloaded"] is True
        assert ready.json()["overload"]["reason"] == "in_flight"
        assert ready.json()["overload"]["in_flight"] == ADMITTED

        burst = await asyncio.gather(*(
            http.post("/v1/chat/completions", headers=auth("bob"), json=chat_body("me too")) for _ in range(5)))
        for refused in burst:
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "2"
            assert refused.headers["x-request-id"]
            error = refused.json()["error"]
            assert error["code"] == "overloaded" and error["type"] == "service_unavailable"
        other = await http.post("/v1/completions", headers=auth("bob"), json={"prompt": "x", "max_tokens": 2})
        assert other.status_code == 503 and other.json()["error"]["code"] == "overloaded"
        # Not generation: never shed.
        assert (await http.get("/v1/models", headers=auth("bob"))).status_code == 200

        for it in lines:  # the admitted streams were untouched: each runs to its last token and [DONE]
            events = [line.removeprefix("data: ") async for line in it if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            finishes = [c["choices"][0]["finish_reason"] for c in map(json.loads, events[:-1]) if c["choices"]]
            assert finishes[-1] == "length"

    wait_until(lambda: readyz(gw.url).status_code == 200, "/readyz recovers once the streams are done")
    assert readyz(gw.url).json()["overload"]["in_flight"] == 0
    assert metric(gw.url, "gateway_overload_rejected_total", reason="in_flight") == 6
    assert metric(gw.url, "gateway_requests_total", route="/v1/chat/completions", status="503") == 5
    async with gw.client() as http:  # and admits again
        again = await http.post("/v1/chat/completions", headers=auth("bob"), json=chat_body("now?", max_tokens=2))
    assert again.status_code == 200, again.text


STALL = {"test_hooks": "true", "health_timeout_seconds": "0.3", "health_interval_seconds": "60"}


async def test_a_stalled_event_loop_ejects_no_healthy_backend(start_gw: StartGateway, fleet: Fleet) -> None:
    """The hook probes every backend and blocks the loop, the moment the probe's request is out, for longer
    than the probe's timeout: when the loop runs again the deadline has passed, though the backend answered.
    That is our lateness, not the backend's failure: no verdict, the backend stays healthy."""
    gw = start_gw(backends=f"127.0.0.1:{fleet.a.port}", overload_loop_lag_seconds="0.25", **STALL)
    gw.wait_backends_healthy(1)
    async with gw.client() as http:
        stalled = await http.post("/_test/stall", params={"seconds": "1.5"})
        assert stalled.status_code == 200, stalled.text
        body = readyz(gw.url).json()
    assert body["backends"][f"127.0.0.1:{fleet.a.port}"]["healthy"] is True
    assert metric(gw.url, "gateway_backend_healthy") == 1
    assert metric(gw.url, "gateway_backend_verdicts_withheld_total", kind="probe_timeout") == 1
    assert "backend failed its health probe" not in gw.log()
    assert "backend ejected" not in gw.log()
    async with gw.client() as http:  # and it serves
        wait_until(lambda: readyz(gw.url).status_code == 200, "the lag has passed")
        answer = await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body(max_tokens=2))
    assert answer.status_code == 200, answer.text


def test_the_stall_is_real_a_gateway_blind_to_lag_ejects(start_gw: StartGateway, fleet: Fleet) -> None:
    """The control: the same stall, with the lag bound out of reach (lag never withholds a verdict), makes
    the probe fail and the healthy backend ejected, as every gateway did before issue 21."""
    gw = start_gw(backends=f"127.0.0.1:{fleet.a.port}", overload_loop_lag_seconds="60", **STALL)
    gw.wait_backends_healthy(1)
    assert httpx.post(f"{gw.url}/_test/stall", params={"seconds": "1.5"}, timeout=60).status_code == 200
    assert readyz(gw.url).json()["backends"][f"127.0.0.1:{fleet.a.port}"]["healthy"] is False
    assert metric(gw.url, "gateway_backend_verdicts_withheld_total") == 0


def test_the_stall_hook_exists_only_with_the_test_setting(start_gw: StartGateway, fleet: Fleet) -> None:
    gw = start_gw(backends=f"127.0.0.1:{fleet.a.port}")
    assert httpx.post(f"{gw.url}/_test/stall", params={"seconds": "1"}).status_code == 404


def metrics_text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def sample(metrics: Metrics, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text(metrics).splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


@contextlib.asynccontextmanager
async def pool_held(guard: RedisGuard, plain: redis.Redis, key: str) -> AsyncIterator[None]:
    """The guard's only connection busy with real work (a BLPOP) until the block ends (an LPUSH answers it)."""
    plain.delete(key)
    holder = asyncio.create_task(guard.run("hold", lambda r: r.blpop([key], timeout=60)))
    await wait_until_async(lambda: _true(guard.pool_full), "the pool's connection is taken")
    try:
        yield
    finally:
        plain.lpush(key, "go")
        await holder


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
def plain(redis_server: RedisHandle) -> redis.Redis:
    return redis.Redis(port=redis_server.port, password=redis_server.password)


@contextlib.asynccontextmanager
async def limiter_with_one_connection(server: RedisHandle, pool_wait_seconds: float, subject: str
                                      ) -> AsyncIterator[tuple[Metrics, RedisGuard, RateLimiter]]:
    """A limiter whose Redis pool has one connection, queueing up to `pool_wait_seconds` for it; no Redis
    call of its own ever times out (this is about the pool, not the server). Its pool is closed on exit."""
    metrics = Metrics()
    guard = RedisGuard.from_url(server.url, server.password, metrics, timeout=90, retry_seconds=1, min_failures=1,
                                pool_size=1, pool_wait_seconds=pool_wait_seconds)
    redis.Redis(port=server.port, password=server.password).delete(f"qs:rl:requests:{subject}",
                                                                   f"qs:rl:slots:{subject}")
    try:
        yield metrics, guard, RateLimiter(guard, metrics, rpm=1000, concurrent=5, fail_open=True,
                                          slot_ttl_seconds=120)
    finally:
        await guard.close()


async def test_with_the_pool_exhausted_an_admission_waits_and_redis_decides(
    redis_server: RedisHandle, plain: redis.Redis,
) -> None:
    subject = "key:pool-exhausted"
    async with limiter_with_one_connection(redis_server, 90, subject) as (metrics, guard, limiter):
        async with pool_held(guard, plain, "qs:test:pool-hold"):
            admission = asyncio.create_task(limiter.admit(subject))
            await wait_until_async(lambda: _true(guard.pool_waiting == 1), "the admission queues for a connection")
            assert not admission.done()
        slot = await admission
        assert slot.key is not None and not slot.local  # Redis's verdict: a slot in Redis
        assert plain.zcard(f"qs:rl:slots:{subject}") == 1
        assert plain.zcard(f"qs:rl:requests:{subject}") == 1
        await slot.release()
        assert sample(metrics, "gateway_rate_limit_fail_open_total") == 0
        assert sample(metrics, "gateway_redis_pool_exhausted_total") == 0
        assert guard.up and not guard.open


async def test_past_the_pools_wait_an_admission_is_refused_as_overload_never_decided_locally(
    redis_server: RedisHandle, plain: redis.Redis,
) -> None:
    subject = "key:pool-wait-over"
    async with limiter_with_one_connection(redis_server, 0.1, subject) as (metrics, guard, limiter):
        async with pool_held(guard, plain, "qs:test:pool-hold-2"):
            for _ in range(3):
                with pytest.raises(ApiError) as refused:
                    await limiter.admit(subject)
                assert refused.value.status == 503 and refused.value.code == "overloaded"
                assert refused.value.headers["Retry-After"] == "1"
            assert guard.up and not guard.open  # busy is not down: the breaker stays closed
        assert sample(metrics, "gateway_rate_limit_fail_open_total") == 0
        assert sample(metrics, "gateway_redis_pool_exhausted_total") == 3
        assert sample(metrics, "gateway_redis_up") == 1
        assert plain.zcard(f"qs:rl:slots:{subject}") == 0  # nothing was taken by the refused ones
        slot = await limiter.admit(subject)  # the pool free again: Redis decides
        assert slot.key is not None and not slot.local
        await slot.release()


@pytest.fixture(scope="module")
def frozen_redis(build_dir: Path, stack_settings: StackSettings) -> Iterator[RedisHandle]:
    """A Redis of this module's own, to stop (SIGSTOP) without touching the package's shared one."""
    handle = start_redis(build_dir / "redis-overload", settings=stack_settings, password="overload-password")
    yield handle
    handle.stop()


async def test_a_redis_deadline_missed_while_our_loop_lags_is_overload_not_an_outage(
    frozen_redis: RedisHandle,
) -> None:
    """Redis does not answer in time, but our own loop lags: the admission is refused as overload (503), not
    decided locally, and Redis is neither marked down nor has its breaker opened."""
    metrics = Metrics()
    lagging = True
    guard = RedisGuard.from_url(frozen_redis.url, frozen_redis.password, metrics, timeout=0.2, retry_seconds=60,
                                min_failures=1, failure_ratio=0.01, lagging=lambda: lagging)
    limiter = RateLimiter(guard, metrics, rpm=1000, concurrent=5, fail_open=True, slot_ttl_seconds=120)
    plain = redis.Redis(port=frozen_redis.port, password=frozen_redis.password)
    subject = "key:late"
    try:
        assert (await limiter.admit(subject)).key is not None  # the connection exists before the freeze
        os.kill(frozen_redis.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ApiError) as refused:
                await limiter.admit(subject)
            assert refused.value.status == 503 and refused.value.code == "overloaded"
            assert guard.up and not guard.open
            lagging = False  # the same silence with our loop on time: that is Redis's, and limits go local
            slot = await limiter.admit(subject)
            assert slot.local and not guard.up
        finally:
            os.kill(frozen_redis.pid, signal.SIGCONT)
        assert sample(metrics, "gateway_rate_limit_fail_open_total") == 1
        assert sample(metrics, "gateway_overload_rejected_total") == 1
    finally:
        plain.delete(f"qs:rl:requests:{subject}", f"qs:rl:slots:{subject}")
        await guard.close()
