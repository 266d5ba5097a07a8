"""The gateway's added latency: the same requests straight to vLLM and through the gateway.

One real vLLM (CPU build, tiny model), Redis and one gateway (auth, rate limits, metrics all on), started
with the local stack's code. At each concurrency the two paths run interleaved batches, so drift in the
machine's load hits both alike. Reports median and p90 end-to-end latency (non-streaming, 16 tokens) and
time to first token (streaming), and the median difference. Results also go to build/bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from app.inference.tiny_model import FAST_MODEL, ensure_test_model
from localstack.services import REPO_ROOT, ServiceHandle, start_gateway, start_redis, start_vllm
from localstack.settings import key_hash, local_settings
from localstack.stack import gateway_env

OUT = REPO_ROOT / "build" / "bench"
API_KEY = "sk-bench-0123456789abcdef"


@dataclass
class Sample:
    total: list[float]
    ttft: list[float]


def body(stream: bool, model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Benchmark me, please."}],
            "max_tokens": 16, "temperature": 0, "ignore_eos": True, "stream": stream}


async def one(http: httpx.AsyncClient, url: str, headers: dict[str, str], model: str, stream: bool) -> float:
    start = time.perf_counter()
    if not stream:
        resp = await http.post(url, json=body(False, model), headers=headers)
        resp.raise_for_status()
        return time.perf_counter() - start
    async with http.stream("POST", url, json=body(True, model), headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line.replace(" ", "") and '"content":""' not in line:
                return time.perf_counter() - start
    raise RuntimeError("stream without content")


async def batch(url: str, headers: dict[str, str], model: str, concurrency: int, rounds: int, stream: bool,
                http: httpx.AsyncClient) -> list[float]:
    out: list[float] = []
    for _ in range(rounds):
        out += await asyncio.gather(*(one(http, url, headers, model, stream) for _ in range(concurrency)))
    return out


async def measure(direct: str, gateway: str, model: str, levels: list[int], requests: int) -> dict[str, Any]:
    gw_headers = {"Authorization": f"Bearer {API_KEY}"}
    results: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        for path in (direct, gateway):  # warm-up: connections, caches
            await batch(path, gw_headers, model, 4, 2, False, http)
        for c in levels:
            rounds = max(requests // c, 3)
            samples = {"direct": Sample([], []), "gateway": Sample([], [])}
            for _ in range(3):  # interleave
                for name, url in (("direct", direct), ("gateway", gateway)):
                    samples[name].total += await batch(url, gw_headers, model, c, rounds // 3 or 1, False, http)
                    samples[name].ttft += await batch(url, gw_headers, model, c, rounds // 3 or 1, True, http)
            row: dict[str, Any] = {}
            for name, s in samples.items():
                row[name] = {
                    "n": len(s.total),
                    "median_ms": statistics.median(s.total) * 1000,
                    "p90_ms": statistics.quantiles(s.total, n=10)[-1] * 1000,
                    "ttft_median_ms": statistics.median(s.ttft) * 1000,
                }
            row["added_median_ms"] = row["gateway"]["median_ms"] - row["direct"]["median_ms"]
            row["added_ttft_median_ms"] = row["gateway"]["ttft_median_ms"] - row["direct"]["ttft_median_ms"]
            results[str(c)] = row
            print(f"concurrency {c:>2}: direct {row['direct']['median_ms']:7.1f} ms  gateway "
                  f"{row['gateway']['median_ms']:7.1f} ms  added {row['added_median_ms']:+6.1f} ms (median, "
                  f"n={row['gateway']['n']}) | TTFT direct {row['direct']['ttft_median_ms']:6.1f} ms gateway "
                  f"{row['gateway']['ttft_median_ms']:6.1f} ms added {row['added_ttft_median_ms']:+6.1f} ms",
                  flush=True)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=48, help="requests per path per level (about)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    settings = local_settings(API_KEY)
    model = settings.model.served_name
    work = OUT / "run"
    started: list[ServiceHandle] = []
    try:
        print("starting Redis, vLLM (CPU, tiny model) and the gateway ...", flush=True)
        redis = start_redis(work / "redis", settings=settings)
        started.append(redis)
        vllm = start_vllm(work / "vllm", settings=settings, model_dir=ensure_test_model(FAST_MODEL), served_name=model)
        started.append(vllm)
        env = gateway_env(settings, [vllm], redis, api_key_hashes={key_hash(API_KEY): "bench"})
        env.update({"GATEWAY_RATE_LIMIT_RPM": "1000000", "GATEWAY_RATE_LIMIT_CONCURRENT": "1000",
                    "GATEWAY_LOG_LEVEL": "WARNING"})
        gateway = start_gateway(work / "gateway", env=env)
        started.append(gateway)
        results = asyncio.run(measure(f"{vllm.url}/v1/chat/completions", f"{gateway.url}/v1/chat/completions",
                                      model, levels, args.requests))
    finally:
        for handle in reversed(started):
            handle.stop()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "gateway_latency.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"written to {path.relative_to(REPO_ROOT)}")
    return 0

