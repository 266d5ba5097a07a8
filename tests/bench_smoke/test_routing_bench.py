"""`python -m bench routing --smoke`: every path of the routing benchmark once, briefly — two real vLLMs, the
gateway with each policy, vllm-router with each configuration, all three workloads. No timing goal is
checked here (those live in the benchmark); only that every point ran without error and the report is whole."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from localstack.services import REPO_ROOT

OUT = REPO_ROOT / "build" / "test-bench-smoke" / "routing"
TARGETS = {"round_robin", "session_least_outstanding", "prefix_bounded_load", "vllm-router cache_aware",
           "vllm-router cache_aware tuned", "vllm-router consistent_hash"}


def test_the_routing_benchmark_runs_every_path_once() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-m", "bench", "routing", "--smoke", "--out", str(OUT / "routing.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((OUT / "routing.json").read_text())
    assert set(report["points"]) == {"W1", "W2", "W3"}
    for workload, rows in report["points"].items():
        assert set(rows) == TARGETS, workload
        for name, row in rows.items():
            assert row["errors"] == 0 and row["requests"] >= 1, (workload, name, row)
            assert 0 <= row["hit_rate"] <= 1 and len(row["hit_rate_per_replica"]) == 2
    assert report["decision_time"]["p99_ms"] > 0 and set(report["goals"]) >= {"W1", "W2", "W3"}
    assert (OUT / "routing.png").stat().st_size > 0
