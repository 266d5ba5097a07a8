"""Sessions in Redis: continuity across two gateway processes, ownership, TTL and trimming."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.gateway.conftest import Gateway, StartGateway, auth, chat_body
from tests.waiting import wait_until_async


def new_session() -> str:
    return f"sess-{uuid.uuid4()}"


async def chat(http: httpx.AsyncClient, session: str, text: str, key: str = "alice", **extra: Any) -> httpx.Response:
    return await http.post("/v1/chat/completions", headers={**auth(key), "X-Session-Id": session},
                           json=chat_body(text, **extra))


async def test_history_continues_on_another_gateway_process(gw: Gateway, start_gw: StartGateway) -> None:
    gw2 = start_gw()
    sid = new_session()
    async with gw.client() as one, gw2.client() as two:
        first = await chat(one, sid, "My name is Ada.",
                           messages=[{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "My name is Ada."}])
        assert first.status_code == 200, first.text
        assert first.headers["x-session-id"] == sid
        second = await chat(two, sid, "What is my name?")
        assert second.status_code == 200, second.text
        stored = (await two.get(f"/v1/sessions/{sid}", headers=auth("alice"))).json()
    answer1 = first.json()["choices"][0]["message"]["content"]
    answer2 = second.json()["choices"][0]["message"]["content"]
    assert stored["system"] == "Be brief."
    assert stored["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": answer1},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": answer2},
    ]
    # The second prompt carried the system prompt and the first turn: vLLM counted them.
    alone = await _prompt_tokens(gw, "What is my name?")
    assert second.json()["usage"]["prompt_tokens"] > alone + first.json()["usage"]["completion_tokens"]


async def _prompt_tokens(gw: Gateway, text: str) -> int:
    async with gw.client() as http:
        resp = await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body(text))
    return int(resp.json()["usage"]["prompt_tokens"])


async def test_streamed_answer_is_stored_and_session_id_in_body_is_stripped(gw: Gateway) -> None:
    sid = new_session()
    async with gw.client() as http:
        body = {**chat_body("stream me", max_tokens=10, stream=True), "session_id": sid}
        async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"), json=body) as resp:
            assert resp.status_code == 200
            raw = (await resp.aread()).decode()
        stored = (await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))).json()
    import json

    text = ""
    for event in raw.split("\n\n"):
        data = event.removeprefix("data: ").strip()
        if data and data != "[DONE]":
            chunk = json.loads(data)
            if chunk["choices"]:
                text += chunk["choices"][0]["delta"].get("content") or ""
    assert stored["messages"] == [{"role": "user", "content": "stream me"}, {"role": "assistant", "content": text}]


async def test_foreign_key_cannot_see_use_or_delete_a_session(gw: Gateway) -> None:
    sid = new_session()
    async with gw.client() as http:
        assert (await chat(http, sid, "secret plans", key="alice")).status_code == 200
        for resp in (
            await http.get(f"/v1/sessions/{sid}", headers=auth("bob")),
            await http.delete(f"/v1/sessions/{sid}", headers=auth("bob")),
            await chat(http, sid, "what were the plans?", key="bob"),
        ):
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["code"] == "session_not_found"
        assert (await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))).status_code == 200
        deleted = await http.delete(f"/v1/sessions/{sid}", headers=auth("alice"))
        assert deleted.json() == {"id": sid, "object": "session.deleted", "deleted": True}
        assert (await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))).status_code == 404


async def test_session_ids_are_validated(gw: Gateway) -> None:
    async with gw.client() as http:
        for bad in ("short", "x" * 129, "has space in it", "semi;colon;id", "../../etc/passwd"):
            resp = await chat(http, bad, "hi")
            assert resp.status_code == 400, bad
            assert resp.json()["error"]["code"] == "invalid_session_id"
        assert (await http.get("/v1/sessions/bad!", headers=auth("alice"))).status_code == 400


async def test_sessions_expire_after_their_ttl(start_gw: StartGateway) -> None:
    # 5 s, not less: the read right after the turn must find the session even on a slow, busy machine.
    short = start_gw(session_ttl_seconds="5")
    sid = new_session()
    async with short.client() as http:
        assert (await chat(http, sid, "remember me")).status_code == 200
        got = (await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))).json()
        assert 0 < got["expires_in"] <= 5

        async def expired() -> bool:
            return (await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))).status_code == 404

        await wait_until_async(expired, "the session expires after its 5 s TTL", within=20, interval=0.2)


async def test_history_is_trimmed_to_the_budget_keeping_the_system_prompt(start_gw: StartGateway) -> None:
    # ~60 approx tokens per turn (200 chars + answer); a budget of 150 keeps about two turns.
    small = start_gw(history_token_budget="150")
    sid = new_session()
    prompts: list[int] = []
    async with small.client() as http:
        for i in range(6):
            messages = [{"role": "user", "content": f"turn {i} " + "lorem ipsum " * 16}]
            if i == 0:
                messages.insert(0, {"role": "system", "content": "SYSTEM PROMPT"})
            resp = await chat(http, sid, "", messages=messages, max_tokens=4)
            assert resp.status_code == 200, resp.text
            prompts.append(resp.json()["usage"]["prompt_tokens"])
        stored = (await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))).json()
    assert len(stored["messages"]) == 12  # everything is kept in Redis; only what is sent is trimmed
    assert stored["system"] == "SYSTEM PROMPT"
    # Growth stops once the budget is reached: later prompts are no bigger than the third one.
    assert prompts[1] > prompts[0]
    assert max(prompts[3:]) <= prompts[2] + 8


async def test_a_turn_the_client_saw_finish_is_already_stored(gw: Gateway) -> None:
    """Acknowledged means stored: read each session back the moment the client has the end of the answer
    (`data: [DONE]`, or the whole 200 body); 200 streamed and 200 non-streamed turns, none missing.

    A turn the gateway could not save (Redis too slow on a loaded machine) must say so to its client (a
    no-choices chunk with `"stored": false` before [DONE], or `X-Session-Stored: false`): such a turn was
    never acknowledged as stored. Missing = acknowledged as stored and not there."""
    limit = asyncio.Semaphore(8)

    async def one_turn(http: httpx.AsyncClient, i: int, stream: bool) -> str:
        sid = new_session()
        async with limit:
            if stream:
                body = chat_body(f"turn {i}", max_tokens=4, stream=True)
                async with http.stream("POST", "/v1/chat/completions", json=body,
                                       headers={**auth("alice"), "X-Session-Id": sid}) as resp:
                    assert resp.status_code == 200
                    lines = [line async for line in resp.aiter_lines() if line]
                assert lines[-1] == "data: [DONE]"
                unsaved = any('"stored": false' in line for line in lines)
            else:
                resp = await chat(http, sid, f"turn {i}", max_tokens=4)
                assert resp.status_code == 200
                unsaved = resp.headers.get("x-session-stored") == "false"
            if unsaved:
                return "told-unsaved"
            stored = await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))

            async def readable() -> bool:  # a read refused by a Redis hiccup (503) proves nothing: read again
                nonlocal stored
                if stored.status_code == 503:
                    stored = await http.get(f"/v1/sessions/{sid}", headers=auth("alice"))
                return stored.status_code != 503

            await wait_until_async(readable, "the session can be read back", within=30, interval=0.2)
        assert stored.status_code in (200, 404), stored.text
        return "stored" if stored.status_code == 200 and len(stored.json()["messages"]) == 2 else "missing"

    async with gw.client() as http:
        outcomes = await asyncio.gather(*(one_turn(http, i, stream) for i in range(200) for stream in (True, False)))
    assert outcomes.count("missing") == 0, f"{outcomes.count('missing')} of {len(outcomes)} acknowledged turns lost"
    assert outcomes.count("stored") > 0
