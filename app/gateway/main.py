"""The app factory. `create_app(settings)` for tests and `python -m app.gateway`; `app` for plain uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.gateway.admission import Admission, AdmissionMiddleware, LoopLagMonitor
from app.gateway.api import generation, ops, sessions, test_hooks
from app.gateway.api.context import GatewayContext
from app.gateway.auth.authenticate import Authenticator
from app.gateway.auth.oidc import OidcVerifier
from app.gateway.backends import health
from app.gateway.backends.pool import BackendPool
from app.gateway.backends.routing import make_router
from app.gateway.errors import install_error_handlers
from app.gateway.logging import configure_logging, log
from app.gateway.metrics import Metrics
from app.gateway.middleware import RequestContextMiddleware
from app.gateway.proxy import Proxy
from app.gateway.ratelimit.limiter import RateLimiter
from app.gateway.redis_client import RedisGuard
from app.gateway.schemas import install_request_schemas
from app.gateway.sessions.store import SessionStore
from app.gateway.settings import GatewaySettings, load_settings

UPSTREAM_MAX_CONNECTIONS = 4096  # all backends together; waiting for one counts against the connect timeout
# Below vLLM's own idle keep-alive (uvicorn's, VLLM_HTTP_TIMEOUT_KEEP_ALIVE: 5 s): a connection the backend is
# closing at the moment we reuse it fails the request ("dropped"), so we give idle connections up first.
UPSTREAM_KEEPALIVE_SECONDS = 4.0


def http_client(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The one HTTP client for every upstream call (vLLM, probes, JWKS): aiohttp, whose C HTTP parser and
    connection pool keep their cost flat as concurrency grows; keep-alive pool sized for many streams."""
    connector = aiohttp.TCPConnector(
        limit=UPSTREAM_MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS,
        ttl_dns_cache=None, use_dns_cache=False,  # DNS discovery resolves itself; a Service name may move
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout,
                                      sock_connect=settings.connect_timeout),
        auto_decompress=False,  # vLLM does not compress; bytes are relayed as they come
        skip_auto_headers=("User-Agent",),
        raise_for_status=False,
    )


def slot_lifetime(settings: GatewaySettings) -> float:
    """How long a concurrency slot can be held: the longest a request lives (total timeout, then the session
    write), plus a margin. A slot leaked by a killed gateway is free again after this."""
    return settings.total_timeout + settings.redis_timeout_seconds * 2 + 5


def build_admission(settings: GatewaySettings, metrics: Metrics) -> Admission:
    return Admission(metrics, LoopLagMonitor(metrics), max_in_flight=settings.in_flight_limit,
                     max_lag_seconds=settings.overload_loop_lag_seconds,
                     retry_after_seconds=settings.overload_retry_after_seconds)


def build_context(settings: GatewaySettings, metrics: Metrics, client: aiohttp.ClientSession,
                  admission: Admission) -> GatewayContext:
    # Our own loop's lag withholds verdicts: a timeout while we ran late is not the backend's failure.
    pool = BackendPool(metrics, eject_after_failures=settings.eject_after_failures, lagging=admission.lagging)
    pool.set_addresses(settings.backend_list)
    password = settings.redis_password.get_secret_value() if settings.redis_password else None

    def guard(url: str, name: str) -> RedisGuard:
        return RedisGuard.from_url(
            url, password, metrics, name=name,
            timeout=settings.redis_timeout_seconds, retry_seconds=settings.redis_retry_seconds,
            window_seconds=settings.redis_breaker_window_seconds,
            min_failures=settings.redis_breaker_min_failures,
            failure_ratio=settings.redis_breaker_failure_ratio,
            pool_size=settings.redis_pool_size, pool_wait_seconds=settings.redis_pool_wait_seconds,
            # A deadline missed while our own work made us late is not Redis's fault (and not a reason to
            # decide limits locally: the limiter refuses as overload).
            lagging=admission.lagging_with_work,
        )

    redis = guard(settings.redis_url, "sessions")
    # The limits' own pool and breaker (and instance, if configured): sessions' failures never switch them off.
    limits_redis = guard(settings.rate_limit_redis_url or settings.redis_url, "ratelimit")
    oidc = None
    if settings.oidc_enabled:
        oidc = OidcVerifier(
            client,
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            cache_seconds=settings.oidc_jwks_cache_seconds,
            min_refresh_seconds=settings.oidc_jwks_min_refresh_seconds,
        )
    return GatewayContext(
        settings=settings,
        metrics=metrics,
        client=client,
        pool=pool,
        proxy=Proxy(
            client, pool, metrics,
            router=make_router(pool, metrics, settings.routing),
            connect_timeout=settings.connect_timeout,
            first_token_timeout=settings.first_token_timeout,
            idle_timeout=settings.idle_timeout,
            total_timeout=settings.total_timeout,
            retry_attempts=settings.retry_attempts,
        ),
        redis=redis,
        limits_redis=limits_redis,
        limiter=RateLimiter(
            limits_redis, metrics,
            rpm=settings.rate_limit_rpm,
            window_seconds=settings.rate_limit_window_seconds,
            concurrent=settings.rate_limit_concurrent,
            fail_open=settings.rate_limit_fail_open,
            slot_ttl_seconds=slot_lifetime(settings),
            replicas=settings.local_limit_divisor,  # every process of every replica, on its own
        ),
        sessions=SessionStore(redis, ttl_seconds=settings.session_ttl_seconds,
                              replica_wait_ms=settings.session_replica_wait_ms,
                              max_sessions_per_owner=settings.session_max_per_identity,
                              max_bytes_per_owner=settings.session_max_bytes_per_identity),
        auth=Authenticator(
            enabled=settings.auth_enabled, key_hashes=settings.key_hashes, oidc=oidc, metrics=metrics
        ),
        admission=admission,
    )


async def start_background(settings: GatewaySettings, ctx: GatewayContext) -> list[asyncio.Task[None]]:
    """First probes (and DNS discovery), then their loops as tasks for the lifespan to cancel."""
    if not settings.auth_enabled:
        log.warning("AUTH IS DISABLED: every caller is 'anonymous'. For local development only.")
    tasks: list[asyncio.Task[None]] = [
        health.supervise("loop lag monitor", ctx.admission.monitor.run, ctx.metrics),
    ]
    if settings.backends_dns:
        await health.refresh_from_dns(
            ctx.client, ctx.pool, settings.backends_dns, probe_timeout=settings.health_timeout_seconds
        )
        tasks.append(health.supervise("dns discovery", lambda: health.discovery_loop(
            ctx.client, ctx.pool, settings.backends_dns,
            interval=settings.dns_interval_seconds, probe_timeout=settings.health_timeout_seconds,
        ), ctx.metrics))
    await health.probe_all(ctx.client, ctx.pool, settings.health_timeout_seconds)
    tasks.append(health.supervise("health probes", lambda: health.probe_loop(
        ctx.client, ctx.pool,
        interval=settings.health_interval_seconds, probe_timeout=settings.health_timeout_seconds,
    ), ctx.metrics))
    log.info("gateway started", extra={
        "backends": [b.address for b in ctx.pool.all()],
        "healthy": [b.address for b in ctx.pool.healthy()],
    })
    return tasks


def create_app(settings: GatewaySettings) -> FastAPI:
    metrics = Metrics()
    admission = build_admission(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with http_client(settings) as client:
            ctx = build_context(settings, metrics, client, admission)
            app.state.ctx = ctx
            tasks = await start_background(settings, ctx)
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await ctx.redis.close()
                await ctx.limits_redis.close()
                log.info("gateway stopped")

    app = FastAPI(title="qwen-serving gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_request_schemas(app)
    install_error_handlers(app)
    app.include_router(generation.router)
    app.include_router(sessions.router)
    app.include_router(ops.router)
    if settings.test_hooks:
        app.include_router(test_hooks.router)
    app.add_middleware(AdmissionMiddleware, admission=admission)  # inner: added before the request context
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


class _AppFromEnvironment:
    """`uvicorn app.gateway.main:app`: settings are read when the server starts, not on import."""

    def __init__(self) -> None:
        self._app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            settings = load_settings()
            configure_logging(settings.log_level)
            self._app = create_app(settings)
        await self._app(scope, receive, send)


app = _AppFromEnvironment()
