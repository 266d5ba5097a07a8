"""Probes, metrics and the model list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.gateway.api.context import Caller, Ctx, GatewayContext

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the event loop answers. Never depends on backends or Redis."""
    return {"status": "ok"}


def is_ready(ctx: GatewayContext, *, overload_counts: bool = False) -> bool:
    """Ready = not draining and at least one healthy backend (and, for the kubelet's /readyz, not overloaded:
    new work goes to other replicas until this one has room again). Redis is reported, not required (limits
    go local, sessions stateless)."""
    serving = bool(ctx.pool.healthy()) and not ctx.draining
    ready = serving and ctx.admission.overload() is None
    ctx.metrics.ready.set(1 if ready else 0)  # the kubelet's verdict, whichever probe asked
    return ready if overload_counts else serving


@router.get("/readyz")
async def readyz(ctx: Ctx) -> JSONResponse:
    """The detailed readiness, for the kubelet and operators on the gateway's own port (never public: the
    edge's /healthz answers with `/readyz/status`)."""
    role = await ctx.redis.role()  # doubles as the ping
    redis_up = role is not None
    ready = is_ready(ctx, overload_counts=True)
    read_only = ctx.redis.read_only or role == "replica"  # a standby's replica: history read, turns not stored
    # The limits' Redis is asked its role too ("a write was refused lately" alone goes stale between requests);
    # unless it is the sessions' server, whose role is already known.
    limits_role = await ctx.limits_redis.role() if ctx.settings.rate_limit_redis_url else role
    limits_local = ctx.limits_redis.read_only or ctx.limits_redis.open or limits_role == "replica"
    body = {
        "ready": ready,
        "draining": ctx.draining,
        "backends": {b.address: {"healthy": b.healthy, "outstanding": b.outstanding} for b in ctx.pool.all()},
        "redis": ("read-only" if read_only else "up") if redis_up else "down",
        "redis_role": role,
        "redis_error": None if redis_up else ctx.redis.last_error,
        "rate_limits": "local" if limits_local else "shared",
        "overload": ctx.admission.state(),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/readyz/status")
async def readyz_status(ctx: Ctx) -> Response:
    """Readiness as a status code only (200/503, empty body): what the public edge exposes as /healthz, which
    DNS failover watches. Overload is left out on purpose: a traffic peak must shed load, not fail the site
    over."""
    return Response(status_code=200 if is_ready(ctx) else 503)


@router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    return Response(ctx.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(
    ctx: Ctx, identity: Caller
) -> dict[str, Any]:
    return {"object": "list", "data": ctx.pool.models()}
