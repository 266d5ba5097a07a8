"""Everything a request handler needs, built once in the lifespan and reached through FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import aiohttp
from fastapi import Depends, Request

from app.gateway.admission import Admission
from app.gateway.auth.authenticate import Authenticator
from app.gateway.auth.identity import Identity
from app.gateway.backends.pool import BackendPool
from app.gateway.metrics import Metrics
from app.gateway.proxy import Proxy
from app.gateway.ratelimit.limiter import RateLimiter
from app.gateway.redis_client import RedisGuard
from app.gateway.sessions.store import SessionStore
from app.gateway.settings import GatewaySettings


@dataclass
class GatewayContext:
    settings: GatewaySettings
    metrics: Metrics
    client: aiohttp.ClientSession
    pool: BackendPool
    proxy: Proxy
    redis: RedisGuard  # sessions
    limits_redis: RedisGuard  # rate limits: a pool and breaker of their own
    limiter: RateLimiter
    sessions: SessionStore
    auth: Authenticator
    admission: Admission
    draining: bool = False


async def get_context(request: Request) -> GatewayContext:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request
    ctx: GatewayContext = request.app.state.ctx
    return ctx


Ctx = Annotated[GatewayContext, Depends(get_context)]


async def get_identity(request: Request, ctx: Ctx) -> Identity:
    return await ctx.auth.authenticate(request.headers.get("authorization"))


Caller = Annotated[Identity, Depends(get_identity)]


async def context_and_caller(request: Request) -> tuple[GatewayContext, Identity]:
    """What `Ctx` and `Caller` give, without FastAPI's dependency solving (for the generation routes, where
    it was a tenth of the CPU per request); the routes' OpenAPI document is the same."""
    ctx: GatewayContext = request.app.state.ctx
    return ctx, await ctx.auth.authenticate(request.headers.get("authorization"))
