"""The prefix-cache hit rate and the routing estimate (issue 20): recording rules unit-tested with promtool on
known counters (overall, per replica, no lookups = no series, foreign targets ignored), and the panels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from stackspec.monitoring import promql as m
from stackspec.monitoring import rules as r
from stackspec.monitoring.dashboards import render_dashboards
from stackspec.monitoring.scope import scope
from tests.monitoring.conftest import run, stack_settings, tool

PROD = stack_settings("prod")


def _labels(job: str, **extra: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in {**scope(PROD).labels(job), **extra}.items())


def _per_step(rate: float) -> str:
    """A counter rising `rate` per second, at the stack's scrape interval, for 20 minutes."""
    step = m.seconds(PROD.monitoring.scrape_interval)
    return f"0+{rate * step:g}x{int(1200 / step)}"


def _test_file() -> dict[str, Any]:
    vllm = {name: _labels(m.JOB_VLLM, instance=name) for name in ("10.0.0.1:8000", "10.0.0.2:8000")}
    gw = _labels(m.JOB_GATEWAY, instance="10.0.1.1:8080", policy="prefix")
    series = {
        # Replica 1 finds 50 of every 100 looked-up tokens, replica 2 none of its 100: 25 % overall.
        f"{m.VLLM_PREFIX_HITS}{{{vllm['10.0.0.1:8000']}}}": _per_step(50),
        f"{m.VLLM_PREFIX_QUERIES}{{{vllm['10.0.0.1:8000']}}}": _per_step(100),
        f"{m.VLLM_PREFIX_HITS}{{{vllm['10.0.0.2:8000']}}}": _per_step(0),
        f"{m.VLLM_PREFIX_QUERIES}{{{vllm['10.0.0.2:8000']}}}": _per_step(100),
        # Another team's vLLM in another namespace: not ours, never in the ratio.
        f'{m.VLLM_PREFIX_HITS}{{job="vllm",namespace="elsewhere",instance="x:1"}}': _per_step(100),
        f'{m.VLLM_PREFIX_QUERIES}{{job="vllm",namespace="elsewhere",instance="x:1"}}': _per_step(100),
        f"{m.GW_ROUTING_CACHED_TOKENS}{{{gw}}}": _per_step(25),
        f"{m.GW_ROUTING_PROMPT_TOKENS}{{{gw}}}": _per_step(100),
    }
    ns, job = scope(PROD).namespace, m.JOB_VLLM
    expected = [
        (r.PREFIX_HIT_RATIO, [{"labels": f'{r.PREFIX_HIT_RATIO}{{job="{job}",namespace="{ns}"}}', "value": 0.25}]),
        (r.PREFIX_HIT_RATIO_BY_INSTANCE, [
            {"labels": f'{r.PREFIX_HIT_RATIO_BY_INSTANCE}{{instance="10.0.0.1:8000",job="{job}",namespace="{ns}"}}',
             "value": 0.5},
            {"labels": f'{r.PREFIX_HIT_RATIO_BY_INSTANCE}{{instance="10.0.0.2:8000",job="{job}",namespace="{ns}"}}',
             "value": 0},
        ]),
        (r.ROUTING_CACHED_RATIO, [
            {"labels": f'{r.ROUTING_CACHED_RATIO}{{job="{m.JOB_GATEWAY}",namespace="{ns}",policy="prefix"}}',
             "value": 0.25}]),
    ]
    idle = {f"{m.VLLM_PREFIX_QUERIES}{{{vllm['10.0.0.1:8000']}}}": _per_step(0),
            f"{m.VLLM_PREFIX_HITS}{{{vllm['10.0.0.1:8000']}}}": _per_step(0)}
    assert ns  # the selectors pin it: the foreign series above differ only by namespace
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": PROD.monitoring.scrape_interval,
        "tests": [
            {"name": "hit rate overall and per replica", "interval": PROD.monitoring.scrape_interval,
             "input_series": [{"series": k, "values": v} for k, v in series.items()],
             "promql_expr_test": [{"expr": expr, "eval_time": "10m", "exp_samples": samples}
                                  for expr, samples in expected]},
            {"name": "no lookups: no hit-rate series, not 0 %", "interval": PROD.monitoring.scrape_interval,
             "input_series": [{"series": k, "values": v} for k, v in idle.items()],
             "promql_expr_test": [{"expr": r.PREFIX_HIT_RATIO, "eval_time": "10m", "exp_samples": []}]},
        ],
    }


def test_the_hit_rate_rules_pass_promtool_unit_tests(scratch: Path) -> None:
    (scratch / "rules.yaml").write_text(r.render_rules(PROD))
    (scratch / "test.yaml").write_text(yaml.safe_dump(_test_file(), sort_keys=False, width=200))
    result = run([tool("promtool"), "test", "rules", "test.yaml"], cwd=scratch)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_hit_rate_and_routing_panels() -> None:
    boards = {name: json.loads(text) for name, text in render_dashboards(PROD).items()}
    sc = scope(PROD)
    overview = {p["title"]: p for p in boards["qwen-serving-overview.json"]["panels"]}
    hit = overview["Prefix cache hit rate"]
    assert [t["expr"] for t in hit["targets"]] == [sc.select(r.PREFIX_HIT_RATIO, m.JOB_VLLM),
                                                    sc.select(r.PREFIX_HIT_RATIO_BY_INSTANCE, m.JOB_VLLM)]
    gateway = {p["title"]: p for p in boards["qwen-serving-gateway.json"]["panels"]}
    assert m.GW_ROUTING_DECISIONS in gateway["Routing decisions"]["targets"][0]["expr"]
    assert [t["expr"] for t in gateway["Routing: estimated vs measured prefix-cache hits"]["targets"]] == [
        sc.select(r.ROUTING_CACHED_RATIO, m.JOB_GATEWAY), sc.select(r.PREFIX_HIT_RATIO, m.JOB_VLLM)]
