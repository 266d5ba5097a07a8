"""One Redis connection pool for the process, behind a breaker so an outage costs one timeout, not one per call.

After a failure, calls are refused immediately (`RedisUnavailable`) for `retry_seconds`; then the next call
tries again. A read-only replica (a standby before promotion) refuses writes without opening the breaker.
Callers decide what "unavailable" means for them (limits fail open, sessions go stateless).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ReadOnlyError, RedisError

from app.gateway.logging import log
from app.gateway.metrics import Metrics

T = TypeVar("T")


class RedisUnavailable(Exception):
    pass


class RedisGuard:
    def __init__(self, client: aioredis.Redis, metrics: Metrics, *, retry_seconds: float, timeout: float | None = None):
        self.client = client
        self._timeout = timeout
        self._metrics = metrics
        self._retry_seconds = retry_seconds
        self._down_until = 0.0
        self.last_error: str | None = None

    @classmethod
    def from_url(
        cls, url: str, password: str | None, metrics: Metrics, *, timeout: float, retry_seconds: float
    ) -> RedisGuard:
        client = aioredis.Redis.from_url(
            url,
            password=password,
            # One deadline per operation in run() (asyncio.timeout), not redis-py's socket_timeout: that one
            # wraps every command's write in asyncio.wait_for, a task per command.
            socket_timeout=None,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry_on_timeout=False,
            max_connections=200,
        )
        return cls(client, metrics, retry_seconds=retry_seconds, timeout=timeout)

    @property
    def up(self) -> bool:
        return self.last_error is None

    async def run(self, operation: str, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        if time.monotonic() < self._down_until:
            self._metrics.redis_errors.labels(operation).inc()
            raise RedisUnavailable(self.last_error or "redis unavailable")
        try:
            async with asyncio.timeout(self._timeout):
                result = await call(self.client)
        except ReadOnlyError as err:
            # A standby's replica before promotion: reads (session history) work, writes are refused. Not an
            # outage, so the breaker stays closed: history keeps being read, and the first write after the
            # promotion (REPLICAOF NO ONE) succeeds at once.
            self._metrics.redis_errors.labels(operation).inc()
            raise RedisUnavailable(f"ReadOnlyError: {err}") from err
        except (RedisError, OSError) as err:  # (TimeoutError is an OSError)
            self._metrics.redis_errors.labels(operation).inc()
            self._metrics.redis_up.set(0)
            if self.last_error is None:
                log.warning("redis unavailable", extra={"operation": operation, "error": str(err)})
            self.last_error = f"{type(err).__name__}: {err}"
            self._down_until = time.monotonic() + self._retry_seconds
            raise RedisUnavailable(self.last_error) from err
        if self.last_error is not None:
            log.info("redis back", extra={"operation": operation})
        self.last_error = None
        self._metrics.redis_up.set(1)
        return result

    async def ping(self) -> bool:
        try:
            await self.run("ping", lambda r: r.ping())
        except RedisUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self.client.aclose()
