"""Routing against two real vLLMs: session affinity, least-outstanding spreading, client-disconnect cancel
(streamed and not)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import redis

from app.gateway.backends.routing import rendezvous_score
from localstack.services import RedisHandle, VllmHandle
from tests.gateway.conftest import (
    Fleet,
    Gateway,
    ModelListing,
    StartGateway,
    auth,
    chat_body,
    serve,
    vllm_metric,
)
from tests.waiting import metric, wait_until_async

DONE = "vllm:request_success_total"
RUNNING = "vllm:num_requests_running"
GENERATED = "vllm:generation_tokens_total"


def session_for(target: VllmHandle, others: list[VllmHandle]) -> str:
    """A session id that rendezvous hashing maps to `target` among `others`."""
    while True:
        sid = f"sess-{uuid.uuid4()}"
        scores = {h.port: rendezvous_score(sid, f"127.0.0.1:{h.port}") for h in others}
        if max(scores, key=lambda p: scores[p]) == target.port:
            return sid


async def test_a_session_sticks_to_one_backend(gw: Gateway, fleet: Fleet) -> None:
    backends = [fleet.a, fleet.b]
    for target in backends:
        sid = session_for(target, backends)
        before = {h.port: vllm_metric(h, DONE) for h in backends}
        async with gw.client() as http:
            for i in range(3):
                resp = await http.post("/v1/chat/completions", headers={**auth("alice"), "X-Session-Id": sid},
                                       json=chat_body(f"turn {i}", max_tokens=2))
                assert resp.status_code == 200
        after = {h.port: vllm_metric(h, DONE) for h in backends}
        assert after[target.port] - before[target.port] == 3
        assert sum(after.values()) - sum(before.values()) == 3


async def test_requests_without_session_spread_by_outstanding_load(gw: Gateway, fleet: Fleet) -> None:
    backends = [fleet.a, fleet.b]
    before = {h.port: vllm_metric(h, DONE) for h in backends}

    async def one() -> None:
        async with gw.client() as http:
            resp = await http.post("/v1/chat/completions", headers=auth("alice"),
                                   json=chat_body(max_tokens=150, ignore_eos=True))
            assert resp.status_code == 200

    await asyncio.gather(*(one() for _ in range(6)))
    deltas = [vllm_metric(h, DONE) - before[h.port] for h in backends]
    assert sum(deltas) == 6
    assert min(deltas) >= 2, deltas  # not all on one backend


def slots_held(redis_server: RedisHandle, subject: str) -> int:
    r = redis.Redis(port=redis_server.port, password=redis_server.password, decode_responses=True)
    return int(r.zcard(f"qs:rl:slots:{subject}"))


async def assert_vllm_dropped_the_request(paced: VllmHandle, finished_before: float, generated_before: float,
                                          redis_server: RedisHandle) -> None:
    """vLLM stops generating, counts no success (an aborted request is not one), and the gateway gives the
    caller's concurrency slot back."""
    await wait_until_async(lambda: asyncio.to_thread(lambda: vllm_metric(paced, RUNNING) == 0),
                           "vLLM stops generating after the client went away", within=15)
    assert vllm_metric(paced, DONE) == finished_before
    generated = vllm_metric(paced, GENERATED) - generated_before
    assert generated < 2000, f"vLLM generated {generated} of 4000 tokens for a client that had gone"
    await wait_until_async(lambda: asyncio.to_thread(lambda: slots_held(redis_server, "key:alice") == 0),
                           "the request's concurrency slot is released", within=30)


async def test_client_disconnect_cancels_the_vllm_request(
    start_gw: StartGateway, fleet: Fleet, redis_server: RedisHandle
) -> None:
    """Close the connection mid-stream: vLLM aborts the request (it would otherwise run to 4000 tokens,
    about a minute on the paced backend), and the gateway gives back the stream's slot and gauge."""
    paced = fleet.paced()
    gw = start_gw(backends=f"127.0.0.1:{paced.port}")
    finished_before = vllm_metric(paced, DONE)
    generated_before = vllm_metric(paced, GENERATED)
    async with gw.client() as http:
        body = chat_body("go on forever", max_tokens=4000, ignore_eos=True, stream=True)
        async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body) as resp:
            assert resp.status_code == 200
            # Keep the iterator referenced: an abandoned one is closed by the GC, which already disconnects.
            lines = resp.aiter_lines()
            received = 0
            while received < 5:
                line = await anext(lines)
                assert line != "data: [DONE]"
                received += line.startswith("data:")
            # Precondition: we hold part of the answer and vLLM is generating the rest right now.
            await wait_until_async(lambda: asyncio.to_thread(lambda: vllm_metric(paced, RUNNING) == 1),
                                   "vLLM shows our request running", within=30)
            assert slots_held(redis_server, "key:alice") == 1
        # leaving the block closes the connection mid-stream

    await assert_vllm_dropped_the_request(paced, finished_before, generated_before, redis_server)
    async with gw.client() as http:
        assert "gateway_active_streams 0.0" in (await http.get("/metrics")).text
    assert "client disconnected mid-stream" in gw.log()


async def test_client_disconnect_cancels_a_non_streamed_request(
    start_gw: StartGateway, fleet: Fleet, redis_server: RedisHandle
) -> None:
    """A client that gives up waiting for a whole (non-streamed) answer: the gateway cancels its vLLM
    request too, instead of keeping a GPU on 4000 tokens nobody will read."""
    paced = fleet.paced()
    gw = start_gw(backends=f"127.0.0.1:{paced.port}")
    finished_before = vllm_metric(paced, DONE)
    generated_before = vllm_metric(paced, GENERATED)
    async with gw.client() as http:
        body = chat_body("go on forever", max_tokens=4000, ignore_eos=True)
        waiting = asyncio.create_task(http.post("/v1/chat/completions", headers=auth("alice"), json=body))
        await wait_until_async(lambda: asyncio.to_thread(lambda: vllm_metric(paced, RUNNING) == 1),
                               "vLLM shows our request running", within=30)
        assert slots_held(redis_server, "key:alice") == 1 and not waiting.done()
        waiting.cancel()  # the client gives up: httpx closes the connection
        await asyncio.gather(waiting, return_exceptions=True)

    await assert_vllm_dropped_the_request(paced, finished_before, generated_before, redis_server)
    assert "client disconnected before the answer" in gw.log()
    await wait_until_async(
        lambda: asyncio.to_thread(lambda: metric(gw.url, "gateway_requests_total", route="/v1/chat/completions",
                                                 status="499") == 1),
        "the abandoned request is counted as 499 (client closed)", within=30)


class SilentBackend:
    """A backend that is healthy (lists the model) but, asked to generate, sends the stream's headers and then
    nothing: a request queued in vLLM, or a long prefill. Notes when the gateway closes the connection."""

    def __init__(self) -> None:
        self.held = 0
        self.closed = threading.Event()
        backend = self

        class Handler(ModelListing):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.flush()
                backend.held += 1
                while self.connection.recv(1024):  # until the gateway closes its side
                    pass
                backend.closed.set()

        self.server = serve(Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"


async def test_client_disconnect_before_the_first_token_cancels_the_upstream_request(
    start_gw: StartGateway, redis_server: RedisHandle
) -> None:
    """The client gives up while its request waits for a first token (queued, prefilling): the gateway closes
    its upstream request at once rather than holding it until the first-token timeout (50 s here)."""
    silent = SilentBackend()
    try:
        gw = start_gw(backends=silent.address, first_token_timeout="50")
        gw.wait_backends_healthy(1)
        async with gw.client() as http:
            body = chat_body("anyone there?", stream=True)
            waiting = asyncio.create_task(http.post("/v1/chat/completions", headers=auth("alice"), json=body))

            async def upstream_held() -> bool:
                return silent.held == 1

            await wait_until_async(upstream_held, "the request reached the backend", within=15)
            assert slots_held(redis_server, "key:alice") == 1 and not waiting.done()
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.to_thread(silent.closed.wait, 20)
        assert silent.closed.is_set(), "the gateway kept its upstream request open after the client left"
        await wait_until_async(lambda: asyncio.to_thread(lambda: slots_held(redis_server, "key:alice") == 0),
                               "the request's concurrency slot is released", within=30)
        assert "client disconnected before the first token" in gw.log()
    finally:
        silent.server.shutdown()


async def test_backends_from_dns(start_gw: StartGateway, fleet: Fleet) -> None:
    """A DNS name (the headless Service in a cluster; `localhost` here) is resolved into backends."""
    gw = start_gw(backends="", backends_dns=f"localhost:{fleet.a.port}", dns_interval_seconds="0.5")
    async with gw.client() as http:
        resp = await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body())
        ready = (await http.get("/readyz")).json()
    assert resp.status_code == 200
    assert ready["backends"][f"127.0.0.1:{fleet.a.port}"]["healthy"] is True
