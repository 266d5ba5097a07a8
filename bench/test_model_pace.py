"""How fast each test model decodes on this machine: real vLLM (CPU build), one stream at a time, then
four at once. Reports ready time, time to first token, tokens/s per stream and the gap between chunks.

    .venv/bin/python -m bench pace [--tokens 600] [--models paced-qwen2 tiny-qwen2]

Results go to build/bench/test-model-pace.json; app/inference/README.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from typing import Any

import httpx

from app.inference.tiny_model import FAST_MODEL, PACED_MODEL, ensure_test_model
from localstack.services import REPO_ROOT, start_vllm
from localstack.settings import local_settings

OUT = REPO_ROOT / "build" / "bench"


async def one_stream(http: httpx.AsyncClient, model: str, tokens: int) -> dict[str, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": tokens, "ignore_eos": True, "stream": True}
    started = time.perf_counter()
    arrivals: list[float] = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                arrivals.append(time.perf_counter() - started)
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    span = arrivals[-1] - arrivals[0]
    return {
        "chunks": len(arrivals),
        "ttft_ms": arrivals[0] * 1000,
        "tokens_per_s": (len(arrivals) - 1) / span if span > 0 else float("inf"),
        "gap_p50_ms": statistics.median(gaps) * 1000,
        "gap_p99_ms": gaps[int(len(gaps) * 0.99) - 1] * 1000,
        "gap_max_ms": gaps[-1] * 1000,
    }


async def measure(model: str, tokens: int) -> dict[str, Any]:
    settings = local_settings("sk-local-bench", overrides={"model": {"name": model, "servedName": model}})
    started = time.monotonic()
    vllm = start_vllm(OUT / f"pace-{model}", settings=settings, model_dir=ensure_test_model(model),
                      served_name=model)
    ready_s = time.monotonic() - started
    try:
        async with httpx.AsyncClient(base_url=vllm.url, timeout=600) as http:
            await one_stream(http, model, 16)  # warm-up
            single = await one_stream(http, model, tokens)
            four = await asyncio.gather(*(one_stream(http, model, tokens // 3) for _ in range(4)))
    finally:
        vllm.stop()
    return {"model": model, "ready_s": ready_s, "tokens": tokens, "one_stream": single,
            "four_streams_tokens_per_s_each": statistics.mean(r["tokens_per_s"] for r in four),
            "four_streams_gap_p99_ms": max(r["gap_p99_ms"] for r in four)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pace")
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--models", nargs="+", default=[PACED_MODEL, FAST_MODEL])
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    results = [asyncio.run(measure(model, args.tokens)) for model in args.models]
    print(f"{'model':12} {'ready':>6} {'TTFT':>7} {'tok/s':>7} {'gap p50':>8} {'p99':>6} {'max':>6} {'4 streams':>10}")
    for r in results:
        s = r["one_stream"]
        print(f"{r['model']:12} {r['ready_s']:5.1f}s {s['ttft_ms']:5.0f}ms {s['tokens_per_s']:7.1f} "
              f"{s['gap_p50_ms']:6.1f}ms {s['gap_p99_ms']:5.0f} {s['gap_max_ms']:5.0f} "
              f"{r['four_streams_tokens_per_s_each']:7.1f}/s")
    (OUT / "test-model-pace.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0
