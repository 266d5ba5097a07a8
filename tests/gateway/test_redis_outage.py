"""Redis goes away and comes back: chat keeps answering, limits fail open (or closed), sessions survive."""

from __future__ import annotations

import asyncio
import contextlib
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

from app.gateway.errors import ApiError
from app.gateway.metrics import Metrics
from app.gateway.ratelimit.limiter import RateLimiter
from app.gateway.redis_client import RedisGuard, RedisUnavailable
from localstack.processes import free_port
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


@contextlib.contextmanager
def frozen(handle: RedisHandle) -> Iterator[None]:
    """Redis stopped (SIGSTOP) for the block: calls sent meanwhile wait unanswered, and run once it thaws."""
    os.kill(handle.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(handle.pid, signal.SIGCONT)


def slot_limiter(own_redis: RedisHandle) -> tuple[Metrics, RedisGuard, RateLimiter, redis.Redis]:
    """A limiter whose calls give up after 0.3 s, with slots that live 120 s, and a plain client to look."""
    metrics = Metrics()
    guard = RedisGuard.from_url(own_redis.url, own_redis.password, metrics, timeout=0.3, retry_seconds=0.2)
    limiter = RateLimiter(guard, metrics, rpm=1000, concurrent=5, fail_open=True, slot_ttl_seconds=120)
    return metrics, guard, limiter, redis.Redis(port=own_redis.port, password=own_redis.password)


async def test_a_slot_release_that_fails_is_retried_until_redis_answers(own_redis: RedisHandle) -> None:
    """Redis frozen at the moment a request ends: the release fails, and is retried (not left to expire)
    once Redis answers again, so the caller is not locked out for the slot TTL."""
    metrics, guard, limiter, plain = slot_limiter(own_redis)
    key = "qs:rl:slots:key:frozen-release"
    plain.delete(key)
    slot = await limiter.admit("key:frozen-release")
    assert plain.zcard(key) == 1
    with frozen(own_redis):
        await slot.release()  # times out: handed to the background retry
        assert metric((await asyncio.to_thread(lambda: metrics_text(metrics))), "gateway_redis_errors_total") >= 1
    await wait_until_async(lambda: asyncio.to_thread(lambda: plain.zcard(key) == 0),
                           "the slot is given back once Redis answers", within=20)
    await guard.close()


async def test_an_admission_that_times_out_gives_back_the_slot_it_took_late(own_redis: RedisHandle) -> None:
    """Redis frozen during an admission: the gateway admits locally after its timeout, but the script it had
    sent runs once Redis thaws and takes a slot there. That slot is given back, not left to lock the caller
    out until its deadline (seen: two such slots failed the next tests that counted a caller's slots)."""
    _, guard, limiter, plain = slot_limiter(own_redis)
    who = f"key:frozen-admission-{time.monotonic_ns()}"
    slots, requests = f"qs:rl:slots:{who}", f"qs:rl:requests:{who}"
    await (await limiter.admit(f"{who}-warm")).release()  # the script is loaded: after the thaw it runs
    with frozen(own_redis):
        slot = await limiter.admit(who)  # no answer within 0.3 s: admitted by the local limits
        assert slot.local
    # Precondition: the script did run late (it logged the request in the window and took a slot)...
    await wait_until_async(lambda: asyncio.to_thread(lambda: plain.zcard(requests) == 1),
                           "the admission sent before the freeze runs after the thaw", within=10)
    # ...and the slot it took is given back, long before its 120 s deadline.
    await wait_until_async(lambda: asyncio.to_thread(lambda: plain.zcard(slots) == 0),
                           "the late admission's slot is given back", within=20)
    await slot.release()
    await guard.close()


def metrics_text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


async def test_the_breaker_opens_on_an_error_rate_not_one_slow_call(own_redis: RedisHandle) -> None:
    """One timeout (Redis frozen for a moment) does not open the breaker: the next call goes through.
    Failures making up the error rate do: then calls are refused without trying, even with Redis back."""
    metrics = Metrics()
    guard = RedisGuard.from_url(own_redis.url, own_redis.password, metrics, timeout=0.2, retry_seconds=30,
                                window_seconds=60, min_failures=3, failure_ratio=0.5)
    try:
        assert await guard.ping()
        with frozen(own_redis):
            assert not await guard.ping()  # one timeout
        assert not guard.open
        assert await guard.ping()  # straight through: one slow call is not an outage
        with frozen(own_redis):
            for _ in range(3):
                assert not await guard.ping()
        assert guard.open  # 4 of the window's 6 calls failed: at least 3, and at least half
        with pytest.raises(RedisUnavailable):
            await guard.run("probe", lambda r: r.ping())  # refused without trying, though Redis answers
    finally:
        await guard.close()


async def test_limits_go_local_when_their_redis_is_unreachable() -> None:
    """No Redis at all: each process enforces rpm / replicas itself (never unlimited), or refuses (503)."""
    metrics = Metrics()
    guard = RedisGuard.from_url(f"redis://127.0.0.1:{free_port()}/0", None, metrics, timeout=0.5, retry_seconds=5)
    local = RateLimiter(guard, metrics, rpm=4, concurrent=2, fail_open=True, slot_ttl_seconds=60, replicas=2)
    closed = RateLimiter(guard, metrics, rpm=4, concurrent=2, fail_open=False, slot_ttl_seconds=60, replicas=2)
    try:
        first = await local.admit("key:somebody")
        with pytest.raises(ApiError) as busy:
            await local.admit("key:somebody")  # concurrency 2 / 2 replicas = 1 here
        assert busy.value.code == "concurrency_limit_exceeded"
        await first.release()
        await (await local.admit("key:somebody")).release()
        with pytest.raises(ApiError) as limited:
            await local.admit("key:somebody")  # rpm 4 / 2 replicas = 2 per window here
        assert limited.value.status == 429 and limited.value.code == "rate_limit_exceeded"
        await (await local.admit("key:someone-else")).release()  # per identity, as in Redis
        with pytest.raises(ApiError) as refused:
            await closed.admit("key:other")
        assert refused.value.status == 503 and refused.value.code == "rate_limit_unavailable"
    finally:
        await guard.close()


async def test_a_standby_gateway_reads_history_from_the_replica_and_limits_locally(
    start_gw: StartGateway, own_redis: RedisHandle, build_dir: Path, stack_settings: StackSettings
) -> None:
    """A standby site before promotion: its Redis is a read-only replica. Chat answers with the replicated
    history, the turn is reported not stored, the limits are local (not switched off); once promoted
    (REPLICAOF NO ONE) turns are stored again."""
    replica = start_redis(build_dir / "redis-standby", settings=stack_settings, password=own_redis.password)
    try:
        follower = redis.Redis(port=replica.port, password=replica.password)
        follower.config_set("masterauth", own_redis.password or "")
        follower.replicaof("127.0.0.1", own_redis.port)
        primary_gw = start_gw(redis_url=own_redis.url, redis_password=own_redis.password or "")
        standby_gw = start_gw(redis_url=replica.url, redis_password=replica.password or "",
                              redis_retry_seconds="0.5", rate_limit_replicas="2")
        sid = f"standby-{os.getpid()}-{time.monotonic_ns()}"
        headers = {**auth("alice"), "X-Session-Id": sid}
        async with primary_gw.client() as primary, standby_gw.client() as standby:
            first = await primary.post("/v1/chat/completions", headers=headers, json=chat_body("My name is Ada."))
            assert first.status_code == 200
            await wait_until_async(lambda: asyncio.to_thread(lambda: follower.exists(f"qs:session:{sid}") == 1),
                                   "the turn is replicated", within=10)
            answered = await standby.post("/v1/chat/completions", headers=headers, json=chat_body("My name?"))
            assert answered.status_code == 200, answered.text
            assert answered.headers["x-session-stored"] == "false"  # the client is told
            alone = await standby.post("/v1/chat/completions", headers=auth("alice"), json=chat_body("My name?"))
            assert answered.json()["usage"]["prompt_tokens"] > alone.json()["usage"]["prompt_tokens"]  # history
            ready = (await standby.get("/readyz")).json()
            assert ready["redis"] == "read-only" and ready["rate_limits"] == "local"
            assert metric((await standby.get("/metrics")).text, "gateway_rate_limit_fail_open_total") >= 1
            follower.replicaof("NO", "ONE")  # promoted

            async def stored() -> bool:
                resp = await standby.post("/v1/chat/completions", headers=headers, json=chat_body("promoted"))
                return resp.status_code == 200 and resp.headers.get("x-session-stored") != "false"

            await wait_until_async(stored, "turns are stored once the standby is promoted", within=15, interval=0.3)
    finally:
        replica.stop()
