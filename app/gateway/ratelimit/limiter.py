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

# One round trip per admission. KEYS: the minute's request counter, the concurrency counter.
# ARGV: rpm limit, concurrency limit, concurrency-key TTL. Returns {0, ttl} when over the per-minute limit,
# {-1, 1} when over the concurrency limit (its INCR undone), {1, 0} when admitted.
_ADMIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], 61) end
if n > tonumber(ARGV[1]) then return {0, redis.call('TTL', KEYS[1])} end
local c = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if c > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[2])
  return {-1, 1}
end
return {1, 0}
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
        # Sent once, then called by SHA (EVALSHA; redis-py reloads it if Redis restarted empty).
        self._admit = redis.client.register_script(_ADMIT)
        self._release = redis.client.register_script(_RELEASE)

    def _unavailable(self) -> None:
        if not self.fail_open:
            raise ApiError(503, "Rate limiting is unavailable; try again shortly", code="rate_limit_unavailable",
                           headers={"Retry-After": "1"})
        self._metrics.rate_limit_fail_open.inc()

    async def admit(self, subject: str) -> Slot:
        """Count the request in this minute's window, then take a concurrency slot; 429 + Retry-After if over."""
        rpm_key = f"qs:rl:rpm:{subject}:{int(time.time() // 60)}"
        slot_key = f"qs:rl:concurrent:{subject}"
        try:
            verdict, retry = await self._redis.run(
                "ratelimit",
                lambda r: self._admit(keys=[rpm_key, slot_key], args=[self.rpm, self.concurrent, self._slot_ttl],
                                      client=r),
            )
        except RedisUnavailable:
            self._unavailable()
            return Slot(None, self)
        if verdict == 0:
            self._metrics.rate_limited.labels("rpm").inc()
            retry = max(int(retry), 1)
            raise ApiError(
                429, f"Rate limit reached: {self.rpm} requests per minute; retry in {retry} s",
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
            await self._redis.run("ratelimit", lambda r: self._release(keys=[key], client=r))
        except RedisUnavailable:
            log.warning("could not release a concurrency slot; it expires with its key", extra={"key": key})
