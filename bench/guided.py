"""What guided decoding costs on the paced test model: a request constrained by a JSON Schema (response_format)
or a named tool call, against an unguided request that generates the same number of tokens, interleaved.

    .venv/bin/python -m bench guided [--runs 5] [--model paced-qwen2]

One vLLM (CPU build) with the stack's own flags (xgrammar, no whitespace, the Hermes tool parser), straight to
it (the gateway adds the same for both). A schema's first use compiles its grammar (`cold`); later uses of the
same schema hit xgrammar's cache. A request that fails or whose output does not validate fails the run (exit 1).
Results: build/bench/guided.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import httpx
import jsonschema

from app.inference.tiny_model import PACED_MODEL, ensure_test_model
from localstack.services import REPO_ROOT, start_vllm
from localstack.settings import local_settings

OUT = REPO_ROOT / "build" / "bench"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                           "note": {"type": "string", "maxLength": 12}},
          "required": ["answer", "note"], "additionalProperties": False}
TOOL: dict[str, Any] = {"type": "function", "function": {"name": "pick", "strict": True, "parameters": {
    "type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                                     "count": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["color", "count"], "additionalProperties": False}}}


class BenchError(RuntimeError):
    pass


def whitespace_bias(model_dir: Any) -> dict[str, int]:
    """A tool call's arguments are not covered by disable_any_whitespace (vLLM 0.32's structural tags): keep
    a random model from padding them (as in tests/gateway/test_tools_structured.py)."""
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return {str(i): -100 for t, i in vocab.items() if t and all(c in "ĠĊĉčċČ" for c in t)}


def timed(http: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    resp = http.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - started
    if resp.status_code != 200:
        raise BenchError(f"HTTP {resp.status_code}: {resp.text[:300]}")
    return elapsed, resp.json()


def guided_schema(http: httpx.Client, model: str, bias: dict[str, int]) -> tuple[float, int]:
    body = {"model": model, "messages": [{"role": "user", "content": "yes or no?"}], "max_tokens": 200,
            "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {
                "name": "verdict", "schema": SCHEMA, "strict": True}}}
    elapsed, data = timed(http, body)
    choice = data["choices"][0]
    if choice["finish_reason"] != "stop":
        raise BenchError(f"json_schema answer ended with {choice['finish_reason']}")
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
    return elapsed, int(data["usage"]["completion_tokens"])


def guided_tool(http: httpx.Client, model: str, bias: dict[str, int]) -> tuple[float, int]:
    body = {"model": model, "messages": [{"role": "user", "content": "pick one"}], "max_tokens": 300,
            "temperature": 0, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "pick"}},
            "logit_bias": bias}
    elapsed, data = timed(http, body)
    calls = data["choices"][0]["message"].get("tool_calls") or []
    if len(calls) != 1:
        raise BenchError(f"named tool call gave {len(calls)} calls ({data['choices'][0]['finish_reason']})")
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), TOOL["function"]["parameters"])
    return elapsed, int(data["usage"]["completion_tokens"])


def unguided(http: httpx.Client, model: str, tokens: int) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "yes or no?"}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True}
    elapsed, data = timed(http, body)
    if int(data["usage"]["completion_tokens"]) != tokens:
        raise BenchError("the unguided request did not generate the tokens asked for")
    return elapsed


def measure(model: str, runs: int) -> dict[str, Any]:
    settings = local_settings("sk-local-bench", overrides={"model": {"name": model, "servedName": model}})
    model_dir = ensure_test_model(model)
    vllm = start_vllm(OUT / f"guided-{model}", settings=settings, model_dir=model_dir, served_name=model)
    bias = whitespace_bias(model_dir)
    results: dict[str, Any] = {"model": model, "runs": runs}
    try:
        with httpx.Client(base_url=vllm.url, timeout=600) as http:
            unguided(http, model, 8)  # warm-up, no grammar
            for name, guided in (("json_schema", guided_schema), ("named_tool_call", guided_tool)):
                cold, tokens = guided(http, model, bias)
                warm, plain = [], []
                for _ in range(runs):  # interleaved: the machine's load hits both alike
                    elapsed, tokens = guided(http, model, bias)
                    warm.append(elapsed)
                    plain.append(unguided(http, model, tokens))
                results[name] = {"tokens": tokens, "cold_s": cold, "guided_p50_s": statistics.median(warm),
                                 "unguided_p50_s": statistics.median(plain),
                                 "guided_s": warm, "unguided_s": plain}
    finally:
        vllm.stop()
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench guided")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default=PACED_MODEL)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        results = measure(args.model, args.runs)
    except (BenchError, jsonschema.ValidationError, ValueError) as err:
        print(f"guided bench failed: {err}")
        return 1
    print(f"{'request':16} {'tokens':>6} {'cold':>7} {'guided p50':>11} {'unguided p50':>13} {'ratio':>6}")
    for name in ("json_schema", "named_tool_call"):
        r = results[name]
        print(f"{name:16} {r['tokens']:6d} {r['cold_s']:6.2f}s {r['guided_p50_s']:10.2f}s "
              f"{r['unguided_p50_s']:12.2f}s {r['guided_p50_s'] / r['unguided_p50_s']:5.2f}x")
    (OUT / "guided.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0
