"""Per-identity limits kept in Redis, so every gateway replica enforces one shared limit.

- Requests per minute: a fixed one-minute window, INCR + EXPIRE in one Lua script (atomic).
- Concurrent requests (streams included): a counter INCRemented on admission (refused and undone in the
  same script when over the limit) and DECRemented when the response ends. The key carries a TTL longer
  than any request, so a gateway that dies mid-request cannot leak a slot forever.

When Redis is unavailable the limits fail open (default; counted in a metric) or refuse with 503.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.gateway.errors import ApiError
from app.gateway.logging import log
from app.gateway.metrics import Metrics
from app.gateway.redis_client import RedisGuard, RedisUnavailable

# KEYS[1] counter, ARGV[1] limit, ARGV[2] ttl seconds, ARGV[3] '1' for a concurrency slot (undo when refused,
# refresh the TTL on every admission). Returns {allowed, count, ttl}.
_ADMIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or ARGV[3] == '1' or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  if ARGV[3] == '1' then redis.call('DECR', KEYS[1]) end
  return {0, n, redis.call('TTL', KEYS[1])}
end
return {1, n, redis.call('TTL', KEYS[1])}
"""

# Never below zero (a slot released after its key expired).
_RELEASE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


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
        concurrent: int,
        fail_open: bool,
        slot_ttl_seconds: int,
    ):
        self._redis, self._metrics = redis, metrics
        self.rpm, self.concurrent, self.fail_open = rpm, concurrent, fail_open
        self._slot_ttl = slot_ttl_seconds

    def _unavailable(self) -> None:
        if not self.fail_open:
            raise ApiError(503, "Rate limiting is unavailable; try again shortly", code="rate_limit_unavailable",
                           headers={"Retry-After": "1"})
        self._metrics.rate_limit_fail_open.inc()

    async def admit(self, subject: str) -> Slot:
        """Check the per-minute limit, then take a concurrency slot; 429 with Retry-After when over."""
        window = int(time.time() // 60)
        rpm_key = f"qs:rl:rpm:{subject}:{window}"
        try:
            allowed, _count, ttl = await self._redis.run(
                "ratelimit", lambda r: r.eval(_ADMIT, 1, rpm_key, self.rpm, 61, "0")
            )
        except RedisUnavailable:
            self._unavailable()
            return Slot(None, self)
        if not allowed:
            self._metrics.rate_limited.labels("rpm").inc()
            retry = max(int(ttl), 1)
            raise ApiError(
                429, f"Rate limit reached: {self.rpm} requests per minute; retry in {retry} s",
                code="rate_limit_exceeded", headers={"Retry-After": str(retry)},
            )
        slot_key = f"qs:rl:concurrent:{subject}"
        try:
            allowed, _count, _ttl = await self._redis.run(
                "ratelimit",
                lambda r: r.eval(_ADMIT, 1, slot_key, self.concurrent, self._slot_ttl, "1"),
            )
        except RedisUnavailable:
            self._unavailable()
            return Slot(None, self)
        if not allowed:
            self._metrics.rate_limited.labels("concurrent").inc()
            raise ApiError(
                429, f"Too many concurrent requests: the limit is {self.concurrent}",
                code="concurrency_limit_exceeded", headers={"Retry-After": "1"},
            )
        return Slot(slot_key, self)

    async def release(self, key: str) -> None:
        try:
            await self._redis.run("ratelimit", lambda r: r.eval(_RELEASE, 1, key))
        except RedisUnavailable:
            log.warning("could not release a concurrency slot; it expires with its key", extra={"key": key})
