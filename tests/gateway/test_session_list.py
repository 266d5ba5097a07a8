"""`GET /v1/sessions` (the caller's own sessions, latest first, paged) and taking the last turn back
(`DELETE /v1/sessions/{id}/turns/last`), against the real gateway, Redis and vLLM (the fast test model).

Each test signs in as identities of its own (OIDC tokens with a fresh `sub`), so its lists hold only what it
made, whatever else runs in the package."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import redis

from localstack.services import RedisHandle
from tests.gateway.conftest import Gateway, JwksServer, chat_body


def identity(jwks: JwksServer) -> tuple[str, dict[str, str]]:
    sub = f"lister-{uuid.uuid4().hex[:12]}"
    return f"oidc:{sub}", {"Authorization": f"Bearer {jwks.token(sub=sub)}"}


async def turn(http: httpx.AsyncClient, who: dict[str, str], session: str, text: str) -> str:
    resp = await http.post("/v1/chat/completions", headers={**who, "X-Session-Id": session},
                           json=chat_body(text, max_tokens=4))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


async def listing(http: httpx.AsyncClient, who: dict[str, str], **params: Any) -> dict[str, Any]:
    resp = await http.get("/v1/sessions", headers=who, params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def new_id() -> str:
    return f"list-{uuid.uuid4()}"


async def test_a_caller_lists_only_its_own_sessions_latest_activity_first(gw: Gateway, jwks: JwksServer) -> None:
    _, me = identity(jwks)
    _, other = identity(jwks)
    first, second, third, theirs = new_id(), new_id(), new_id(), new_id()
    long_question = "Why   is the sky\nblue? " + "Explain it in detail, please. " * 10
    async with gw.client() as http:
        await turn(http, me, first, "first question")
        await turn(http, me, second, long_question)
        await turn(http, me, third, "third question")
        await turn(http, other, theirs, "someone else's question")
        await turn(http, me, first, "a follow-up moves the first session to the top")
        mine = await listing(http, me)
        their_list = await listing(http, other)
        nobody = await http.get("/v1/sessions")
    assert nobody.status_code == 401
    assert mine["object"] == "list" and mine["has_more"] is False
    assert [s["id"] for s in mine["data"]] == [first, third, second]
    assert (mine["first_id"], mine["last_id"]) == (first, second)
    by_id = {s["id"]: s for s in mine["data"]}
    assert by_id[first]["title"] == "first question" and by_id[first]["message_count"] == 4
    assert by_id[third]["title"] == "third question" and by_id[third]["message_count"] == 2
    title = by_id[second]["title"]
    assert len(title) == 80 and title.endswith("…") and title.startswith("Why is the sky blue? Explain it")
    assert all(s["object"] == "session" and s["expires_at"] > 0 for s in mine["data"])
    assert [s["id"] for s in their_list["data"]] == [theirs]  # and none of mine


async def test_pages_cover_every_session_once_newest_first(gw: Gateway, jwks: JwksServer) -> None:
    _, me = identity(jwks)
    _, other = identity(jwks)
    made = [new_id() for _ in range(5)]
    foreign = new_id()
    async with gw.client() as http:
        for i, sid in enumerate(made):
            await turn(http, me, sid, f"question {i}")
        await turn(http, other, foreign, "not yours")
        pages, after = [], None
        while True:
            page = await listing(http, me, limit=2, **({"after": after} if after else {}))
            pages.append(page)
            if not page["has_more"]:
                break
            after = page["last_id"]
        refused = [await http.get("/v1/sessions", headers=me, params=params) for params in (
            {"after": foreign},  # another identity's session is not a cursor of mine (and says nothing of it)
            {"after": new_id()},  # no such session
            {"after": "bad id!"},
            {"limit": 0},
            {"limit": 101},
        )]
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert [s["id"] for p in pages for s in p["data"]] == made[::-1]
    assert [s["title"] for p in pages for s in p["data"]] == [f"question {i}" for i in range(4, -1, -1)]
    codes = [(r.status_code, r.json()["error"]["code"]) for r in refused]
    assert codes[:3] == [(400, "invalid_cursor"), (400, "invalid_cursor"), (400, "invalid_session_id")], codes
    assert all(r.status_code in (400, 422) and "error" in r.json() for r in refused[3:])
    # Another identity's session and no session at all read the same: a cursor cannot probe ids.
    assert refused[0].json()["error"]["message"].replace(foreign, "X") == \
        refused[1].json()["error"]["message"].replace(refused[1].url.params["after"], "X")


async def test_a_deleted_session_leaves_the_list_and_only_its_owner_can_delete_it(gw: Gateway,
                                                                                    jwks: JwksServer) -> None:
    _, me = identity(jwks)
    _, other = identity(jwks)
    keep, drop = new_id(), new_id()
    async with gw.client() as http:
        await turn(http, me, keep, "keep me")
        await turn(http, me, drop, "delete me")
        foreign_delete = await http.delete(f"/v1/sessions/{drop}", headers=other)
        before = await listing(http, me)
        deleted = await http.delete(f"/v1/sessions/{drop}", headers=me)
        after = await listing(http, me)
        gone = await http.get(f"/v1/sessions/{drop}", headers=me)
    assert foreign_delete.status_code == 404
    assert [s["id"] for s in before["data"]] == [drop, keep]
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert [s["id"] for s in after["data"]] == [keep]
    assert gone.status_code == 404


async def test_the_last_turn_can_be_taken_back_and_asked_again(gw: Gateway, jwks: JwksServer,
                                                               redis_server: RedisHandle) -> None:
    owner, me = identity(jwks)
    _, other = identity(jwks)
    sid = new_id()
    async with gw.client() as http:
        answer1 = await turn(http, me, sid, "first turn")
        answer2 = await turn(http, me, sid, "second turn")
        foreign = await http.delete(f"/v1/sessions/{sid}/turns/last", headers=other)
        dropped = await http.delete(f"/v1/sessions/{sid}/turns/last", headers=me)
        sizes = stored_sizes(redis_server, sid, owner)
        stored = (await http.get(f"/v1/sessions/{sid}", headers=me)).json()
        listed = (await listing(http, me))["data"]
        again = await turn(http, me, sid, "second turn")  # regenerate: the same message, answered anew
        after_again = (await http.get(f"/v1/sessions/{sid}", headers=me)).json()
        for _ in range(2):
            assert (await http.delete(f"/v1/sessions/{sid}/turns/last", headers=me)).status_code == 200
        nothing_left = await http.delete(f"/v1/sessions/{sid}/turns/last", headers=me)
        missing = await http.delete(f"/v1/sessions/{new_id()}/turns/last", headers=me)
    assert foreign.status_code == 404
    assert dropped.status_code == 200, dropped.text
    assert dropped.json()["messages"] == [{"role": "user", "content": "second turn"},
                                          {"role": "assistant", "content": answer2}]
    assert stored["messages"] == [{"role": "user", "content": "first turn"},
                                  {"role": "assistant", "content": answer1}]
    assert listed[0]["id"] == sid and listed[0]["message_count"] == 2
    assert after_again["messages"][2:] == [{"role": "user", "content": "second turn"},
                                           {"role": "assistant", "content": again}]
    assert nothing_left.status_code == 409 and nothing_left.json()["error"]["code"] == "no_answer_to_drop"
    assert missing.status_code == 404
    # The byte accounting the quotas read follows what is left: the session's size and the owner's entry.
    assert sizes[0] == sizes[1] == sizes[2] > 0, sizes
    assert stored_sizes(redis_server, sid, owner) == (0, 0, 0)


def stored_sizes(server: RedisHandle, sid: str, owner: str) -> tuple[int, int, int]:
    """(bytes of the stored messages, the session's `bytes`, the owner's entry for it)."""
    store = redis.Redis(port=server.port, password=server.password, decode_responses=True)
    messages: list[str] = store.lrange(f"qs:session:{sid}:messages", 0, -1)  # type: ignore[assignment]
    return (sum(len(m.encode()) for m in messages), int(store.hget(f"qs:session:{sid}", "bytes") or -1),
            int(store.hget(f"qs:owner:{owner}:bytes", sid) or -1))
