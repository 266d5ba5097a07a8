"""Test-only routes, mounted only when GATEWAY_TEST_HOOKS=true (never rendered so from a stack)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import aiohttp
from fastapi import APIRouter, Query, Request

from app.gateway.api.context import GatewayContext
from app.gateway.backends import health

router = APIRouter()


@router.post("/_test/stall")
async def stall(request: Request, seconds: float = Query(gt=0, le=30)) -> dict[str, float]:
    """Probe every backend, and block the event loop for `seconds` the moment each probe's request has gone
    out, as a CPU-bound overload would: nothing runs meanwhile, so the probe's deadline passes though the
    backend answered at once. The probe is the real one (health.probe, the pool's verdict), through a client
    of its own that carries the stall."""
    ctx: GatewayContext = request.app.state.ctx

    async def block(_: aiohttp.ClientSession, __: SimpleNamespace, ___: Any) -> None:
        time.sleep(seconds)  # noqa: ASYNC251 - deliberately blocking: this is the stall being simulated

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(block)
    async with aiohttp.ClientSession(trace_configs=[trace]) as client:
        for backend in ctx.pool.all():
            await health.probe(client, ctx.pool, backend, ctx.settings.health_timeout_seconds)
    return {"stalled_s": seconds}
