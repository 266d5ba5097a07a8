"""A Redis connection pool behind a breaker, so an outage costs a few timeouts, not one per call.

The breaker opens on an error rate, not on one slow call: when, within the last `window_seconds`, at
least `min_failures` calls failed and they are at least `failure_ratio` of that window's calls. While
open, calls are refused immediately (`RedisUnavailable`) for `retry_seconds`; then calls go through again
(the window still holds the outage's failures, so one more failure right away opens it again).
Only an outage counts: a connection error or a timeout.
A server that answers with an error (out of memory under `noeviction`, a script error) is not an outage,
and a read-only replica (a standby before promotion) refuses writes without opening the breaker; it is
remembered (`read_only`) so callers that only write can skip it until the next check.
Callers decide what "unavailable" means for them (limits go local, sessions go stateless).

The pool queues: at most `pool_size` calls hold a connection at once (redis-py's BlockingConnectionPool of
that size behind a FIFO of permits); a call waits up to `pool_wait_seconds` for one, and only then is refused
with `RedisBusy`. That is overload, not an outage: it never opens the breaker nor marks Redis down, and the
rate limiter answers it with a 503 rather than deciding locally (ratelimit/limiter.py). Redis's own deadline
(`timeout`) starts once a connection is held, so queueing is never mistaken for a slow server. And a
deadline missed while this process's own event loop lagged (`lagging`) is `RedisLate`: no answer, but not
held against Redis either (no breaker, not down).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from app.gateway.logging import log
from app.gateway.metrics import Metrics

T = TypeVar("T")


class RedisUnavailable(Exception):
    pass


class RedisReadOnly(RedisUnavailable):
    """A read-only replica refused a write (a standby before promotion)."""


class RedisNoAnswer(RedisUnavailable):
    """The call was sent but no answer came (timeout, dropped connection): it may still have been applied."""


class RedisRefused(RedisUnavailable):
    """Redis answered with an error (e.g. OOM under noeviction): it is up, but did not do it."""


class RedisBusy(RedisUnavailable):
    """No pool connection freed up within the bounded wait: this process is overloaded; Redis may be fine.
    Nothing was sent. Sessions degrade as for any unavailability; the rate limiter refuses with 503."""


class RedisLate(RedisNoAnswer):
    """No answer in time while our own event loop lagged: the deadline may have passed on our side. It may
    have been applied; it is not an outage (no breaker, not "down"). The rate limiter refuses with 503."""


class RedisGuard:
    def __init__(
        self,
        client: aioredis.Redis,
        metrics: Metrics,
        *,
        retry_seconds: float,
        timeout: float | None = None,
        window_seconds: float = 10.0,
        min_failures: int = 3,
        failure_ratio: float = 0.5,
        name: str = "redis",
        pool_size: int = 200,
        pool_wait_seconds: float = 1.0,
        lagging: Callable[[], bool] = lambda: False,
    ):
        self.client = client
        self._lagging = lagging
        self._permits = asyncio.Semaphore(pool_size)  # FIFO: waiters are served in arrival order
        self._pool_wait = pool_wait_seconds
        self._timeout = timeout
        self._metrics = metrics
        self._retry_seconds = retry_seconds
        self._window = window_seconds
        self._min_failures = min_failures
        self._ratio = failure_ratio
        self._calls: collections.deque[tuple[float, bool]] = collections.deque()  # (time, failed)
        self._failures = 0
        self._down_until = 0.0
        self._read_only_until = 0.0
        self.name = name
        self.last_error: str | None = None

    @classmethod
    def from_url(
        cls, url: str, password: str | None, metrics: Metrics, *, timeout: float, retry_seconds: float,
        window_seconds: float = 10.0, min_failures: int = 3, failure_ratio: float = 0.5, name: str = "redis",
        pool_size: int = 200, pool_wait_seconds: float = 1.0, lagging: Callable[[], bool] = lambda: False,
    ) -> RedisGuard:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            password=password,
            # One deadline per operation in run() (asyncio.timeout), not redis-py's socket_timeout: that one
            # wraps every command's write in asyncio.wait_for, a task per command.
            socket_timeout=None,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry_on_timeout=False,
            max_connections=pool_size,
            # run()'s permits already bound the calls to pool_size: this wait is only a backstop.
            timeout=pool_wait_seconds,
        )
        return cls(aioredis.Redis.from_pool(pool), metrics, retry_seconds=retry_seconds, timeout=timeout,
                   window_seconds=window_seconds, min_failures=min_failures, failure_ratio=failure_ratio, name=name,
                   pool_size=pool_size, pool_wait_seconds=pool_wait_seconds, lagging=lagging)

    @property
    def pool_full(self) -> bool:
        """Every pool connection is held by a call: the next one queues."""
        return self._permits.locked()

    @property
    def pool_waiting(self) -> int:
        """Calls queued for a connection right now."""
        waiters = getattr(self._permits, "_waiters", None)
        return len(waiters) if waiters else 0

    async def _take_permit(self, operation: str) -> None:
        if not self._permits.locked():
            await self._permits.acquire()  # free: no wait, no timer
            return
        try:
            async with asyncio.timeout(self._pool_wait):
                await self._permits.acquire()
        except TimeoutError:
            self._metrics.redis_pool_exhausted.labels(self.name).inc()
            raise RedisBusy(f"no Redis connection free within {self._pool_wait:g} s ({operation}): "
                            "this gateway is overloaded") from None

    @property
    def up(self) -> bool:
        return self.last_error is None

    @property
    def open(self) -> bool:
        """The breaker is open: calls are refused without trying."""
        return time.monotonic() < self._down_until

    @property
    def read_only(self) -> bool:
        """A write was refused as READONLY within the last `retry_seconds` (a standby's replica)."""
        return time.monotonic() < self._read_only_until

    def _record(self, now: float, failed: bool) -> None:
        calls = self._calls
        calls.append((now, failed))
        self._failures += failed
        horizon = now - self._window
        while calls and calls[0][0] < horizon:
            self._failures -= calls.popleft()[1]
        if len(calls) > 10_000:  # bounded under any load: keep the newest half's counts exact enough
            while len(calls) > 5_000:
                self._failures -= calls.popleft()[1]

    def _should_open(self) -> bool:
        return self._failures >= self._min_failures and self._failures >= self._ratio * len(self._calls)

    async def run(self, operation: str, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        if time.monotonic() < self._down_until:
            self._metrics.redis_errors.labels(operation).inc()
            raise RedisUnavailable(self.last_error or "redis unavailable")
        await self._take_permit(operation)
        try:
            return await self._call(operation, call)
        finally:
            self._permits.release()

    async def _call(self, operation: str, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                result = await call(self.client)
        except ReadOnlyError as err:
            # A standby's replica before promotion: reads (session history) work, writes are refused. Not an
            # outage, so the breaker stays closed: history keeps being read, and the first write after the
            # promotion (REPLICAOF NO ONE) succeeds at once.
            self._metrics.redis_errors.labels(operation).inc()
            self._read_only_until = time.monotonic() + self._retry_seconds
            self._record(time.monotonic(), False)
            raise RedisReadOnly(f"ReadOnlyError: {err}") from err
        except ResponseError as err:  # the server answered: up, but refused (OOM, a script error)
            self._metrics.redis_errors.labels(operation).inc()
            self._record(time.monotonic(), False)
            raise RedisRefused(f"{type(err).__name__}: {err}") from err
        except TimeoutError as err:
            if not self._lagging():
                raise self._outage(operation, err) from err
            self._metrics.redis_errors.labels(operation).inc()
            raise RedisLate(f"no answer within {self._timeout} s while this gateway's loop lagged "
                            f"({operation})") from err
        except (RedisError, OSError) as err:
            raise self._outage(operation, err) from err
        self._record(time.monotonic(), False)
        if self.last_error is not None:
            log.info("redis back", extra={"redis": self.name, "operation": operation})
        self.last_error = None
        self._metrics.redis_up.set(1)
        return result

    def _outage(self, operation: str, err: BaseException) -> RedisNoAnswer:
        """Count a failure toward the breaker (opening it past the rate); the error to raise."""
        now = time.monotonic()
        self._metrics.redis_errors.labels(operation).inc()
        self._metrics.redis_up.set(0)
        if self.last_error is None:
            log.warning("redis call failed", extra={"redis": self.name, "operation": operation, "error": str(err)})
        self.last_error = f"{type(err).__name__}: {err}"
        self._record(now, True)
        if self._should_open() and now >= self._down_until:
            log.warning("redis breaker open", extra={"redis": self.name, "failures": self._failures,
                                                     "calls": len(self._calls)})
            self._down_until = now + self._retry_seconds
        return RedisNoAnswer(self.last_error)

    async def ping(self) -> bool:
        try:
            await self.run("ping", lambda r: r.ping())
        except RedisUnavailable:
            return False
        return True

    async def role(self) -> str | None:
        """What the server is (`ROLE`): "primary", or "replica" (a standby's Redis before promotion, read-only
        even before any write was refused); None when it does not answer."""
        try:
            reply = await self.run("role", lambda r: r.execute_command("ROLE"))
        except RedisUnavailable:
            return None
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return "primary" if kind == "master" else "replica"

    async def close(self) -> None:
        await self.client.aclose()
