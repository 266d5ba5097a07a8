"""Every benchmark path once, very short: a change to the gateway (or the edge) that breaks its own benchmark
fails here, not silently in `make bench` (issue 21: a request allowlist once made every gateway point 100 %
HTTP 400 while `make bench` still exited 0).

Timing goals stay in bench/; these tests assert only that each path answered: 0 errors, non-zero throughput,
exit status 0 — and that a point with errors fails the run.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.emitter import paced_model
from bench.side_by_side import API_KEY, BENCH_OVERRIDES, PACED_MS, ROUTER_PATH, failed_points, start_emitter
from localstack.processes import ManagedProcess, free_port, http_ok
from localstack.services import PROJECT_PYTHON, REPO_ROOT, ServiceHandle, start_gateway, start_redis
from localstack.settings import key_hash, local_settings
from localstack.stack import gateway_env
from tests.waiting import wait_until

PATHS = ("direct", "gateway", "nginx+gateway", ROUTER_PATH)
SERIES = ("nonstream_16tok_0ms", "stream_64tok_0ms", "stream_64tok_20ms")


@pytest.fixture
def workdir() -> Path:
    path = REPO_ROOT / "build" / "tests" / "bench_smoke" / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    return path


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROJECT_PYTHON), "-m", "bench", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_side_by_side_every_path_answers(workdir: Path) -> None:
    """One short point per series (non-streamed, streamed, paced) on each path: direct, gateway, Nginx + gateway,
    and the anchor (vllm-router in front of the same emitter)."""
    out = workdir / "results.json"
    run = bench("--duration", "0.3", "--levels", "2", "--nonstream-levels", "2", "--no-vllm", "--no-plan",
                "--overload-capacity", "2", "--two-processes-streams", "2", "--out", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert failed_points(results) == []
    for series in SERIES:
        (entry,) = results["sweep"][series]
        for path in PATHS:
            row = entry["paths"][path]
            assert row["errors"] == 0 and not row["failed"], (series, path, row["error_samples"])
            assert row["requests"] > 0, (series, path)
            rate = row["chunks_per_s"] if series.startswith("stream") else row["req_per_s"]
            assert rate > 0, (series, path)
            if path not in ("direct", ROUTER_PATH):  # the proxy's CPU was measured: the gateway did the work
                # (the Rust router may use less than one clock tick in so short a point: not asserted)
                assert row["proxy_cpu_s"] > 0, (series, path)
    over = results["overload"]  # twice the streams a gateway admits: shed (503) is not an error there
    assert over["concurrency"] == 4 and over["capacity"] == 2
    for path in ("direct", "gateway"):
        assert over["paths"][path]["errors"] == 0 and over["paths"][path]["requests"] > 0, over["paths"][path]
    assert over["backend_verdicts_against"] == 0 and over["backends_unhealthy_after"] == 0
    assert over["limits_decided_locally"] == 0
    two = results["two_processes"]  # paced streams through a gateway of two processes, placement stated
    assert two["concurrency"] == 2 and two["processes"] == 2 and "GATEWAY_PROCESSES=2" in two["placement"]
    for path in ("direct", "gateway"):
        row = two["paths"][path]
        assert row["errors"] == 0 and row["requests"] > 0 and row["chunks_per_s"] > 0, row
    assert two["paths"]["gateway"]["proxy_cpu_s"] > 0  # the pair's CPU (supervisor and both processes) measured


def test_a_point_with_errors_fails_the_run() -> None:
    """The verdict the run's exit status comes from: one errored path in one point is enough."""
    ok = {"errors": 0, "failed": False, "requests": 5, "error_samples": []}
    bad = {"errors": 3, "failed": True, "requests": 0, "error_samples": ["HTTP 400"]}
    results: dict[str, Any] = {"sweep": {"stream_64tok_0ms": [
        {"concurrency": 2, "paths": {"direct": ok, "gateway": ok}},
        {"concurrency": 16, "paths": {"direct": ok, "gateway": bad}},
    ]}}
    (line,) = failed_points(results)
    assert "c=16 gateway" in line and "HTTP 400" in line
    results["sweep"]["stream_64tok_0ms"].pop()
    assert failed_points(results) == []


@pytest.fixture
def emitter_gateway(workdir: Path) -> Iterator[tuple[str, str]]:
    """The emitter behind a gateway started as `make bench` starts them: (gateway URL, paced model name)."""
    settings = local_settings(API_KEY, overrides=BENCH_OVERRIDES)
    started: list[ServiceHandle] = []
    try:
        redis = start_redis(workdir / "redis", settings=settings, password=secrets.token_hex(16))
        started.append(redis)
        emitter = start_emitter(workdir / "emitter", settings.model.served_name)
        started.append(emitter)
        env = gateway_env(settings, [emitter], redis, api_key_hashes={key_hash(API_KEY): "bench"})
        env["GATEWAY_MODEL"] = ""
        gw = start_gateway(workdir / "gateway", env=env, name="gateway")
        started.append(gw)
        yield gw.url, paced_model(settings.model.served_name, PACED_MS)
    finally:
        for handle in reversed(started):
            handle.stop()


def test_loadtest_against_a_gateway(emitter_gateway: tuple[str, str]) -> None:
    url, model = emitter_gateway
    run = bench("loadtest", "--url", url, "--key", API_KEY, "--model", model, "--rps", "4", "--stream",
                "--max-tokens", "4", "--duration", "2s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 failures" in run.stdout


def test_emitter_on_its_own_serves_each_pacing(workdir: Path) -> None:
    port = free_port()
    proc = ManagedProcess("emitter", [str(PROJECT_PYTHON), "-m", "bench", "emitter", "--port", str(port),
                                      "--model", "m", "--paced", "5"], workdir / "emitter.log", cwd=REPO_ROOT).start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{base}/health"), "the emitter answers", within=30)
        listed = [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]]
        assert listed == ["m", "m-paced-5ms"]
        for model in listed:
            body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
            answer = httpx.post(f"{base}/v1/chat/completions", json=body).json()
            assert answer["usage"]["completion_tokens"] == 3
        refused = httpx.post(f"{base}/v1/chat/completions", json={"model": "other", "messages": []})
        assert refused.status_code == 404 and refused.json()["error"]["param"] == "model"
    finally:
        proc.stop()


def test_replica_wait(workdir: Path) -> None:
    # WAIT 1 returns when the replica acknowledges: a 2 s bound fails only on a replica that does not, never on a
    # loaded machine's slow round trip (50 ms did, with three workers' vLLMs on two cores)
    run = bench("wait", "-n", "20", "--wait-ms", "2000", timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "cost of WAIT at p50" in run.stdout
