"""Probes, metrics and the model list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.gateway.api.context import Caller, Ctx

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the event loop answers. Never depends on backends or Redis."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: Ctx) -> JSONResponse:
    """Ready = not draining and at least one healthy backend. Redis is reported, not required (fail open)."""
    healthy = ctx.pool.healthy()
    redis_up = await ctx.redis.ping()
    ready = bool(healthy) and not ctx.draining
    ctx.metrics.ready.set(1 if ready else 0)
    body = {
        "ready": ready,
        "draining": ctx.draining,
        "backends": {b.address: {"healthy": b.healthy, "outstanding": b.outstanding} for b in ctx.pool.all()},
        "redis": "up" if redis_up else "down",
        "redis_error": None if redis_up else ctx.redis.last_error,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(
    ctx: Ctx, identity: Caller
) -> dict[str, Any]:
    return {"object": "list", "data": ctx.pool.models()}
