"""The `openai` client against the local stack, through Nginx -> gateway -> vLLM (CPU): all real."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from localstack.stack import ENDPOINT_FILE, Endpoint, LocalStack
from tests.waiting import metric


def test_endpoint_file_says_how_to_connect(local_stack: LocalStack, endpoint: Endpoint) -> None:
    written = json.loads((local_stack.root / ENDPOINT_FILE).read_text())
    assert written == {"url": endpoint.url, "api_key": endpoint.api_key, "model": endpoint.model}
    assert endpoint.url.startswith("http://127.0.0.1:")


def test_models_lists_the_served_model(client: openai.OpenAI, endpoint: Endpoint) -> None:
    assert [m.id for m in client.models.list().data] == [endpoint.model]


def test_stream_arrives_incrementally_not_buffered(
    client: openai.OpenAI, endpoint: Endpoint, local_stack: LocalStack
) -> None:
    """The first words reach the client while vLLM is still generating the rest: nothing on the path
    (Nginx, gateway) holds the stream back. The paced model takes seconds for 100 tokens, so a buffering
    hop would deliver the first chunk only after vLLM had finished."""
    vllm = local_stack.vllm[0]
    stream = client.chat.completions.create(
        model=endpoint.model, messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=100, stream=True, extra_body={"ignore_eos": True},
    )
    pieces: list[str] = []
    running_at_first_chunk = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if running_at_first_chunk is None:
                running_at_first_chunk = metric(vllm.url, "vllm:num_requests_running")
            pieces.append(chunk.choices[0].delta.content)
    assert running_at_first_chunk == 1, "vLLM had already finished when the first chunk arrived: buffered"
    assert len(pieces) >= 80, f"only {len(pieces)} content chunks for 100 tokens"
    assert "".join(pieces).strip()


def test_non_streamed_answer(client: openai.OpenAI, endpoint: Endpoint) -> None:
    reply = client.chat.completions.create(
        model=endpoint.model, messages=[{"role": "user", "content": "Say something."}],
        max_tokens=16, extra_body={"ignore_eos": True},
    )
    assert reply.model == endpoint.model
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content is not None
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_session_history_carries_over_between_requests(
    client: openai.OpenAI, endpoint: Endpoint, http: httpx.Client
) -> None:
    session = f"e2e-{uuid.uuid4().hex}"
    headers = {"X-Session-Id": session}
    turns = []
    for text in ("My name is Ada.", "What is my name?"):
        reply = client.chat.completions.create(
            model=endpoint.model, messages=[{"role": "user", "content": text}], max_tokens=12,
            temperature=0, extra_headers=headers,
        )
        turns.append(reply)
    first, second = (t.usage for t in turns)
    assert first is not None and second is not None
    # The second prompt carries the first exchange: at least its answer's tokens more than the first prompt.
    assert second.prompt_tokens >= first.prompt_tokens + first.completion_tokens

    stored = http.get(f"/v1/sessions/{session}")
    assert stored.status_code == 200, stored.text
    messages = stored.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "My name is Ada."
    assert messages[1]["content"] == turns[0].choices[0].message.content
    assert messages[3]["content"] == turns[1].choices[0].message.content


def test_streamed_turns_are_kept_in_the_session_too(
    client: openai.OpenAI, endpoint: Endpoint, http: httpx.Client
) -> None:
    session = f"e2e-{uuid.uuid4().hex}"
    stream = client.chat.completions.create(
        model=endpoint.model, messages=[{"role": "user", "content": "hello"}], max_tokens=20, stream=True,
        extra_headers={"X-Session-Id": session},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    # Acknowledged means stored: the gateway saves the turn before it sends `[DONE]`.
    resp = http.get(f"/v1/sessions/{session}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["messages"] == [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": text},
    ]


def test_wrong_key_is_an_openai_401_through_nginx(endpoint: Endpoint) -> None:
    bad = openai.OpenAI(base_url=f"{endpoint.url}/v1", api_key="sk-local-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model=endpoint.model, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 401
    body = err.value.response.json()
    assert set(body["error"]) >= {"message", "type"}


def test_the_web_page_is_served_and_self_contained(http: httpx.Client) -> None:
    for path in ("/", "/app.js", "/style.css"):
        resp = http.get(path)
        assert resp.status_code == 200, path
        # No CDN, fonts or other hosts: everything the page needs comes from this origin.
        assert "http://" not in resp.text and "https://" not in resp.text, path
    assert "<script src=\"app.js\"></script>" in http.get("/").text
