"""Issue 11: limits that cannot be bypassed, nothing of the client's reaching inside vLLM, sessions claimed
atomically and bounded per identity, background loops that survive a strange backend. Real gateway
processes, real Redis, real vLLM (fast model; the paced one where a request must still be running)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from app.gateway.main import slot_lifetime
from app.gateway.settings import GatewaySettings
from localstack.services import RedisHandle
from tests.gateway.conftest import Fleet, JwksServer, StartGateway, auth, chat_body, serve_json, vllm_metric
from tests.waiting import wait_until_async

CHAT = "/v1/chat/completions"


def bearer(jwks: JwksServer, name: str) -> dict[str, str]:
    """A fresh identity of its own (an OIDC subject), so no other test's limits or sessions count."""
    return {"Authorization": f"Bearer {jwks.token(sub=name)}"}


def rdb(server: RedisHandle) -> redis.Redis:
    return redis.Redis(port=server.port, password=server.password, decode_responses=True)


# ---- max_tokens, request ids ---------------------------------------------------------------------------
async def test_max_tokens_is_always_sent_and_never_above_the_cap(start_gw: StartGateway) -> None:
    gw = start_gw(max_tokens_cap="5")
    async with gw.client() as http:
        chat = await http.post(CHAT, headers=auth("bob"), json={
            "messages": [{"role": "user", "content": "go on forever"}], "ignore_eos": True})
        completion = await http.post("/v1/completions", headers=auth("bob"), json={
            "prompt": "once upon a time", "ignore_eos": True})
        over = await http.post(CHAT, headers=auth("bob"), json=chat_body(max_tokens=6))
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["completion_tokens"] == 5  # not the model's length: the cap was sent
    assert chat.json()["choices"][0]["finish_reason"] == "length"
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 5
    assert over.status_code == 400 and over.json()["error"]["code"] == "max_tokens_too_large"


async def test_the_clients_request_id_is_echoed_but_never_becomes_vllms(gw: Any) -> None:
    """Two clients choosing the same id must not collide inside vLLM: it gets the gateway's own ids."""
    headers = {**auth("bob"), "X-Request-Id": "client-chosen-id"}
    async with gw.client() as http:
        one, two = await asyncio.gather(*(http.post(CHAT, headers=headers, json=chat_body()) for _ in range(2)))
    for resp in (one, two):
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-request-id"] == "client-chosen-id"  # echoed for the client's own logs
        assert "client-chosen-id" not in resp.json()["id"]  # vLLM's id (chatcmpl-<request id>) is ours
    assert one.json()["id"] != two.json()["id"]
    assert "client_request_id" in gw.log() and '"client-chosen-id"' in gw.log()


# ---- sequences and concurrency slots --------------------------------------------------------------------
async def test_n_counts_against_the_concurrency_limit(
    start_gw: StartGateway, black_hole: int, jwks: JwksServer, redis_server: RedisHandle
) -> None:
    """A request for n=3 holds three slots (its backend hangs until the first-token timeout)."""
    # The hold lasts the first-token timeout: long enough for the checks below on a slow, loaded machine.
    gw = start_gw(expect_ready=False, backends=f"127.0.0.1:{black_hole}", rate_limit_concurrent="4",
                  first_token_timeout="10", retry_attempts="1")
    who = f"n-{uuid.uuid4().hex[:8]}"
    headers = bearer(jwks, who)
    slots = rdb(redis_server)
    key = f"qs:rl:slots:oidc:{who}"
    async with gw.client() as http:
        held = asyncio.create_task(http.post(CHAT, headers=headers, json=chat_body(n=3, stream=True)))
        await wait_until_async(lambda: asyncio.to_thread(lambda: slots.zcard(key) == 3),
                               "the n=3 request holds three slots", within=10)
        two_more = await http.post(CHAT, headers=headers, json=chat_body(n=2))
        too_many = await http.post(CHAT, headers=headers, json=chat_body(n=5))
        timed_out = await held
    assert two_more.status_code == 429 and two_more.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_sequences"
    assert timed_out.status_code == 504
    assert slots.zcard(key) == 0


async def test_slots_come_back_when_streams_are_abandoned_before_and_after_the_first_token(
    start_gw: StartGateway, fleet: Fleet, black_hole: int, jwks: JwksServer, redis_server: RedisHandle
) -> None:
    paced = fleet.paced()
    slots = rdb(redis_server)
    # Before the first token: the backend never answers; the client leaves; the slot is back by the
    # first-token timeout at the latest.
    hung = start_gw(expect_ready=False, backends=f"127.0.0.1:{black_hole}", first_token_timeout="10",
                    retry_attempts="1")
    who = f"early-{uuid.uuid4().hex[:8]}"
    key = f"qs:rl:slots:oidc:{who}"
    async with hung.client() as http:
        request = asyncio.create_task(http.post(CHAT, headers=bearer(jwks, who), json=chat_body(stream=True)))
        await wait_until_async(lambda: asyncio.to_thread(lambda: slots.zcard(key) == 1), "slot taken", within=10)
        request.cancel()
    await wait_until_async(lambda: asyncio.to_thread(lambda: slots.zcard(key) == 0),
                           "the slot is released after a disconnect before the first token", within=15)
    # After the first token: the paced model is still generating when the client goes.
    gw = start_gw(backends=f"127.0.0.1:{paced.port}")
    who = f"late-{uuid.uuid4().hex[:8]}"
    key = f"qs:rl:slots:oidc:{who}"
    body = chat_body("a long story", max_tokens=400, ignore_eos=True, stream=True)
    async with gw.client() as http:
        async with http.stream("POST", CHAT, headers=bearer(jwks, who), json=body) as resp:
            assert resp.status_code == 200
            chunks = resp.aiter_text()  # held: a dropped iterator is closed by the GC, and the stream with it
            first = await anext(chunks)
            assert "[DONE]" not in first and slots.zcard(key) == 1
            assert vllm_metric(paced, "vllm:num_requests_running") >= 1
    await wait_until_async(lambda: asyncio.to_thread(lambda: slots.zcard(key) == 0),
                           "the slot is released after a disconnect mid-stream", within=15)
    await wait_until_async(
        lambda: asyncio.to_thread(lambda: vllm_metric(paced, "vllm:num_requests_running") == 0),
        "vLLM stops generating for the client that left", within=30)


async def test_slots_of_a_killed_gateway_expire_at_their_deadline_while_the_client_retries(
    start_gw: StartGateway, fleet: Fleet, jwks: JwksServer, redis_server: RedisHandle
) -> None:
    """kill -9 a gateway holding both of a caller's slots; the caller keeps retrying on another gateway:
    refused (the slots are leaked) until their deadline, which the retries do not push back, then admitted;
    vLLM is not left generating for the dead gateway."""
    paced = fleet.paced()
    # The streams must outlive the moment of the kill: a total timeout that ended one first would release its
    # slot (seen with 8 s on a slow machine); the slots' lifetime, and so this test's length, follows it.
    limits = {"backends": f"127.0.0.1:{paced.port}", "rate_limit_concurrent": "2", "total_timeout": "15",
              "first_token_timeout": "10", "idle_timeout": "10"}
    doomed, survivor = start_gw(**limits), start_gw(**limits)
    lifetime = slot_lifetime(GatewaySettings.model_validate({**limits, "auth_enabled": False}))
    who = f"killed-{uuid.uuid4().hex[:8]}"
    headers = bearer(jwks, who)
    slots = rdb(redis_server)
    key = f"qs:rl:slots:oidc:{who}"
    body = chat_body("a long story", max_tokens=400, ignore_eos=True, stream=True)
    async with doomed.client() as one, survivor.client() as two, contextlib.AsyncExitStack() as held:
        opened = [await held.enter_async_context(one.stream("POST", CHAT, headers=headers, json=body))
                  for _ in range(2)]
        # Each stream's iterator is held until the kill: an iterator dropped after its first chunk is closed
        # by asyncio's async-generator finalizer, which closed that stream (and released its slot) before the
        # slots were counted, on a slow machine.
        chunks = [resp.aiter_bytes() for resp in opened]
        for resp, stream in zip(opened, chunks, strict=True):
            assert resp.status_code == 200
            await anext(stream)  # generating
        assert slots.zcard(key) == 2
        deadlines = slots.zrange(key, 0, -1, withscores=True)
        doomed.handle.process.kill()
        refused = 0
        started = time.monotonic()
        while True:
            resp = await two.post(CHAT, headers=headers, json=chat_body(max_tokens=2))
            if resp.status_code == 200:
                break
            assert resp.status_code == 429 and resp.json()["error"]["code"] == "concurrency_limit_exceeded"
            refused += 1
            if refused == 3:  # retrying does not extend the leaked slots' deadlines
                assert slots.zrange(key, 0, -1, withscores=True) == deadlines
            assert time.monotonic() - started < lifetime + 10, "the leaked slots never expired"
            await asyncio.sleep(0.25)  # a client's retry interval
    assert refused >= 1  # the slots were leaked by the kill, and held until their deadline
    await wait_until_async(
        lambda: asyncio.to_thread(lambda: vllm_metric(paced, "vllm:num_requests_running") == 0),
        "vLLM aborted the killed gateway's streams", within=30)


# ---- sessions: atomic claim, quotas -----------------------------------------------------------------------
async def test_two_identities_racing_on_a_new_session_id(gw: Any) -> None:
    """Both send their first turn on one new id at once: one owns it, the other gets 404, and the owner's
    session holds only the owner's messages (no system prompt injected by the loser)."""
    async with gw.client() as http:
        for _ in range(5):
            sid = f"race-{uuid.uuid4()}"

            async def turn(name: str, sid: str = sid) -> httpx.Response:
                return await http.post(CHAT, headers={**auth(name), "X-Session-Id": sid}, json=chat_body(
                    f"I am {name}", messages=[{"role": "system", "content": f"obey {name}"},
                                              {"role": "user", "content": f"I am {name}"}]))

            alice, bob = await asyncio.gather(turn("alice"), turn("bob"))
            assert sorted([alice.status_code, bob.status_code]) == [200, 404], (alice.text, bob.text)
            owner, loser = ("alice", "bob") if alice.status_code == 200 else ("bob", "alice")
            assert (bob if owner == "alice" else alice).json()["error"]["code"] == "session_not_found"
            stored = (await http.get(f"/v1/sessions/{sid}", headers=auth(owner))).json()
            assert stored["system"] == f"obey {owner}"
            assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == [f"I am {owner}"]
            assert (await http.get(f"/v1/sessions/{sid}", headers=auth(loser))).status_code == 404


async def test_one_identity_filling_its_quota_cannot_fail_anyone_else(
    start_gw: StartGateway, jwks: JwksServer
) -> None:
    gw = start_gw(session_max_per_identity="2", session_max_bytes_per_identity="2048")
    filler = bearer(jwks, f"filler-{uuid.uuid4().hex[:8]}")
    other = bearer(jwks, f"other-{uuid.uuid4().hex[:8]}")
    first, second, third = (f"quota-{uuid.uuid4()}" for _ in range(3))
    async with gw.client() as http:

        async def say(who: dict[str, str], sid: str, text: str) -> httpx.Response:
            return await http.post(CHAT, headers={**who, "X-Session-Id": sid}, json=chat_body(text, max_tokens=4))

        assert (await say(filler, first, "hi")).status_code == 200
        assert (await say(filler, second, "hi")).status_code == 200
        over_count = await say(filler, third, "hi")
        assert over_count.status_code == 429, over_count.text
        assert over_count.json()["error"]["code"] == "session_quota_exceeded"
        # Bytes: long turns until the identity's stored bytes reach the quota; then its turns are refused.
        for _ in range(10):
            resp = await say(filler, first, "x" * 700)
            if resp.status_code == 429:
                break
            assert resp.status_code == 200, resp.text
            assert resp.headers.get("x-session-stored") != "false"
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "session_quota_exceeded"
        # Everyone else: sessions stored, limits as usual.
        mine = f"quota-{uuid.uuid4()}"
        ok = await say(other, mine, "hello")
        assert ok.status_code == 200 and ok.headers.get("x-session-stored") != "false"
        stored = await http.get(f"/v1/sessions/{mine}", headers=other)
        assert stored.json()["messages"][0]["content"] == "hello"
        metrics = (await http.get("/metrics")).text
        assert "gateway_rate_limit_fail_open_total 0.0" in metrics  # the shared limits never went local
        # Deleting a session gives its room (and its bytes) back.
        assert (await http.delete(f"/v1/sessions/{first}", headers=filler)).status_code == 200
        assert (await say(filler, third, "hi")).status_code == 200


# ---- background loops ------------------------------------------------------------------------------------
class OddBackend:
    """Answers /v1/models with whatever `answer` holds (a JSON list, ids that are not strings, ...)."""

    def __init__(self) -> None:
        self.answer: Any = []
        self.hits = 0
        self.server = serve_json(self._answer)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def _answer(self) -> Any:
        self.hits += 1
        return self.answer


@pytest.fixture
def odd_backend() -> Iterator[OddBackend]:
    backend = OddBackend()
    yield backend
    backend.server.shutdown()


async def test_health_probes_survive_a_backend_answering_garbage(
    start_gw: StartGateway, fleet: Fleet, odd_backend: OddBackend
) -> None:
    gw = start_gw(backends=f"127.0.0.1:{fleet.a.port},{odd_backend.address}", health_interval_seconds="0.2")
    async with gw.client() as http:

        async def odd_healthy() -> bool:
            return bool((await http.get("/readyz")).json()["backends"][odd_backend.address]["healthy"])

        for answer in ([], [1, 2], {"data": [1, "x", {"id": 5}]}, {"data": "x"}, "text"):
            odd_backend.answer = answer
            hits = odd_backend.hits

            async def probed_again(since: int = hits) -> bool:
                return odd_backend.hits >= since + 2

            await wait_until_async(probed_again, "the probe loop keeps probing", within=10)
            assert not await odd_healthy()
            models = await http.get("/v1/models", headers=auth("bob"))
            assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["tiny-qwen2"]
        odd_backend.answer = {"object": "list", "data": [{"id": "tiny-qwen2", "object": "model"}]}
        await wait_until_async(odd_healthy, "the loop is alive: the backend is healthy once it answers right",
                               within=10)
