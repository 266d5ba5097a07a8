"""A vLLM dies while requests flow: nothing that had not started streaming fails; a cut stream ends cleanly."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx

from localstack.processes import free_port
from tests.gateway.conftest import (
    MODEL,
    Fleet,
    ModelListing,
    StartGateway,
    auth,
    chat_body,
    send_json,
    serve,
    vllm_metric,
)
from tests.gateway.test_routing import session_for
from tests.waiting import wait_until_async


def sse_payloads(raw: str) -> list[str]:
    return [e.removeprefix("data: ").strip() for e in raw.split("\n\n") if e.strip()]


async def test_killing_a_backend_mid_traffic(start_gw: StartGateway, fleet: Fleet) -> None:
    """Kill the paced backend while it is generating a long stream and three pinned non-streamed answers:
    the stream ends with an error event and [DONE]; the pinned requests are retried on the fast backend
    (nothing had been sent to their clients yet) and succeed; new requests never see the dead backend."""
    paced = fleet.paced()
    gw = start_gw(backends=f"127.0.0.1:{fleet.a.port},127.0.0.1:{paced.port}")
    gw.wait_backends_healthy(2)
    backends = [fleet.a, paced]

    async def plain(http: httpx.AsyncClient, i: int, max_tokens: int, session: str | None = None) -> httpx.Response:
        headers = {**auth("alice"), **({"X-Session-Id": session} if session else {})}
        return await http.post("/v1/chat/completions", headers=headers,
                               json=chat_body(f"req {i}", max_tokens=max_tokens, ignore_eos=True))

    async def streamed(http: httpx.AsyncClient, i: int) -> str:
        body = chat_body(f"stream {i}", max_tokens=60, ignore_eos=True, stream=True)
        async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body) as resp:
            assert resp.status_code == 200
            return (await resp.aread()).decode()

    async with gw.client() as http:
        body = chat_body("a long answer", max_tokens=4000, ignore_eos=True, stream=True)
        headers = {**auth("alice"), "X-Session-Id": session_for(paced, backends)}
        async with http.stream("POST", "/v1/chat/completions", headers=headers, json=body) as cut:
            assert cut.status_code == 200
            chunks = cut.aiter_text()
            received = await anext(chunks)
            # Three long answers pinned to the paced backend (session affinity), three short ones anywhere.
            pinned = [asyncio.create_task(plain(http, i, 1000, session_for(paced, backends))) for i in range(3)]
            anywhere = [asyncio.create_task(plain(http, 10 + i, 120)) for i in range(3)]
            await wait_until_async(
                lambda: asyncio.to_thread(lambda: vllm_metric(paced, "vllm:num_requests_running") == 4),
                "the paced backend generates the stream and the three pinned answers", within=60)
            assert "[DONE]" not in received  # precondition: the stream is under way, not finished
            paced.kill()
            after = [asyncio.create_task(plain(http, 100 + i, 120)) for i in range(4)]
            after_streams = [asyncio.create_task(streamed(http, i)) for i in range(4)]
            async with asyncio.timeout(30):
                async for text in chunks:
                    received += text
        pinned_results = await asyncio.gather(*pinned)
        results = await asyncio.gather(*anywhere, *after)
        streams = await asyncio.gather(*after_streams)
        metrics = (await http.get("/metrics")).text

    events = sse_payloads(received)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "mid-stream" in error["message"]
    assert len(events) > 3  # the stream had really started before the cut
    for resp in pinned_results:  # they were in flight on the killed backend: retried, whole
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 1000
    for resp in results:
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 120
    for raw in streams:
        payloads = sse_payloads(raw)
        assert payloads[-1] == "[DONE]" and not any('"error"' in p for p in payloads)
    retried = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("gateway_upstream_retries_total{"))
    assert retried >= 3  # at least the three pinned answers
    async with httpx.AsyncClient(base_url=gw.url) as probe:

        async def ejected() -> bool:
            ready = (await probe.get("/readyz")).json()
            return ready["ready"] is True and not ready["backends"][f"127.0.0.1:{paced.port}"]["healthy"]

        await wait_until_async(ejected, "the dead backend is marked unhealthy, the gateway stays ready", within=10)


async def test_first_token_timeout_retries_on_a_healthy_backend(
    start_gw: StartGateway, fleet: Fleet, black_hole: int
) -> None:
    # 5 s: long enough for the healthy backend's first token on a busy 2-core machine, short for the test.
    gw = start_gw(backends=f"127.0.0.1:{black_hole},127.0.0.1:{fleet.a.port}", first_token_timeout="5",
                  health_interval_seconds="60")
    async with gw.client() as http:
        # Both look healthy until probed; send enough requests that some pick the hung one first.
        results = await asyncio.gather(*(
            http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body(stream=stream))
            for stream in (False, True, False, True)
        ))
    for resp in results:
        assert resp.status_code == 200, resp.text


async def test_no_backend_at_all_is_a_clean_502_and_not_ready(start_gw: StartGateway) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens here: connection refused
    gw = start_gw(backends=f"127.0.0.1:{port}", expect_ready=False)
    async with gw.client() as http:
        resp = await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body())
        ready = await http.get("/readyz")
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_unavailable"
    assert ready.status_code == 503 and ready.json()["ready"] is False


class DroppingBackend:
    """A backend that lists the model but closes the connection of its first generation request without an
    answer (as a backend does when it closes a kept-alive connection just as the gateway reuses it), then
    answers normally."""

    def __init__(self) -> None:
        self.posts = 0
        backend = self

        class Handler(ModelListing):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                backend.posts += 1
                if backend.posts == 1:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                send_json(self, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

        self.server = serve(Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"


async def test_a_dropped_connection_is_retried_even_when_the_other_backend_is_dead(start_gw: StartGateway) -> None:
    """One backend dead, the other drops a request's connection before answering: the request is tried on the
    dead one (refused) and then again on the live one, and succeeds, rather than failing with a 502."""
    dropping = DroppingBackend()
    try:
        gw = start_gw(backends=f"{dropping.address},127.0.0.1:{free_port()}")
        gw.wait_backends_healthy(1)
        async with gw.client() as http:
            resp = await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body())
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "hello"
        assert dropping.posts == 2
    finally:
        dropping.server.shutdown()
