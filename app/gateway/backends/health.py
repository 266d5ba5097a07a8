"""Active health probes and DNS discovery, as supervised background tasks owned by the app's lifespan.

A probe reads the backend's answer defensively (a backend is not trusted to send what vLLM sends), and
a loop that raises anyway is logged, counted (gateway_background_errors_total) and restarted: backend
health never freezes silently.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from app.gateway.backends.pool import Backend, BackendPool
from app.gateway.logging import log
from app.gateway.metrics import Metrics


def supervise(
    name: str, loop: Callable[[], Coroutine[Any, Any, None]], metrics: Metrics, *, backoff: float = 1.0
) -> asyncio.Task[None]:
    """Run `loop()` as a task; if it raises, log, count, wait `backoff` and start it again (until cancelled)."""

    async def supervisor() -> None:
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the loop must go on, whatever a backend sent
                metrics.background_errors.labels(name).inc()
                log.exception("background task failed; restarting it", extra={"task": name, "error": repr(err)})
            await asyncio.sleep(backoff)

    return asyncio.create_task(supervisor(), name=name)


def served_models(document: Any) -> list[dict[str, Any]]:
    """The model entries of a `/v1/models` answer that have a string id; [] for anything else."""
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        return []
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]


async def probe(client: aiohttp.ClientSession, pool: BackendPool, backend: Backend, probe_timeout: float) -> None:
    """vLLM answers `/v1/models` only once the model is loaded: that is readiness, and it lists the models."""
    try:
        async with client.get(
            f"{backend.base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=probe_timeout)
        ) as resp:
            models = served_models(await resp.json(content_type=None)) if resp.status == 200 else []
            ok = bool(models)  # a 200 that lists no model is not vLLM ready to serve
    except TimeoutError:  # (a connect timeout too): maybe the backend, maybe our own loop running late
        pool.mark_probe(backend, False, [], timed_out=True)
        return
    except (aiohttp.ClientError, ValueError):
        ok, models = False, []
    pool.mark_probe(backend, ok, models)


async def probe_all(client: aiohttp.ClientSession, pool: BackendPool, probe_timeout: float) -> None:
    await asyncio.gather(*(probe(client, pool, b, probe_timeout) for b in pool.all()))


async def probe_loop(
    client: aiohttp.ClientSession, pool: BackendPool, *, interval: float, probe_timeout: float
) -> None:
    while True:
        await asyncio.sleep(interval)
        await probe_all(client, pool, probe_timeout)


async def resolve(host_port: str) -> list[str]:
    """All addresses behind a name (a headless Service returns one per ready pod), as host:port."""
    host, _, port = host_port.rpartition(":")
    infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    return sorted({f"{info[4][0]}:{port}" for info in infos})


async def discovery_loop(
    client: aiohttp.ClientSession, pool: BackendPool, host_port: str, *, interval: float, probe_timeout: float
) -> None:
    while True:
        await refresh_from_dns(client, pool, host_port, probe_timeout=probe_timeout)
        await asyncio.sleep(interval)


async def refresh_from_dns(
    client: aiohttp.ClientSession, pool: BackendPool, host_port: str, *, probe_timeout: float
) -> None:
    try:
        addresses = await resolve(host_port)
    except OSError as err:
        # Keep the last known set: a DNS blip must not empty the pool.
        log.warning("backend DNS lookup failed", extra={"name": host_port, "error": str(err)})
        return
    known = {b.address for b in pool.all()}
    pool.set_addresses(addresses)
    new = [b for b in pool.all() if b.address not in known]
    await asyncio.gather(*(probe(client, pool, b, probe_timeout) for b in new))
