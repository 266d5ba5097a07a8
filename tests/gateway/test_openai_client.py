"""The official `openai` client, unchanged, against the gateway: plain, streaming, completions, models."""

from __future__ import annotations

import httpx
import openai

from tests.gateway.conftest import KEYS, MODEL, Gateway, auth, chat_body


def client(gw: Gateway, key: str = "alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=KEYS[key], max_retries=0, timeout=60)


async def test_chat_completion(gw: Gateway) -> None:
    resp = await client(gw).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=12, temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert resp.model == MODEL
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage is not None and resp.usage.completion_tokens == 12  # ignore_eos passed through
    assert resp.usage.prompt_tokens > 0


async def test_chat_stream_with_usage(gw: Gateway) -> None:
    stream = await client(gw).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=20, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 20
    assert "".join(pieces)


async def test_stream_without_usage_request_gets_no_usage_chunk(gw: Gateway) -> None:
    """The gateway asks vLLM for usage itself; a client that did not ask must not see the extra chunk."""
    async with gw.client() as http:
        async with http.stream("POST", "/v1/chat/completions", headers=auth("alice"),
                               json=chat_body(stream=True, max_tokens=5)) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-accel-buffering"] == "no"
            assert resp.headers["cache-control"] == "no-cache"
            assert resp.headers["content-type"].startswith("text/event-stream")
            body = (await resp.aread()).decode()
    events = [e for e in body.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    assert '"usage":{' not in body.replace(" ", "")


async def test_stream_matches_non_stream_at_temperature_zero(gw: Gateway) -> None:
    oa = client(gw)
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Determinism"}], max_tokens=16, temperature=0)
    plain = await oa.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    stream = await oa.chat.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == plain.choices[0].message.content


async def test_completions_plain_and_stream(gw: Gateway) -> None:
    oa = client(gw)
    resp = await oa.completions.create(model=MODEL, prompt="Once upon", max_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert resp.usage is not None and resp.usage.completion_tokens == 6
    stream = await oa.completions.create(model=MODEL, prompt="Once upon", max_tokens=6, temperature=0, stream=True)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == resp.choices[0].text


async def test_models_lists_the_backends_model(gw: Gateway) -> None:
    models = await client(gw).models.list()
    assert [m.id for m in models.data] == [MODEL]


async def test_request_id_is_echoed_and_generated(gw: Gateway) -> None:
    async with gw.client() as http:
        given = await http.post("/v1/chat/completions", headers={**auth("alice"), "X-Request-Id": "trace-42"},
                                json=chat_body())
        fresh = await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body())
    assert given.headers["x-request-id"] == "trace-42"
    assert fresh.headers["x-request-id"].startswith("gw-")  # ours (also what vLLM got)
    assert '"client_request_id": "trace-42"' in gw.log()  # the client's, next to ours in the log


async def test_metrics_count_requests_and_tokens(gw: Gateway) -> None:
    async with gw.client() as http:
        await http.post("/v1/chat/completions", headers=auth("alice"), json=chat_body(max_tokens=4))
        text = (await http.get("/metrics")).text
    assert 'gateway_requests_total{model="tiny-qwen2",route="/v1/chat/completions",status="200"}' in text
    assert 'gateway_tokens_total{direction="completion",model="tiny-qwen2"}' in text
    assert "gateway_backend_healthy{" in text


async def test_health_and_readiness(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["redis"] == "up"
    assert all(b["healthy"] for b in body["backends"].values()) and len(body["backends"]) == 2
