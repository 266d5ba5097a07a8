"""Tool calling and structured outputs end to end: the gateway in front of real vLLM (CPU build, the paced test
model) run with the stack's own flags (`--enable-auto-tool-choice --tool-call-parser hermes`, xgrammar without
whitespace), through raw HTTP and the official `openai` client.

Guided decoding makes even random weights emit schema-valid output, so these are real checks — on structure
only: finish_reason, the call's name, `jsonschema` validity; never on what the model says. Two measured facts
about the pinned vLLM (0.32) shape the requests:
- a tool call's arguments are constrained by a structural tag, which does not honour `disable_any_whitespace`:
  a random model pads them with `\\r`/`\\t` until max_tokens. The requests push the whitespace tokens down with
  `logit_bias` (-100: still allowed where the grammar requires them), as a client of a weak model could.
- `required` with parallel calls allowed repeats the call until max_tokens; `parallel_tool_calls: false` makes
  the grammar stop after one.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
import redis
from pydantic import BaseModel, Field

from app.gateway.proxy import StreamAccount
from app.gateway.sessions.history import compose, exchanges
from app.inference.tiny_model import PACED_MODEL, ensure_test_model
from localstack.services import RedisHandle
from tests.gateway.conftest import KEYS, MODEL, Fleet, Gateway, StartGateway, auth

PICK = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                   "count": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["color", "count"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "pick", "description": "Pick a colour", "parameters": PICK,
                                      "strict": True}},
    {"type": "function", "function": {"name": "tag", "strict": True, "parameters": {
        "type": "object", "properties": {"labels": {"type": "array", "maxItems": 2,
                                                    "items": {"type": "string", "maxLength": 8}}},
        "required": ["labels"], "additionalProperties": False}}},
]
VERDICT = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                   "note": {"type": "string", "maxLength": 12}},
    "required": ["answer", "note"],
    "additionalProperties": False,
}
NAMED = {"type": "function", "function": {"name": "pick"}}
MAX_TOKENS = 300  # generous: a call is ~70 tokens of this model's tokenizer


def token_ids(predicate: Any) -> list[int]:
    vocab = json.loads((ensure_test_model(PACED_MODEL) / "tokenizer.json").read_text())["model"]["vocab"]
    return sorted(i for token, i in vocab.items() if token and predicate(token))


# Byte-level BPE shows bytes as characters: Ġ space, Ċ \n, ĉ \t, č \r (and the other control bytes near them).
WHITESPACE = "ĠĊĉčċČ"


@pytest.fixture(scope="module")
def no_padding() -> dict[str, int]:
    """logit_bias that keeps a random model from padding guided JSON with whitespace."""
    ids = token_ids(lambda t: all(c in WHITESPACE for c in t))
    assert ids, "no whitespace tokens found in the test tokenizer"
    return {str(i): -100 for i in ids}


@pytest.fixture(scope="module")
def short_json() -> dict[str, int]:
    """logit_bias towards `"`, `:` and `}`: JSON mode (free keys) then closes its object within a few tokens."""
    ids = token_ids(lambda t: t in ('"', ":", "}"))
    assert len(ids) == 3
    return {str(i): 100 for i in ids}


@pytest.fixture(scope="module")
def tgw(start_module_gw: StartGateway, fleet: Fleet) -> Gateway:
    """A gateway in front of the paced backend only, with the default tool/schema bounds but a schema-depth
    bound of 8 and a tools-bytes bound of 64 KiB (so a test can cross each below the body's own limits)."""
    paced = fleet.paced()
    gateway = start_module_gw(backends=f"127.0.0.1:{paced.port}", max_schema_depth="8", max_tools_bytes="65536")
    gateway.wait_backends_healthy(1)
    return gateway


def oa(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=KEYS["alice"], max_retries=0, timeout=120)


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "pick one"}], "max_tokens": MAX_TOKENS,
            "temperature": 0, **extra}


async def post(gw: Gateway, payload: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=120) as http:
        return await http.post("/v1/chat/completions", json=payload, headers={**auth("alice"), **headers})


def assert_valid_call(call: dict[str, Any], name: str) -> None:
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == name
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


async def assert_engine_answers(gw: Gateway) -> None:
    resp = await post(gw, body(max_tokens=4))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["finish_reason"] in ("stop", "length")


# ---- tool_choice ---------------------------------------------------------------------------------------

async def test_named_tool_choice_makes_one_valid_call(tgw: Gateway, no_padding: dict[str, int]) -> None:
    resp = await post(tgw, body(tools=TOOLS, tool_choice=NAMED, logit_bias=no_padding))
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop"  # vLLM's word for a named call, passed on as it is
    calls = choice["message"]["tool_calls"]
    assert len(calls) == 1
    assert_valid_call(calls[0], "pick")


async def test_required_makes_valid_calls(tgw: Gateway, no_padding: dict[str, int]) -> None:
    resp = await post(tgw, body(tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                logit_bias=no_padding))
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"]
    for call in choice["message"]["tool_calls"]:
        assert_valid_call(call, call["function"]["name"])


async def test_auto_and_none_answer(tgw: Gateway) -> None:
    for choice_param in ("auto", "none"):
        resp = await post(tgw, body(tools=TOOLS, tool_choice=choice_param, max_tokens=16))
        assert resp.status_code == 200, resp.text
        choice = resp.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "length", "tool_calls")
        for call in choice["message"].get("tool_calls") or []:
            assert_valid_call(call, call["function"]["name"])


async def test_streamed_named_call_stitched_by_the_openai_client(tgw: Gateway, no_padding: dict[str, int]) -> None:
    """The deltas (index, id, name, argument fragments) pass through untouched: the SDK's own accumulation
    by `index` gives the same call as the non-streamed answer, and a valid one."""
    client = oa(tgw)
    kwargs: dict[str, Any] = dict(model=MODEL, messages=[{"role": "user", "content": "pick one"}],
                                  max_tokens=MAX_TOKENS, temperature=0, tools=TOOLS, tool_choice=NAMED,
                                  logit_bias=no_padding)
    plain = await client.chat.completions.create(**kwargs)
    calls: dict[int, dict[str, Any]] = {}
    finish, usage, fragments = None, None, 0
    stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []  # the final usage chunk, as vLLM sends it
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "type": "function",
                                                      "function": {"name": "", "arguments": ""}})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["function"]["name"] += delta.function.name or ""
                    call["function"]["arguments"] += delta.function.arguments or ""
                    fragments += 1
    assert finish == plain.choices[0].finish_reason == "stop"
    assert usage is not None and usage.completion_tokens > 0
    assert fragments > 1  # the arguments really came in pieces
    assert list(calls) == [0]
    assert_valid_call(calls[0], "pick")
    expected = plain.choices[0].message.tool_calls
    assert expected is not None and len(expected) == 1
    assert calls[0]["function"]["name"] == expected[0].function.name
    assert json.loads(calls[0]["function"]["arguments"]) == json.loads(expected[0].function.arguments)


# ---- response_format ------------------------------------------------------------------------------------

async def test_json_object_parses(tgw: Gateway, short_json: dict[str, int]) -> None:
    resp = await post(tgw, body(response_format={"type": "json_object"}, logit_bias=short_json))
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict)


async def test_json_schema_validates(tgw: Gateway) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT, "strict": True}}
    resp = await post(tgw, body(response_format=fmt))
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    jsonschema.validate(json.loads(content), VERDICT)
    assert not any(c in content for c in "\r\t\n")  # disable_any_whitespace reached vLLM


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    note: str = Field(max_length=12)


async def test_openai_parse_with_a_pydantic_model(tgw: Gateway) -> None:
    result = await oa(tgw).beta.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "yes or no?"}], max_tokens=MAX_TOKENS,
        temperature=0, response_format=Verdict)
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Verdict)


# ---- bounds and hostile input ---------------------------------------------------------------------------

def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


def tool(name: str, parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters, **extra}}


HOSTILE: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    # id, extra body, status, error code, a word of the message (the setting it names)
    ("200-deep schema", {"tools": [tool("f", nested(200))]}, 400, "invalid_json", "32 levels"),
    ("12-deep schema", {"tools": [tool("f", nested(12))]}, 400, "schema_too_deep", "maxSchemaDepth"),
    ("12-deep response schema", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": nested(12)}}}, 400, "schema_too_deep", "maxSchemaDepth"),
    ("5,000 tools", {"tools": [tool(f"f{i}", {"type": "object"}) for i in range(5000)]}, 400,
     "too_many_tools", "maxTools"),
    ("1 MB schema", {"tools": [tool("f", {"type": "object", "description": "x" * 1_000_000})]}, 400,
     "schema_too_large", "maxSchemaBytes"),
    ("100 tools of 1 KB", {"tools": [tool(f"f{i}", {"type": "object", "description": "x" * 1000})
                                     for i in range(100)]}, 400, "tools_too_large", "maxToolsBytes"),
    ("uncompilable schema", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "nonsense"}}}}, 400, "", "grammar"),
    # compiled (so refused) where vLLM constrains the arguments: a strict tool under a forced call
    ("dangling $ref", {"tools": [tool("f", {"$ref": "#/nowhere"}, strict=True)], "tool_choice": "required"},
     400, "", None),
    ("tool_choice names no tool", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {
        "name": "missing"}}}, 400, "", "tool_choice"),
    ("tool_choice without tools", {"tool_choice": "required"}, 400, "", "tools"),
    ("tool type other than function", {"tools": [{"type": "code_interpreter"}]}, 422, "invalid_request", None),
    ("function name with a space", {"tools": [tool("two words", {})]}, 422, "invalid_request", None),
    ("structured_outputs grammar (vLLM's own)", {"structured_outputs": {"regex": "a*"}}, 400,
     "unknown_parameter", "structured_outputs"),
    ("tool message without tool_call_id", {"messages": [{"role": "user", "content": "x"},
                                                        {"role": "tool", "content": "r"}]},
     422, "invalid_request", "tool_call_id"),
    ("tool_calls on a user message", {"messages": [{"role": "user", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     422, "invalid_request", "assistant"),
]


@pytest.mark.parametrize(("extra", "status", "code", "word"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
async def test_hostile_tools_and_schemas_get_a_4xx_and_the_engine_carries_on(
    tgw: Gateway, extra: dict[str, Any], status: int, code: str, word: str | None
) -> None:
    resp = await post(tgw, body(max_tokens=16, **extra))
    assert resp.status_code == status, resp.text[:500]
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"  # OpenAI's type, also for vLLM's own refusals
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    if code:
        assert error["code"] == code
    if word:
        assert word in error["message"], error["message"]
    await assert_engine_answers(tgw)


async def test_response_format_with_required_tool_choice_is_answered_not_refused(
    tgw: Gateway, no_padding: dict[str, int]
) -> None:
    """Reported to hang older vLLMs; the pinned 0.32 ignores the format when a call is forced (tried in the
    README's table): so the gateway passes it on, and the engine keeps answering."""
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    resp = await post(tgw, body(tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                response_format=fmt, logit_bias=no_padding))
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    for call in choice["message"]["tool_calls"]:
        assert_valid_call(call, call["function"]["name"])
    await assert_engine_answers(tgw)


# ---- sessions -------------------------------------------------------------------------------------------

@pytest.fixture
def stored(redis_server: RedisHandle) -> Iterator[Any]:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, password=redis_server.password,
                         decode_responses=True)

    def read(session_id: str) -> list[dict[str, Any]]:
        return [json.loads(m) for m in client.lrange(f"qs:session:{session_id}:messages", 0, -1)]

    yield read
    client.close()


async def test_a_tool_round_trip_through_a_session_is_stored_in_order(
    tgw: Gateway, no_padding: dict[str, int], stored: Any
) -> None:
    """user -> assistant tool_calls (streamed: stitched by the gateway for storage) -> tool result -> answer,
    each request carrying only its new messages; the session holds the whole exchange, in order."""
    session = "tools-" + secrets.token_hex(8)
    async with httpx.AsyncClient(base_url=tgw.url, timeout=120) as http:
        async with http.stream("POST", "/v1/chat/completions", headers={**auth("alice"), "X-Session-Id": session},
                               json=body(tools=TOOLS, tool_choice=NAMED, logit_bias=no_padding,
                                         stream=True)) as resp:
            assert resp.status_code == 200
            events = (await resp.aread()).decode()
        assert events.rstrip().endswith("data: [DONE]")
        after_call = stored(session)
        assert [m["role"] for m in after_call] == ["user", "assistant"]
        call = after_call[1]["tool_calls"][0]
        assert_valid_call(call, "pick")

        result = {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"picked": True})}
        resp2 = await http.post("/v1/chat/completions", headers={**auth("alice"), "X-Session-Id": session},
                                json={"model": MODEL, "messages": [result], "tools": TOOLS, "max_tokens": 8,
                                      "temperature": 0})
        assert resp2.status_code == 200, resp2.text
        assert resp2.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
        # The stored exchange is readable through the API too (the web page renders it as text)
        listed = (await http.get(f"/v1/sessions/{session}", headers=auth("alice"))).json()["messages"]
    history = stored(session)
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1]["tool_calls"][0] == call and history[1]["content"] is None
    assert history[2] == result
    assert listed == history


def test_trimming_keeps_whole_exchanges() -> None:
    call: dict[str, Any] = {"id": "c1", "type": "function", "function": {"name": "pick", "arguments": "{}"}}
    calling: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
    old: list[dict[str, Any]] = [{"role": "user", "content": "u1 " * 40}, calling,
           {"role": "tool", "tool_call_id": "c1", "content": "r" * 40}, {"role": "assistant", "content": "a1"}]
    recent: list[dict[str, Any]] = [{"role": "user", "content": "u2"}, calling]
    history = old + recent
    assert [len(g) for g in exchanges(history)] == [4, 2]
    assert exchanges([{"role": "tool", "tool_call_id": "c0", "content": "orphan"}, *recent]) == [recent]
    new_turn = [{"role": "user", "content": "u3"}]
    # a budget that fits the recent exchange but not the old one: the old one goes whole
    sent = compose(stored_system=None, history=history, request_messages=new_turn, budget=40)
    assert sent == recent + new_turn
    # a tool result continuing the last exchange keeps that exchange even over budget
    tool_result = [{"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    sent = compose(stored_system="sys", history=history, request_messages=tool_result, budget=1)
    assert sent == [{"role": "system", "content": "sys"}, *recent, *tool_result]
    # never a tool message without the assistant call before it
    for budget in range(1, 200):
        sent = compose(stored_system=None, history=history, request_messages=new_turn, budget=budget)
        assert sent[0]["role"] == "user"


def test_stream_account_stitches_tool_call_deltas() -> None:
    account = StreamAccount(collect_text=True, forward_usage_chunk=False)
    deltas = [
        {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "pick", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{\"color\": "}}]},
        {"tool_calls": [{"index": 1, "id": "c2", "type": "function", "function": {"name": "tag", "arguments": "{}"}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "\"red\"}"}}]},
    ]
    block = b"".join(f"data: {json.dumps({'choices': [{'index': 0, 'delta': d}]})}\n\n".encode() for d in deltas)
    assert account.scan(block) == block  # forwarded untouched
    assert account.answer() == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "pick", "arguments": "{\"color\": \"red\"}"}},
        {"id": "c2", "type": "function", "function": {"name": "tag", "arguments": "{}"}},
    ]}
