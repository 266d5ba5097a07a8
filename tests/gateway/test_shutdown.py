"""SIGTERM: readiness goes false first, the in-flight stream finishes, then the process exits cleanly; a request
still unanswered when the grace ends gets a 503 in OpenAI's shape, not uvicorn's plain-text 500."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import httpx

from localstack.services import RedisHandle
from tests.gateway.conftest import (
    MODEL,
    Fleet,
    ModelListing,
    StartGateway,
    assert_whole_stream,
    auth,
    chat_body,
    gateway_process,
    refuses_new_connections,
    serve,
    vllm_metric,
)
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
            # While draining, answers close their connection: the edge's kept-alive one ends with an answer.
            assert readiness[-1].headers["connection"] == "close"
            assert (await probe.get("/healthz")).status_code == 200  # alive while draining
            os.kill(gw.handle.pid, signal.SIGTERM)  # a second signal ends the drain now

            await wait_until_async(lambda: refuses_new_connections(gw.url), "the listener closes after the drain",
                                   within=30)
            running = await asyncio.to_thread(vllm_metric, paced, "vllm:num_requests_running")
            assert running >= 1  # precondition: vLLM is still generating the answer when the listener closes
            async for text in chunks:
                received += text
    assert_whole_stream(received, 400)
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



class HeldBackend(ModelListing):
    """A healthy backend (it lists the model) that holds every generation until `release` is set."""

    received = threading.Event()
    release = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.set()
        type(self).release.wait(60)


async def test_a_request_unanswered_when_the_grace_ends_gets_a_503_in_openai_shape(
    build_dir: Path, redis_server: RedisHandle
) -> None:
    # The backend holds the answer: when the 1 s grace ends the request is in flight, and uvicorn cancels it.
    backend = serve(HeldBackend)
    env = {"GATEWAY_BACKENDS": f"127.0.0.1:{backend.server_address[1]}", "GATEWAY_MODEL": MODEL,
           "GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_REDIS_PASSWORD": redis_server.password or "",
           "GATEWAY_AUTH_ENABLED": "false", "GATEWAY_HEALTH_INTERVAL_SECONDS": "0.5",
           "GATEWAY_FIRST_TOKEN_TIMEOUT": "50", "GATEWAY_TOTAL_TIMEOUT": "60",
           "GATEWAY_SHUTDOWN_DRAIN_SECONDS": "0", "GATEWAY_SHUTDOWN_GRACE_SECONDS": "1"}
    handle = gateway_process(build_dir / "grace-ends", env, "gateway-grace-ends")
    try:
        handle.wait_ready()
        async with httpx.AsyncClient(base_url=handle.url, timeout=60) as http:
            pending = asyncio.create_task(http.post("/v1/chat/completions", json=chat_body("held")))
            await wait_until_async(lambda: asyncio.to_thread(HeldBackend.received.wait, 0.1),
                                   "the backend holds the request", within=30)
            os.kill(handle.pid, signal.SIGTERM)
            resp = await pending
        assert resp.status_code == 503, resp.text
        assert resp.headers["content-type"] == "application/json" and resp.headers["retry-after"] == "1"
        error = resp.json()["error"]
        assert error["code"] == "gateway_shutting_down" and error["type"] == "service_unavailable"
        assert set(error) == {"message", "type", "param", "code"}
        popen = handle.process.popen
        assert popen is not None
        assert await asyncio.to_thread(popen.wait, 60) == 0
    finally:
        HeldBackend.release.set()
        backend.shutdown()
        handle.stop()
