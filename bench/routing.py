"""`python -m bench routing` (`make bench ROUTING=1`): routing policies on the same requests, two real vLLMs.

Two vLLM CPU replicas (the fast test model, prefix caching on, a small KV cache each so a workload's working
set does not fit one replica), Redis, and in front of them, one after another:
- the gateway with `round_robin`, `session` (before issue 20: session rendezvous, else least outstanding) and
  `prefix` (prefix-aware with bounded load; app/gateway/backends/prefix_aware.py);
- the anchor, `vllm-router` (PyPI, .venv-router): `cache_aware` at its defaults and tuned, `consistent_hash`
  on the session header.
Workloads (seeded; Poisson arrivals; a warm-up discarded; streamed; 16 tokens out so prefill dominates):
- W1: tenants with a long shared context, multi-turn users resending the whole history (half also send a
  session id: through the gateway those send only the new turn, the gateway adds the history);
- W2: a few hot documents with Zipf popularity, no session ids (the load bound's case);
- W3: nothing shared (the control).
Every prompt of a run starts with a tag of its own, so each policy starts from a cold cache.
Per point: TTFT p50/p95, hit rate from vLLM's counters (total, per replica), the p95 over 10 s windows of
max/mean prefill tokens computed per replica, throughput, errors. And the gateway's decision time p99 for a
16k-token prompt (in process). Writes build/bench/routing.json and routing.png; a point with an error fails
the run (exit 1). `--smoke` runs every path once, briefly (tests/bench_smoke/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.gateway.backends.pool import BackendPool
from app.gateway.backends.routing import make_router
from app.gateway.metrics import Metrics
from app.gateway.settings import RoutingTuning
from app.inference.tiny_model import FAST_MODEL, ensure_test_model
from localstack.processes import ManagedProcess, free_port, http_ok
from localstack.services import (
    REPO_ROOT,
    ServiceHandle,
    VllmHandle,
    serves_model,
    start_gateway,
    start_redis,
    vllm_command,
    vllm_process,
)
from localstack.settings import key_hash, local_settings
from localstack.stack import gateway_env
from stackspec.settings import StackSettings

OUT = REPO_ROOT / "build" / "bench"
ROUTER = REPO_ROOT / ".venv-router" / "bin" / "vllm-router"
API_KEY = "sk-bench-routing-0123456789"
KV_BYTES_PER_TOKEN = 1024  # the fast test model: 2 layers x 2 KV heads x 64 x 2 (K, V) x 2 bytes
# Small replicas: 3,072 tokens of KV each (3 MiB) hold two of W1's tenant contexts (~1,000 tokens each,
# this tokenizer makes ~2 characters a token of these words) or three of W2's documents, not all of them.
MAX_MODEL_LEN = 2048
WORDS = ("alpha beta gamma delta omega kappa sigma theta report engine cluster replica cache token prefix "
         "latency tenant policy budget invoice contract schedule").split()


# ---- workloads ------------------------------------------------------------------------------------------

@dataclass
class Turn:
    user: str


@dataclass
class Conversation:
    start: float  # seconds after the run starts
    system: str
    turns: list[Turn]
    session: bool = False  # the client sends a session id (and, to the gateway, only the new turn)


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def poisson_starts(rng: random.Random, rate: float, duration: float) -> list[float]:
    starts, t = [], rng.expovariate(rate)
    while t < duration:
        starts.append(t)
        t += rng.expovariate(rate)
    return starts or [0.0]  # a very short run (--smoke) still sends one


def workload(name: str, seed: int, rate: float, duration: float) -> list[Conversation]:
    rng = random.Random(f"{name}-{seed}")
    starts = poisson_starts(rng, rate, duration)
    if name == "W1":  # 3 tenants' long contexts; conversations of 3-4 turns, half with a session id
        tenants = [text(rng, 300) for _ in range(3)]
        return [Conversation(s, rng.choice(tenants), [Turn(text(rng, 25)) for _ in range(rng.randint(3, 4))],
                             session=i % 2 == 0) for i, s in enumerate(starts)]
    if name == "W2":  # 6 hot documents, Zipf popularity (s = 1.2), one question each
        docs = [text(rng, 250) for _ in range(6)]
        weights = [1 / (k + 1) ** 1.2 for k in range(len(docs))]
        return [Conversation(s, rng.choices(docs, weights)[0], [Turn(text(rng, 20))]) for s in starts]
    return [Conversation(s, text(rng, 300), [Turn(text(rng, 20))]) for s in starts]  # W3: nothing shared


# ---- targets ------------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    url: str
    gateway: bool  # the gateway (auth, sessions) or vllm-router (plain OpenAI, no sessions)
    start: Callable[[], ServiceHandle]


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    completed: int = 0  # turns answered inside the measured window
    answered: int = 0  # every turn answered, warm-up included (what vLLM's counters must show at the end)


async def run_conversation(http: httpx.AsyncClient, target: Target, conv: Conversation, tag: str, sid: str,
                           measured_from: float, t0: float, result: Result, model: str) -> None:
    await asyncio.sleep(max(conv.start - (time.perf_counter() - t0), 0))
    history: list[dict[str, str]] = [{"role": "system", "content": f"{tag} {conv.system}"}]
    headers = {"Authorization": f"Bearer {API_KEY}"} if target.gateway else {}
    if conv.session:
        headers["X-Session-Id"] = sid
    for i, turn in enumerate(conv.turns):
        history.append({"role": "user", "content": turn.user})
        # Through the gateway a session's client sends only what is new: the gateway adds the stored history.
        sent = history[-1:] if conv.session and target.gateway and i > 0 else history
        body = {"model": model, "messages": sent, "max_tokens": 16, "ignore_eos": True, "temperature": 0,
                "stream": True}
        started = time.perf_counter()
        first: float | None = None
        answer: list[str] = []
        try:
            async with http.stream("POST", f"{target.url}/v1/chat/completions", json=body, headers=headers) as resp:
                if resp.status_code != 200:
                    result.errors.append(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
                    return
                async for line in resp.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        result.errors.append(f"stream error: {chunk['error']}")
                        return
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            first = first or time.perf_counter()
                            answer.append(piece)
        except httpx.HTTPError as err:
            result.errors.append(repr(err))
            return
        if first is None:
            result.errors.append("a stream without content")
            return
        result.answered += 1
        if started - t0 >= measured_from:
            result.ttft.append(first - started)
            result.completed += 1
        history.append({"role": "assistant", "content": "".join(answer)})
        await asyncio.sleep(0.3)  # the user reads, then types the next turn


def vllm_counters(handles: list[VllmHandle]) -> list[dict[str, float]]:
    """Each replica's prefix-cache counters (tokens): looked up (queries) and found (hits); and requests done."""
    wanted = {"vllm:prefix_cache_hits_total": "hits", "vllm:prefix_cache_queries_total": "queries",
              "vllm:request_success_total": "done"}
    found = []
    for h in handles:
        values = {"hits": 0.0, "queries": 0.0, "done": 0.0}
        for family in text_string_to_metric_families(httpx.get(f"{h.url}/metrics", timeout=10).text):
            for sample in family.samples:
                if sample.name in wanted:
                    values[wanted[sample.name]] += sample.value
        found.append(values)
    return found


async def sample_counters(handles: list[VllmHandle], every: float, into: list[tuple[float, list[dict[str, float]]]],
                          stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append((time.perf_counter(), await asyncio.to_thread(vllm_counters, handles)))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass


def imbalance_p95(samples: list[tuple[float, list[dict[str, float]]]], window: float) -> float:
    """p95 over sliding `window`-second windows of max/mean prefill tokens computed (looked up - hit)."""
    ratios = []
    for i, (t_i, first) in enumerate(samples):
        later = [s for s in samples[i:] if s[0] - t_i >= window - 1e-6]
        if not later:
            break
        last = later[0][1]
        computed = [(b["queries"] - b["hits"]) - (a["queries"] - a["hits"]) for a, b in zip(first, last, strict=True)]
        mean = sum(computed) / len(computed)
        if mean > 0:
            ratios.append(max(computed) / mean)
    if not ratios:
        return float("nan")
    return sorted(ratios)[min(len(ratios) - 1, math.ceil(0.95 * len(ratios)) - 1)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(math.ceil(q * len(ordered)) - 1, 0))]


async def counters_once_done(vllms: list[VllmHandle], before: list[dict[str, float]], result: Result,
                             within: float = 60.0) -> list[dict[str, float]]:
    """The replicas' counters once they show every answered turn: vLLM updates them from its engine a little
    after the answer, and a read in between would miss the last requests' tokens (a smoke point: all of them)."""
    deadline = time.monotonic() + within
    while True:
        now = await asyncio.to_thread(vllm_counters, vllms)
        if sum(n["done"] - b["done"] for n, b in zip(now, before, strict=True)) >= result.answered:
            return now
        if time.monotonic() > deadline:
            result.errors.append(f"vLLM's counters never showed the {result.answered} answered requests")
            return now
        await asyncio.sleep(0.2)


async def run_point(target: Target, convs: list[Conversation], vllms: list[VllmHandle], *, tag: str, warmup: float,
                    duration: float, model: str) -> dict[str, Any]:
    result = Result()
    samples: list[tuple[float, list[dict[str, float]]]] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
    before = await asyncio.to_thread(vllm_counters, vllms)
    if warmup <= 0:  # the window opens now: count from before the first request (a sampler may read late)
        samples.append((time.perf_counter(), before))
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        run = uuid.uuid4().hex[:12]
        tasks = [asyncio.create_task(run_conversation(http, target, c, tag, f"bench-{run}-{i}", warmup, t0, result,
                                                      model)) for i, c in enumerate(convs)]
        await asyncio.sleep(warmup)
        sampler = asyncio.create_task(sample_counters(vllms, 1.0, samples, stop))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0 - warmup
        stop.set()
        await sampler
    samples.append((time.perf_counter(), await counters_once_done(vllms, before, result)))
    first, last = samples[0][1], samples[-1][1]
    per_replica = []
    for a, b in zip(first, last, strict=True):
        queries = b["queries"] - a["queries"]
        per_replica.append({"hits": b["hits"] - a["hits"], "queries": queries})
    hits, queries = sum(r["hits"] for r in per_replica), sum(r["queries"] for r in per_replica)
    return {
        "requests": result.completed,
        "errors": len(result.errors),
        "error_examples": result.errors[:3],
        "ttft_p50_ms": percentile(result.ttft, 0.5) * 1000,
        "ttft_p95_ms": percentile(result.ttft, 0.95) * 1000,
        "hit_rate": hits / queries if queries else float("nan"),
        "hit_rate_per_replica": [r["hits"] / r["queries"] if r["queries"] else None for r in per_replica],
        "prompt_tokens_per_replica": [r["queries"] for r in per_replica],
        "prefill_max_over_mean_p95": imbalance_p95(samples, min(10.0, max(elapsed / 2, 1.0))),
        "throughput_rps": result.completed / elapsed if elapsed > 0 else 0.0,
    }


# ---- the gateway's decision time ----------------------------------------------------------------------

def decision_time_p99(tokens: int = 16_000, rounds: int = 300) -> dict[str, float]:
    """Hashing a `tokens`-token prompt plus choosing (and booking) a backend, in process, two backends."""
    metrics = Metrics()
    pool = BackendPool(metrics, eject_after_failures=3)
    pool.set_addresses(["10.0.0.1:8000", "10.0.0.2:8000"])
    for b in pool.all():
        pool.mark_probe(b, True, [{"id": "m"}])
    router = make_router(pool, metrics, RoutingTuning())
    rng = random.Random(7)
    base = text(rng, tokens * 4 // 6)  # ~6 characters a word: ~4 characters a token
    times = []
    for i in range(rounds):
        body = {"messages": [{"role": "system", "content": base}, {"role": "user", "content": f"question {i}"}]}
        started = time.perf_counter()
        route = router.route(body)
        decision = router.choose(route)
        assert decision is not None
        router.prefilled(decision.backend, router.started(decision, route))
        times.append(time.perf_counter() - started)
    return {"prompt_tokens_estimated": float(route.prompt_tokens), "p50_ms": percentile(times, 0.5) * 1000,
            "p99_ms": percentile(times, 0.99) * 1000}


# ---- the run ------------------------------------------------------------------------------------------

def start_small_vllm(work: Path, settings: StackSettings, model_dir: Path, kv_tokens: int, name: str) -> VllmHandle:
    """A vLLM of the local stack with a small KV cache (`--kv-cache-memory-bytes` of the CPU extras replaced)
    and sequences of at most MAX_MODEL_LEN tokens (vLLM wants one full-length sequence to fit the cache)."""
    port = free_port()
    cmd = vllm_command(settings, model=str(model_dir), port=port, served_name=settings.model.served_name)
    cmd[cmd.index("--kv-cache-memory-bytes") + 1] = str(kv_tokens * KV_BYTES_PER_TOKEN)
    cmd[cmd.index("--max-model-len") + 1] = str(MAX_MODEL_LEN)
    work.mkdir(parents=True, exist_ok=True)
    proc = vllm_process(name, cmd, work).start()
    served = settings.model.served_name
    return VllmHandle(name, port, proc, serves_model(f"http://127.0.0.1:{port}", served), 300.0, served_name=served)


def start_router(work: Path, vllms: list[VllmHandle], policy: str, extra: list[str]) -> ServiceHandle:
    if not ROUTER.exists():
        raise SystemExit(f"{ROUTER} is missing: run `make setup` (setup/requirements-router.txt)")
    port = free_port()
    cmd = [str(ROUTER), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *(h.url for h in vllms),
           "--policy", policy, "--log-level", "warning", *extra]
    proc = ManagedProcess(f"vllm-router-{policy}", cmd, work / f"router-{policy}.log", cwd=work).start()
    url = f"http://127.0.0.1:{port}"
    handle = ServiceHandle(f"vllm-router-{policy}", port, proc, lambda: http_ok(f"{url}/v1/models"), 60.0)
    handle.wait_ready()
    return handle


def targets(work: Path, settings: StackSettings, vllms: list[VllmHandle], redis: Any, kv_tokens: int) -> list[Target]:
    def gateway(policy: str) -> Callable[[], ServiceHandle]:
        def start() -> ServiceHandle:
            env = gateway_env(settings, vllms, redis, api_key_hashes={key_hash(API_KEY): "bench"})
            env.update({"GATEWAY_RATE_LIMIT_RPM": "1000000", "GATEWAY_RATE_LIMIT_CONCURRENT": "1000",
                        "GATEWAY_SESSION_MAX_PER_IDENTITY": "100000",
                        "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_HEALTH_INTERVAL_SECONDS": "0.5",
                        "GATEWAY_ROUTING": json.dumps({"policy": policy, "cache_tokens": kv_tokens})})
            return start_gateway(work / f"gateway-{policy}", env=env, name=f"gateway-{policy}")
        return start

    def router(policy: str, *extra: str) -> Callable[[], ServiceHandle]:
        return lambda: start_router(work, vllms, policy, list(extra))

    return [
        Target("round_robin", "", True, gateway("round_robin")),
        Target("session_least_outstanding", "", True, gateway("session")),
        Target("prefix_bounded_load", "", True, gateway("prefix")),
        Target("vllm-router cache_aware", "", False, router("cache_aware")),
        # Tuned for two small replicas: follow the cache from a smaller match, rebalance much sooner.
        Target("vllm-router cache_aware tuned", "", False, router(
            "cache_aware", "--cache-threshold", "0.1", "--balance-abs-threshold", "2",
            "--balance-rel-threshold", "1.25")),
        Target("vllm-router consistent_hash", "", False, router("consistent_hash")),
    ]


def goals(points: dict[str, dict[str, dict[str, Any]]], decision: dict[str, float]) -> dict[str, Any]:
    ours = "prefix_bounded_load"
    out: dict[str, Any] = {"decision_time_p99_ms": {"value": decision["p99_ms"], "goal": "< 2",
                                                    "met": decision["p99_ms"] < 2}}
    for w in ("W1", "W2"):
        row = points.get(w, {})
        if ours not in row:
            continue
        baselines = {k: v for k, v in row.items() if k != ours}
        best_ttft = min(v["ttft_p95_ms"] for v in baselines.values())
        best_hit = max(v["hit_rate"] for v in baselines.values())
        me = row[ours]
        out[w] = {
            "ttft_p95_vs_best_baseline": me["ttft_p95_ms"] / best_ttft, "goal_ttft": "<= 0.8",
            "hit_rate_minus_best_baseline_points": (me["hit_rate"] - best_hit) * 100, "goal_hit": ">= -1",
            "prefill_max_over_mean_p95": me["prefill_max_over_mean_p95"], "goal_balance": "<= 1.25",
            "cache_aware_prefill_max_over_mean_p95": row.get("vllm-router cache_aware", {}).get(
                "prefill_max_over_mean_p95"),
        }
    if ours in points.get("W3", {}) and "session_least_outstanding" in points["W3"]:
        w3 = points["W3"]
        out["W3"] = {"ttft_p50_vs_least_outstanding": w3[ours]["ttft_p50_ms"] /
                     w3["session_least_outstanding"]["ttft_p50_ms"],
                     "ttft_p95_vs_least_outstanding": w3[ours]["ttft_p95_ms"] /
                     w3["session_least_outstanding"]["ttft_p95_ms"], "goal": "<= 1.05"}
    return out


def markdown_table(points: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The README's table: a row per workload and policy."""
    lines = ["| workload | policy | TTFT p50 / p95 (ms) | hit rate (per replica) | prefill max/mean p95 | req/s |",
             "|---|---|---|---|---|---|"]
    for w, rows in points.items():
        for name, row in rows.items():
            replicas = " / ".join(f"{h:.0%}" if h is not None else "–" for h in row["hit_rate_per_replica"])
            lines.append(f"| {w} | {name} | {row['ttft_p50_ms']:.0f} / {row['ttft_p95_ms']:.0f} | "
                         f"{row['hit_rate']:.1%} ({replicas}) | {row['prefill_max_over_mean_p95']:.2f} | "
                         f"{row['throughput_rps']:.2f} |")
    return "\n".join(lines)


def plot(points: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(points)
    names = list(next(iter(points.values())))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, label in ((axes[0], "ttft_p95_ms", "TTFT p95 (ms)"), (axes[1], "hit_rate", "prefix-cache hit rate"),
                           (axes[2], "prefill_max_over_mean_p95", "prefill max/mean (p95 of 10 s windows)")):
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar([w + i * width for w in range(len(workloads))],
                   [points[wl][name][key] for wl in workloads], width, label=name)
        ax.set_xticks([w + 0.4 - width / 2 for w in range(len(workloads))], workloads)
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench routing", description=__doc__)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per point (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="discarded seconds per point (default 3)")
    parser.add_argument("--rate", type=float, default=1.5, help="new conversations per second (default 1.5)")
    parser.add_argument("--kv-tokens", type=int, default=3072, help="KV cache per replica, tokens (default 3072)")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--workloads", default="W1,W2,W3")
    parser.add_argument("--smoke", action="store_true", help="every path once, briefly (for make test)")
    parser.add_argument("--out", type=Path, default=OUT / "routing.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.rate = 2.0, 0.0, 1.5  # nothing discarded: every request counts

    settings = local_settings(API_KEY)
    model = settings.model.served_name
    work = args.out.parent / "routing-run"
    shutil.rmtree(work, ignore_errors=True)  # a fresh Redis (no sessions of an earlier run) and fresh logs
    started: list[ServiceHandle] = []
    points: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        print("starting Redis and two vLLM replicas (CPU, prefix caching, small KV caches) ...", flush=True)
        redis = start_redis(work / "redis", settings=settings)
        started.append(redis)
        model_dir = ensure_test_model(FAST_MODEL)
        vllms = [start_small_vllm(work / f"vllm-{i}", settings, model_dir, args.kv_tokens, f"vllm-{i}")
                 for i in range(2)]
        started += vllms
        for h in vllms:
            h.wait_ready()
        for target in targets(work, settings, vllms, redis, args.kv_tokens):
            handle = target.start()
            started.append(handle)
            target.url = handle.url
            for w in args.workloads.split(","):
                convs = workload(w, args.seed, args.rate, args.warmup + args.duration)
                tag = f"[{target.name} {w} {time.time_ns()}]"  # a cold cache for every point
                row = asyncio.run(run_point(target, convs, vllms, tag=tag, warmup=args.warmup,
                                            duration=args.duration, model=model))
                points.setdefault(w, {})[target.name] = row
                replicas = [f"{h:.0%}" if h is not None else "-" for h in row["hit_rate_per_replica"]]
                print(f"{w} {target.name:32s} TTFT p50 {row['ttft_p50_ms']:7.1f} ms p95 {row['ttft_p95_ms']:7.1f} ms"
                      f" | hits {row['hit_rate']:.1%} {replicas}"
                      f" | prefill max/mean p95 {row['prefill_max_over_mean_p95']:.2f}"
                      f" | {row['throughput_rps']:.2f} req/s | errors {row['errors']} {row['error_examples'][:1]}",
                      flush=True)
            handle.stop()
            started.remove(handle)
    finally:
        for handle in reversed(started):
            handle.stop()
    decision = decision_time_p99(rounds=30 if args.smoke else 300)
    print(f"decision time for a ~16k-token prompt: p50 {decision['p50_ms']:.2f} ms, p99 {decision['p99_ms']:.2f} ms")
    report = {"settings": {"duration_s": args.duration, "warmup_s": args.warmup, "rate_per_s": args.rate,
                           "kv_tokens_per_replica": args.kv_tokens, "max_model_len": MAX_MODEL_LEN, "seed": args.seed,
                           "replicas": 2, "smoke": args.smoke},
              "points": points, "decision_time": decision, "goals": goals(points, decision)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    plot(points, args.out.with_suffix(".png"))
    print(markdown_table(points))
    print(json.dumps(report["goals"], indent=2))
    print(f"written to {args.out} and {args.out.with_suffix('.png')}")
    failed = [(w, name, row["error_examples"]) for w, rows in points.items() for name, row in rows.items()
              if row["errors"] or not row["requests"]]
    for w, name, examples in failed:
        print(f"FAILED: {w} {name}: errors or no completed request: {examples}", file=sys.stderr)
    return 1 if failed else 0

