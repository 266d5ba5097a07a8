"""Per-identity limits kept in Redis, so every gateway replica enforces one shared limit.

- Requests per window (a minute by default): a sliding window — each admitted request is a member of a
  sorted set scored by Redis's own clock, members older than the window are pruned at admission — so
  there is no calendar boundary at which a caller gets twice the limit.
- Concurrent sequences (streams included): a sorted set of slots per identity, one member per sequence a
  request makes vLLM generate (n x prompts), scored by its deadline (now + the longest a request can
  live). Admission prunes members past their deadline, counts, and adds, in the same script as the
  window check (one round trip); release removes the request's members. A gateway killed mid-request
  leaks its slots only until their deadline, however often the caller retries meanwhile.

The limits have their own Redis pool and breaker (GATEWAY_RATE_LIMIT_REDIS_URL, or the sessions' Redis
through a pool of their own). When that Redis is unreachable, out of memory, or a read-only standby
replica, each process enforces the limits itself, divided by the number of gateway processes (replicas x
processes per pod: `GatewaySettings.local_limit_divisor`; `LocalLimits`; counted in
gateway_rate_limit_fail_open_total), or refuses with 503 if fail-open is off.
A busy pool is not that: an admission queues for a connection (redis_client.py) and, if none frees up in
time, is refused with 503 `overloaded`; a limit is never decided locally because this process is overloaded.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from app.gateway.errors import ApiError
from app.gateway.logging import log
from app.gateway.metrics import Metrics
from app.gateway.redis_client import RedisBusy, RedisGuard, RedisLate, RedisNoAnswer, RedisUnavailable

# One round trip per admission. KEYS: the identity's request log (sorted set), its slots (sorted set).
# ARGV: request limit, window (ms), concurrency limit, slot lifetime (ms), this request's member, weight.
# Returns {0, seconds until a request leaves the window} when over the request limit, {-1, 1} when over
# the concurrency limit, {1, 0} when admitted (logged, slots taken as <member>:1..<weight>). Refused
# requests are not logged, so retrying while limited does not extend the wait. Redis's clock: one time
# for all replicas.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.ceil((tonumber(oldest[2]) + window - now) / 1000)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local weight = tonumber(ARGV[6])
if redis.call('ZCARD', KEYS[2]) + weight > tonumber(ARGV[3]) then
  return {-1, 1}
end
local life = tonumber(ARGV[4])
for i = 1, weight do
  redis.call('ZADD', KEYS[2], now + life, ARGV[5] .. ':' .. i)
end
redis.call('PEXPIRE', KEYS[2], life)
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
"""


class Script:
    """A Lua script called by SHA (EVALSHA: one round trip), loaded again if Redis restarted empty.

    (redis-py's own Script object does the same but checks `isinstance(client, Pipeline)` per call, an
    isinstance against a typing Protocol that cost more CPU than the rest of the admission.)"""

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, r: Any, keys: list[str], args: list[int | str]) -> Any:
        try:
            return await r.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = await r.script_load(self.text)
            return await r.evalsha(self.sha, len(keys), *keys, *args)


@dataclass
class Slot:
    """Held concurrency slots (`weight` sequences); `release()` is idempotent."""

    key: str | None  # None: admitted by the local limits (or not limited at all)
    limiter: RateLimiter
    members: list[str] = field(default_factory=list)
    subject: str = ""
    weight: int = 1
    local: bool = False
    released: bool = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.local:
            self.limiter.local.release(self.subject, self.weight)
        elif self.key is not None:
            await self.limiter.release(self.key, self.members)


class LocalLimits:
    """This process's own limits while the shared ones are unavailable: the rpm and concurrency divided by
    the number of gateway processes of every replica (`replicas`, rounded up), per identity, over the same
    sliding window."""

    def __init__(self, *, rpm: int, concurrent: int, window_seconds: float, replicas: int):
        self.rpm = max(1, math.ceil(rpm / replicas))
        self.concurrent = max(1, math.ceil(concurrent / replicas))
        self.window = window_seconds
        self._log: dict[str, collections.deque[float]] = {}
        self._inflight: dict[str, int] = {}

    def admit(self, subject: str, weight: int) -> int:
        """0 if admitted, else the seconds to wait (-1: over the concurrency limit)."""
        now = time.monotonic()
        times = self._log.setdefault(subject, collections.deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.rpm:
            return max(1, math.ceil(times[0] + self.window - now))
        inflight = self._inflight.get(subject, 0)
        if inflight and inflight + weight > self.concurrent:
            return -1
        times.append(now)
        self._inflight[subject] = inflight + weight
        if len(self._log) > 100_000:  # bounded: forget identities with nothing in the window
            for idle in [k for k, v in self._log.items() if not v and not self._inflight.get(k)]:
                del self._log[idle]
        return 0

    def release(self, subject: str, weight: int) -> None:
        left = self._inflight.get(subject, 0) - weight
        if left > 0:
            self._inflight[subject] = left
        else:
            self._inflight.pop(subject, None)


class RateLimiter:
    def __init__(
        self,
        redis: RedisGuard,
        metrics: Metrics,
        *,
        rpm: int,
        window_seconds: float = 60.0,
        concurrent: int,
        fail_open: bool,
        slot_ttl_seconds: float,
        replicas: int = 1,
    ):
        self._redis, self._metrics = redis, metrics
        self.rpm, self.concurrent, self.fail_open = rpm, concurrent, fail_open
        self.window_ms = max(1, round(window_seconds * 1000))
        self._slot_ttl = slot_ttl_seconds
        self._slot_ttl_ms = max(1, round(slot_ttl_seconds * 1000))
        self.local = LocalLimits(rpm=rpm, concurrent=concurrent, window_seconds=window_seconds, replicas=replicas)
        self._pending_releases: set[asyncio.Task[None]] = set()
        # Sent once, then called by SHA (EVALSHA; reloaded if Redis restarted empty).
        self._admit = Script(_ADMIT)
        # A unique member per admission: this process's random prefix and a counter (no uuid4 per request).
        self._member_prefix = os.urandom(8).hex()
        self._members = itertools.count()

    def _refused(self, limit: str, retry: int) -> ApiError:
        self._metrics.rate_limited.labels(limit).inc()
        if limit == "rpm":
            return ApiError(
                429, f"Rate limit reached: {self.rpm} requests per {self.window_ms / 1000:g} s; retry in {retry} s",
                code="rate_limit_exceeded", headers={"Retry-After": str(retry)},
            )
        return ApiError(
            429, f"Too many concurrent requests: the limit is {self.concurrent} sequences (n x prompts)",
            code="concurrency_limit_exceeded", headers={"Retry-After": "1"},
        )

    def _overloaded(self, reason: str) -> ApiError:
        self._metrics.overload_rejected.labels(reason).inc()
        return ApiError(503, "Overloaded: the rate-limit check could not be made in time; retry shortly",
                        code="overloaded", headers={"Retry-After": "1"})

    def _admit_locally(self, subject: str, weight: int) -> Slot:
        if not self.fail_open:
            raise ApiError(503, "Rate limiting is unavailable; try again shortly", code="rate_limit_unavailable",
                           headers={"Retry-After": "1"})
        wait = self.local.admit(subject, weight)
        if wait == -1:
            raise self._refused("concurrent", 1)
        if wait > 0:
            raise self._refused("rpm", wait)
        self._metrics.rate_limit_fail_open.inc()
        return Slot(None, self, subject=subject, weight=weight, local=True)

    async def admit(self, subject: str, weight: int = 1) -> Slot:
        """Check the request window, then take `weight` concurrency slots; 429 + Retry-After if over either."""
        if self._redis.read_only:  # a standby's replica: limits are local until it is promoted
            return self._admit_locally(subject, weight)
        log_key = f"qs:rl:requests:{subject}"
        slot_key = f"qs:rl:slots:{subject}"
        member = f"{self._member_prefix}-{next(self._members)}"
        members = [f"{member}:{i}" for i in range(1, weight + 1)]
        args: list[int | str] = [self.rpm, self.window_ms, self.concurrent, self._slot_ttl_ms, member, weight]
        try:
            verdict, retry = await self._redis.run(
                "ratelimit", lambda r: self._admit(r, [log_key, slot_key], args),
            )
        except RedisLate as err:  # unanswered while our own loop lagged: overload, not a reason to go local
            self._release_in_background(slot_key, members)
            raise self._overloaded("loop_lag") from err
        except RedisNoAnswer:
            # Sent but unanswered (a timeout): the script may still run on the server, so give back the slots
            # it may have taken, or they would block this caller until their deadline (total timeout + ~6 s).
            self._release_in_background(slot_key, members)
            return self._admit_locally(subject, weight)
        except RedisBusy as err:  # our pool, not Redis: overload is refused, never decided locally
            raise self._overloaded("redis_pool") from err
        except RedisUnavailable:  # not sent (breaker open) or refused by the server: nothing was taken
            return self._admit_locally(subject, weight)
        if verdict == 0:
            raise self._refused("rpm", max(int(retry), 1))
        if verdict == -1:
            raise self._refused("concurrent", 1)
        return Slot(slot_key, self, members=members, subject=subject, weight=weight)

    async def release(self, key: str, members: list[str]) -> None:
        try:
            await self._release_once(key, members)
        except RedisUnavailable:
            # A slot not given back blocks its owner until its deadline: keep trying in the background.
            self._release_in_background(key, members)

    def _release_in_background(self, key: str, members: list[str]) -> None:
        task = asyncio.create_task(self._release_later(key, members))
        self._pending_releases.add(task)
        task.add_done_callback(self._pending_releases.discard)

    async def _release_once(self, key: str, members: list[str]) -> None:
        await self._redis.run("ratelimit", lambda r: r.zrem(key, *members))

    async def _release_later(self, key: str, members: list[str]) -> None:
        """Retry a failed release (Redis slow or briefly down) with backoff until the slots' deadline."""
        deadline = time.monotonic() + self._slot_ttl
        delay = 0.1
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)  # backoff between attempts
            try:
                await self._release_once(key, members)
                return
            except RedisUnavailable:
                delay = min(delay * 2, 2.0)
        log.warning("could not release a concurrency slot; it expires at its deadline", extra={"key": key})
