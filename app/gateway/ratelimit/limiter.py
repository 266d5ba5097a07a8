"""Per-identity limits kept in Redis, so every gateway replica enforces one shared limit.

- Requests per window (a minute by default): a sliding window — each admitted request is a member of a
  sorted set scored by Redis's own clock, members older than the window are pruned at admission — so
  there is no calendar boundary at which a caller gets twice the limit.
- Concurrent requests (streams included): a counter INCRemented on admission (refused and undone in the
  same script when over the limit) and DECRemented when the response ends. The key carries a TTL longer
  than any request, so a gateway that dies mid-request cannot leak a slot forever.

When Redis is unavailable the limits fail open (default; counted in a metric) or refuse with 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from app.gateway.errors import ApiError
from app.gateway.logging import log
from app.gateway.metrics import Metrics
from app.gateway.redis_client import RedisGuard, RedisUnavailable

# One round trip per admission. KEYS: the identity's request log (sorted set), its concurrency counter.
# ARGV: request limit, window (ms), concurrency limit, concurrency-key TTL (s), this request's member.
# Returns {0, seconds until a request leaves the window} when over the request limit, {-1, 1} when over
# the concurrency limit (its INCR undone), {1, 0} when admitted (and logged). Refused requests are not
# logged, so retrying while limited does not extend the wait. Redis's clock: one time for all replicas.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.ceil((tonumber(oldest[2]) + window - now) / 1000)}
end
local c = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if c > tonumber(ARGV[3]) then
  redis.call('DECR', KEYS[2])
  return {-1, 1}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
"""

# Never below zero (a slot released after its key expired).
_RELEASE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
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
    """A held concurrency slot; `release()` is idempotent."""

    key: str | None
    limiter: RateLimiter
    released: bool = False

    async def release(self) -> None:
        if self.released or self.key is None:
            return
        self.released = True
        await self.limiter.release(self.key)


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
        slot_ttl_seconds: int,
    ):
        self._redis, self._metrics = redis, metrics
        self.rpm, self.concurrent, self.fail_open = rpm, concurrent, fail_open
        self.window_ms = max(1, round(window_seconds * 1000))
        self._slot_ttl = slot_ttl_seconds
        self._pending_releases: set[asyncio.Task[None]] = set()
        # Sent once, then called by SHA (EVALSHA; reloaded if Redis restarted empty).
        self._admit = Script(_ADMIT)
        self._release = Script(_RELEASE)
        # A unique member per admission: this process's random prefix and a counter (no uuid4 per request).
        self._member_prefix = os.urandom(8).hex()
        self._members = itertools.count()

    def _unavailable(self) -> None:
        if not self.fail_open:
            raise ApiError(503, "Rate limiting is unavailable; try again shortly", code="rate_limit_unavailable",
                           headers={"Retry-After": "1"})
        self._metrics.rate_limit_fail_open.inc()

    async def admit(self, subject: str) -> Slot:
        """Check the request window, then take a concurrency slot; 429 + Retry-After if over either."""
        log_key = f"qs:rl:requests:{subject}"
        slot_key = f"qs:rl:concurrent:{subject}"
        member = f"{self._member_prefix}-{next(self._members)}"
        args: list[int | str] = [self.rpm, self.window_ms, self.concurrent, self._slot_ttl, member]
        try:
            verdict, retry = await self._redis.run(
                "ratelimit", lambda r: self._admit(r, [log_key, slot_key], args),
            )
        except RedisUnavailable:
            self._unavailable()
            return Slot(None, self)
        if verdict == 0:
            self._metrics.rate_limited.labels("rpm").inc()
            retry = max(int(retry), 1)
            raise ApiError(
                429, f"Rate limit reached: {self.rpm} requests per {self.window_ms / 1000:g} s; retry in {retry} s",
                code="rate_limit_exceeded", headers={"Retry-After": str(retry)},
            )
        if verdict == -1:
            self._metrics.rate_limited.labels("concurrent").inc()
            raise ApiError(
                429, f"Too many concurrent requests: the limit is {self.concurrent}",
                code="concurrency_limit_exceeded", headers={"Retry-After": "1"},
            )
        return Slot(slot_key, self)

    async def release(self, key: str) -> None:
        try:
            await self._release_once(key)
        except RedisUnavailable:
            # A slot not given back blocks its owner until the key expires: keep trying in the background.
            task = asyncio.create_task(self._release_later(key))
            self._pending_releases.add(task)
            task.add_done_callback(self._pending_releases.discard)

    async def _release_once(self, key: str) -> None:
        await self._redis.run("ratelimit", lambda r: self._release(r, [key], []))

    async def _release_later(self, key: str) -> None:
        """Retry a failed release (Redis slow or briefly down) with backoff until the key would expire."""
        deadline = time.monotonic() + self._slot_ttl
        delay = 0.1
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)  # backoff between attempts
            try:
                await self._release_once(key)
                return
            except RedisUnavailable:
                delay = min(delay * 2, 2.0)
        log.warning("could not release a concurrency slot; it expires with its key", extra={"key": key})
