"""SIGTERM: readiness goes false first, the in-flight stream finishes, then the process exits cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx

from tests.gateway.conftest import Fleet, StartGateway, auth, chat_body, vllm_metric
from tests.waiting import wait_until_async


async def test_graceful_shutdown_drains(start_gw: StartGateway, fleet: Fleet) -> None:
    # The drain is far longer than the test: its end is the second SIGTERM, sent when the checks are done,
    # so nothing here races the drain timer. The paced backend's 400 tokens take several seconds, so the
    # stream is in flight through the whole sequence (readiness false, listener closed, in-flight finished).
    paced = fleet.paced()
    gw = start_gw(backends=f"127.0.0.1:{paced.port}", shutdown_drain_seconds="600", shutdown_grace_seconds="60")
    body = chat_body("a long goodbye", max_tokens=400, ignore_eos=True, stream=True,
                     stream_options={"include_usage": True})
    async with gw.client() as http, httpx.AsyncClient(base_url=gw.url) as probe:
        async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body) as resp:
            assert resp.status_code == 200
            chunks = resp.aiter_text()
            received = await anext(chunks)
            assert "[DONE]" not in received  # precondition: the answer is still being generated
            os.kill(gw.handle.pid, signal.SIGTERM)

            readiness: list[httpx.Response] = []

            async def not_ready() -> bool:
                readiness.append(await probe.get("/readyz"))
                return readiness[-1].status_code == 503

            await wait_until_async(not_ready, "readiness turns false on SIGTERM", within=10)
            assert readiness[-1].json()["draining"] is True
            assert (await probe.get("/healthz")).status_code == 200  # alive while draining
            os.kill(gw.handle.pid, signal.SIGTERM)  # a second signal ends the drain now

            async def refuses_new_connections() -> bool:
                try:
                    async with httpx.AsyncClient(base_url=gw.url) as fresh:
                        await fresh.get("/healthz")
                except httpx.ConnectError:
                    return True
                return False

            await wait_until_async(refuses_new_connections, "the listener closes after the drain", within=30)
            running = await asyncio.to_thread(vllm_metric, paced, "vllm:num_requests_running")
            assert running >= 1  # precondition: vLLM is still generating the answer when the listener closes
            async for text in chunks:
                received += text
    events = [e.removeprefix("data: ") for e in received.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    assert not any('"error"' in e for e in events)
    usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 400  # the whole answer, not a cut
    popen = gw.handle.process.popen
    assert popen is not None
    assert await asyncio.to_thread(popen.wait, 60) == 0


async def test_the_drain_ends_by_itself(start_gw: StartGateway) -> None:
    # Kubernetes sends one SIGTERM: after the drain the server must stop on its own, not wait for SIGKILL.
    gw = start_gw(shutdown_drain_seconds="1", shutdown_grace_seconds="5")
    os.kill(gw.handle.pid, signal.SIGTERM)
    popen = gw.handle.process.popen
    assert popen is not None
    assert await asyncio.to_thread(popen.wait, 30) == 0
