"""SIGTERM: readiness goes false first, the in-flight stream finishes, then the process exits cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx

from tests.gateway.conftest import Fleet, StartGateway, auth, chat_body
from tests.waiting import wait_until_async


async def test_graceful_shutdown_drains(start_gw: StartGateway, fleet: Fleet) -> None:
    # The paced backend takes several seconds for 400 tokens, longer than the 3 s drain: the stream is in
    # flight through the whole shutdown sequence (readiness false, listener closed, in-flight finished).
    paced = fleet.paced()
    gw = start_gw(backends=f"127.0.0.1:{paced.port}", shutdown_drain_seconds="3", shutdown_grace_seconds="60")
    body = chat_body("a long goodbye", max_tokens=400, ignore_eos=True, stream=True,
                     stream_options={"include_usage": True})
    async with gw.client() as http, httpx.AsyncClient(base_url=gw.url) as probe:
        async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body) as resp:
            assert resp.status_code == 200
            chunks = resp.aiter_text()
            received = await anext(chunks)
            assert "[DONE]" not in received  # precondition: the answer is still being generated
            os.kill(gw.handle.pid, signal.SIGTERM)

            async def not_ready() -> bool:
                return (await probe.get("/readyz")).status_code == 503

            await wait_until_async(not_ready, "readiness turns false on SIGTERM", within=10)
            ready = await probe.get("/readyz")
            assert ready.json()["draining"] is True
            assert (await probe.get("/healthz")).status_code == 200  # alive while draining
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
