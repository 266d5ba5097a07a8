"""The benchmarks that start a real vLLM of their own, each once with the smallest load that exercises its
whole path: `bench guided` (structured outputs and a named tool call against unguided answers), `bench pace`
(the test model's decode rate) and `bench latency` (the gateway's added latency over the direct path).
Each exits non-zero on any failed request or invalid answer; here only that and the report's shape count."""

from __future__ import annotations

import json
import subprocess

from localstack.services import PROJECT_PYTHON, REPO_ROOT


def bench(*args: str) -> str:
    result = subprocess.run([str(PROJECT_PYTHON), "-m", "bench", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_guided_against_unguided_once() -> None:
    out = bench("guided", "--runs", "1", "--model", "tiny-qwen2")  # the same path; the fast model answers sooner
    for request in ("json_schema", "named_tool_call"):
        assert any(line.startswith(request) for line in out.splitlines()), out


def test_pace_of_the_fast_model_once() -> None:
    out = bench("pace", "--tokens", "40", "--models", "tiny-qwen2")
    assert any(line.startswith("tiny-qwen2") for line in out.splitlines()), out


def test_gateway_latency_once() -> None:
    bench("latency", "--concurrency", "1", "--requests", "2")
    report = json.loads((REPO_ROOT / "build" / "bench" / "gateway_latency.json").read_text())
    for path in ("direct", "gateway"):
        assert report["1"][path]["n"] >= 1 and report["1"][path]["median_ms"] > 0, report
