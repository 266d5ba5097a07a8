"""Bad requests get the documented 4xx in OpenAI's error shape: never a 500, never a hang."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import MODEL, Gateway, auth

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]

# (name, path, body (dict -> JSON, bytes -> raw), extra headers, status, error code or None = vLLM's own)
CASES: list[tuple[str, str, Any, dict[str, str], int, str | None]] = [
    ("not json", CHAT, b"{nope", {}, 400, "invalid_json"),
    ("json array", CHAT, b"[1, 2]", {}, 400, "invalid_json"),
    ("missing messages", CHAT, {"model": MODEL}, {}, 422, "invalid_request"),
    ("empty messages", CHAT, {"model": MODEL, "messages": []}, {}, 422, "invalid_request"),
    ("bad role", CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, {}, 422,
     "invalid_request"),
    ("content not text", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 42}]}, {}, 422,
     "invalid_request"),
    ("stream not bool", CHAT, {"model": MODEL, "messages": USER, "stream": "yes"}, {}, 422, "invalid_request"),
    ("max_tokens zero", CHAT, {"model": MODEL, "messages": USER, "max_tokens": 0}, {}, 422, "invalid_request"),
    ("n too large", CHAT, {"model": MODEL, "messages": USER, "n": 99}, {}, 422, "invalid_request"),
    ("max_tokens over cap", CHAT, {"model": MODEL, "messages": USER, "max_tokens": 100000}, {}, 400,
     "max_tokens_too_large"),
    ("max_completion_tokens over cap", CHAT, {"model": MODEL, "messages": USER, "max_completion_tokens": 99999},
     {}, 400, "max_tokens_too_large"),
    ("unknown model", CHAT, {"model": "gpt-17", "messages": USER}, {}, 404, "model_not_found"),
    ("too many messages", CHAT, {"model": MODEL, "messages": USER * 300}, {}, 400, "too_many_messages"),
    ("input too long", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "a" * 210_000}]}, {},
     400, "input_too_long"),
    ("body too large", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "a" * 1_100_000}]}, {},
     413, "request_too_large"),
    ("session id in body not a string", CHAT, {"model": MODEL, "messages": USER, "session_id": 5}, {}, 400,
     "invalid_session_id"),
    ("temperature out of range", CHAT, {"model": MODEL, "messages": USER, "temperature": -3}, {}, 422,
     "invalid_request"),
    # hardening (issue 11): anything the parser cannot take is a 400, never a 5xx
    ("100,000 nested [", CHAT, b"[" * 100_000, {}, 400, "invalid_json"),
    ("messages nested 50,000 deep", CHAT,
     b'{"model": "x", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", {}, 400, "invalid_json"),
    ("nested 40 deep inside a field", CHAT,
     json.dumps({"messages": USER, "stop": json.loads("[" * 40 + "]" * 40)}).encode(), {}, 400, "invalid_json"),
    ("invalid UTF-8", CHAT, b'{"messages": [{"role": "user", "content": "' + bytes([0xFF, 0xFE]) + b'"}]}', {},
     400, "invalid_json"),
    ("lone surrogate", CHAT, b'{"messages": [{"role": "user", "content": "\\ud800"}]}', {}, 400, "invalid_json"),
    ("NaN", CHAT, b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', {}, 400,
     "invalid_json"),
    ("1e999", CHAT, b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}', {}, 400,
     "invalid_json"),
    ("a 5,000-digit number", CHAT, b'{"messages": [], "max_tokens": ' + b"9" * 5000 + b"}", {}, 400,
     "invalid_json"),
    ("empty body", CHAT, b"", {}, 400, "invalid_json"),
    ("unknown field ignore_eos's cousin", CHAT, {"messages": USER, "min_tokens": 4000}, {}, 400,
     "unknown_parameter"),
    ("prompt_logprobs", "/v1/completions", {"prompt": "x", "prompt_logprobs": 20}, {}, 400, "unknown_parameter"),
    ("prompt_embeds", "/v1/completions", {"prompt": "x", "prompt_embeds": "AAAA"}, {}, 400, "unknown_parameter"),
    ("chat_template", CHAT, {"messages": USER, "chat_template": "{{ 7*7 }}"}, {}, 400, "unknown_parameter"),
    ("unknown field in a message (the deprecated function_call)", CHAT, {"messages": [
        {"role": "assistant", "content": "x", "function_call": {"name": "f", "arguments": "{}"}}]}, {},
     400, "unknown_parameter"),
    ("best_of (not served by this vLLM)", "/v1/completions", {"prompt": "x", "best_of": 16}, {}, 400,
     "unknown_parameter"),
    ("image content part", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/"}}]}]}, {}, 400, "unknown_parameter"),
    ("audio content part", CHAT, {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, {}, 422,
     "invalid_request"),
    # n x prompts over max_sequences_per_request (16 here)
    ("5 prompts x n 4", "/v1/completions", {"prompt": ["a", "b", "c", "d", "e"], "n": 4}, {}, 400,
     "too_many_sequences"),
    ("17 token prompts", "/v1/completions", {"prompt": [[1, 2]] * 17}, {}, 400, "too_many_sequences"),
    ("10,000 prompts", "/v1/completions", {"prompt": ["a"] * 10_000}, {}, 422, "invalid_request"),
    ("negative token id", "/v1/completions", {"prompt": [1, -5]}, {}, 422, "invalid_request"),
    ("empty prompt list", "/v1/completions", {"prompt": []}, {}, 422, "invalid_request"),
    ("messages not a list", CHAT, {"messages": {"role": "user"}}, {}, 422, "invalid_request"),
    ("model not a string", CHAT, {"model": 7, "messages": USER}, {}, 422, "invalid_request"),
    ("stop not strings", CHAT, {"messages": USER, "stop": [1, 2]}, {}, 422, "invalid_request"),
    ("logit_bias out of range", CHAT, {"messages": USER, "logit_bias": {"5": 1000}}, {}, 422, "invalid_request"),
    ("stream_options unknown key", CHAT, {"messages": USER, "stream": True, "stream_options": {"x": 1}}, {}, 400,
     "unknown_parameter"),
    ("prompt longer than the context", CHAT,
     {"model": MODEL, "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(20000))}]},
     {}, 400, None),
    ("completion without prompt", "/v1/completions", {"model": MODEL}, {}, 422, "invalid_request"),
    ("completion with a session", "/v1/completions", {"model": MODEL, "prompt": "x"},
     {"X-Session-Id": "sess-12345678"}, 400, "invalid_session_id"),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input(
    gw: Gateway, name: str, path: str, body: Any, headers: dict[str, str], status: int, code: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with gw.client() as http:
        resp = await http.post(path, content=content,
                               headers={**auth("alice"), "Content-Type": "application/json", **headers})
    assert resp.status_code == status, resp.text[:500]
    error = resp.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status != 404 else "not_found_error") or code is None
    if code is not None:
        assert error["code"] == code


async def test_chunked_body_over_the_limit_is_413(gw: Gateway) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 32768

    async with gw.client() as http:
        resp = await http.post(CHAT, content=chunks(), headers=auth("alice"))
    assert resp.status_code == 413


async def test_unknown_route_and_wrong_method(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.url) as http:
        missing = await http.get("/v1/nothing-here")
        wrong = await http.get(CHAT)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert wrong.status_code == 405 and "error" in wrong.json()
