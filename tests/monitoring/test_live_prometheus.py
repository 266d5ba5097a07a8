"""Against a live local Prometheus after real traffic: the rules find vLLM's and the gateway's metrics.

The session's local stack (tests/conftest.py: the code `make up` runs — Redis, vLLM on CPU, the gateways,
Nginx, the two exporters and Prometheus scraping every second with the rendered rules). Traffic goes
through Nginx with the dev API key; other layers may have used the stack before, so counts are deltas.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from localstack.prometheus import PrometheusHandle, monitoring_settings
from localstack.services import ServiceHandle
from localstack.stack import LocalStack
from stackspec.monitoring import promql as m
from stackspec.monitoring import rules as r
from stackspec.monitoring.logs import render_fluent_bit
from tests.monitoring.fluent_bit import process
from tests.waiting import samples

API_ROUTES = f'{m.GW_REQUESTS}{{route=~"/v1/.+"}}'


@dataclass
class Live:
    stack: LocalStack
    prometheus: PrometheusHandle
    exporters: list[ServiceHandle]
    api_requests_before: float  # the gateways' API request count before this module's traffic
    requests_sent: int


def _traffic(stack: LocalStack, rounds: int) -> int:
    assert stack.endpoint is not None
    headers = {"Authorization": f"Bearer {stack.endpoint.api_key}"}
    sent = 0
    with httpx.Client(base_url=stack.endpoint.url, headers=headers, timeout=60) as client:
        for i in range(rounds):
            body = {"model": stack.endpoint.model, "max_tokens": 16, "temperature": 0,
                    "messages": [{"role": "user", "content": f"hello {i}"}]}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
                assert resp.status_code == 200
                assert any(line.startswith("data: ") for line in resp.iter_lines())
            sent += 2
        # A client error: counted by the gateway, never an availability error.
        bad = client.post("/v1/chat/completions", json={"model": "no-such-model", "messages": []})
        assert 400 <= bad.status_code < 500
        sent += 1
    return sent


def _api_requests_counted(stack: LocalStack) -> float:
    """What the gateways themselves have counted on /v1 routes (the truth Prometheus must converge to)."""
    return sum(value for gateway in stack.gateways for labels, value in samples(gateway.url, m.GW_REQUESTS)
               if labels.get("route", "").startswith("/v1/"))


@pytest.fixture(scope="module")
def live(local_stack: LocalStack) -> Live:
    monitoring = local_stack.monitoring
    assert monitoring is not None, "the local stack runs Prometheus (as `make up` does)"
    prometheus = monitoring.prometheus
    scraped = len(local_stack.vllm) + len(local_stack.gateways)
    # rate() needs a sample from before the traffic and one from after it.
    _wait_for(prometheus, f'count(up{{job=~"{m.JOB_VLLM}|{m.JOB_GATEWAY}"}} == 1) == {scraped}')
    _wait_for(prometheus, f"count({m.VLLM_SUCCESS})")
    # The gateway's labelled counters only exist after their first request, and rate() never sees
    # a series' first value: one round first, scraped, then the traffic the rates are about.
    _traffic(local_stack, rounds=1)
    before = _api_requests_counted(local_stack)
    _wait_for(prometheus, f"sum({API_ROUTES}) == {before}")
    _wait_for(prometheus, f"count({m.GW_TTFT}_bucket)")
    sent = _traffic(local_stack, rounds=5)
    # (vLLM's own success counter may lag a request or two behind its access log; any is enough.)
    _wait_for(prometheus, f"sum({m.VLLM_SUCCESS}) > 0")
    _wait_for(prometheus, f"sum({API_ROUTES}) >= {before + sent}")
    return Live(local_stack, prometheus, monitoring.exporters, before, sent)


def _wait_for(prometheus: PrometheusHandle, promql: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not _query(prometheus, promql):
        if time.monotonic() > deadline:
            targets = httpx.get(f"{prometheus.api}/targets", timeout=10).json()["data"]["activeTargets"]
            health = [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
            raise AssertionError(f"Prometheus never answered {promql!r} within {timeout:.0f} s; "
                                 f"targets: {health}")
        time.sleep(0.5)


def _query(prometheus: PrometheusHandle, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prometheus.api}/query", params={"query": promql}, timeout=10)
    resp.raise_for_status()
    body = resp.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def query(live: Live, promql: str) -> list[dict[str, Any]]:
    return _query(live.prometheus, promql)


def eventually(live: Live, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Poll until the query returns data (rules evaluate every second locally)."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(live, promql)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def diagnose(live: Live) -> str:
    up = {(s["metric"]["job"], s["value"][1]) for s in query(live, "up")}
    raw = {m.VLLM_SUCCESS: query(live, f"sum({m.VLLM_SUCCESS})"), m.GW_REQUESTS: query(live, f"sum({m.GW_REQUESTS})")}
    targets = httpx.get(f"{live.prometheus.api}/targets", timeout=10).json()["data"]["activeTargets"]
    errors = [(t["labels"]["job"], t["lastError"]) for t in targets if t["lastError"]]
    return f"up={sorted(up)} raw={raw} scrape errors={errors}"


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


@pytest.mark.parametrize("series", [r.RPS, r.VLLM_RPS, r.TOKENS_PER_SECOND, r.PROMPT_TOKENS_PER_SECOND])
def test_rate_rules_see_the_traffic(live: Live, series: str) -> None:
    result = eventually(live, f"{series} > 0")
    assert result, f"{series} has no positive value after real traffic; {diagnose(live)}"
    assert {s["metric"]["job"] for s in result} <= {m.JOB_VLLM, m.JOB_GATEWAY}


@pytest.mark.parametrize("series", [
    *(r.TTFT_QUANTILE.format(q=q) for q in r.QUANTILES),
    *(r.GW_TTFT_QUANTILE.format(q=q) for q in r.QUANTILES),
])
def test_ttft_quantiles_are_real_numbers(live: Live, series: str) -> None:
    result = eventually(live, series)
    assert result, f"{series} returned nothing"
    seconds = value(result[0])
    assert math.isfinite(seconds) and 0 < seconds < 60


def test_request_rate_counts_the_api_not_scrapes(live: Live) -> None:
    """The gateway also counts its /metrics and /readyz hits; the recorded RPS must leave them out."""
    api_total = value(query(live, f"sum({API_ROUTES})")[0])
    assert api_total - live.api_requests_before == live.requests_sent
    routes = {s["metric"]["route"] for s in query(live, f"sum by (route) ({m.GW_REQUESTS})")}
    assert "/metrics" in routes  # the scrapes are counted by the gateway ...
    # ... at 1/s per gateway, far more than this session's API traffic: were they in the recorded rate,
    # it would be at least their rate.
    scrapes = value(eventually(live, f'sum(rate({m.GW_REQUESTS}{{route="/metrics"}}[1m]))')[0])
    rps = value(eventually(live, r.RPS)[0])
    assert 0 < rps < scrapes, (rps, scrapes)


def test_error_ratio_is_zero_not_missing(live: Live) -> None:
    """4xx happened, no 5xx: the availability ratio is a real 0, so the burn-rate alerts can evaluate."""
    result = eventually(live, r.ERROR_RATIO.format(window="5m"))
    assert result and value(result[0]) == 0.0
    statuses = {s["metric"]["status"] for s in query(live, f"sum by (status) ({m.GW_REQUESTS})")}
    assert "200" in statuses and any(s.startswith("4") for s in statuses)


def test_metric_names_the_rules_use_are_exported(live: Live) -> None:
    names = {s["metric"]["__name__"] for s in query(live, 'count by (__name__) ({job=~"vllm|gateway"})')}
    needed = {m.VLLM_RUNNING, m.VLLM_WAITING, m.VLLM_KV_USAGE, m.VLLM_SUCCESS, m.VLLM_GENERATION_TOKENS,
              m.VLLM_PROMPT_TOKENS, f"{m.VLLM_TTFT}_bucket", m.GW_REQUESTS, f"{m.GW_TTFT}_bucket",
              m.GW_BACKEND_HEALTHY, m.GW_ACTIVE_STREAMS}
    assert needed <= names, f"not exported: {sorted(needed - names)}"


def test_every_rule_evaluates_cleanly_and_no_outage_alert_fires(live: Live) -> None:
    eventually(live, r.VLLM_RPS)
    groups = httpx.get(f"{live.prometheus.api}/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for g in groups for rule in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in r.rule_groups(monitoring_settings()))
    assert all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    expected = {m.JOB_VLLM: len(live.stack.vllm), m.JOB_GATEWAY: len(live.stack.gateways), m.JOB_EDGE: 1,
                m.JOB_REDIS: 1}
    for job, count in expected.items():
        assert [value(s) for s in query(live, f'up{{job="{job}"}}')] == [1.0] * count, job
    assert value(query(live, m.NGINX_UP)[0]) == 1.0 and value(query(live, m.REDIS_UP)[0]) == 1.0
    # The scoped rules select job and namespace: every local target carries the stack's namespace label.
    assert {s["metric"].get("namespace") for s in query(live, "up")} == {monitoring_settings().kubernetes.namespace}
    active = {s["metric"]["alertname"] for s in query(live, "ALERTS")}
    assert not active & {"NoHealthyVllmBackend", "RedisDown", "TargetHealthCheckFailing"}, active


def test_a_logged_gateway_line_goes_through_the_fluent_bit_parser(live: Live) -> None:
    log_file = Path(live.stack.gateways[0].process.log_path)
    lines = [ln for ln in log_file.read_text().splitlines() if ln.startswith("{")]
    assert lines, f"no JSON lines in {log_file}"
    raw = lines[-1]
    config = yaml.safe_load(render_fluent_bit(monitoring_settings()))
    path = "/var/log/containers/gateway-7f9c-abcde_qwen-serving_gateway-0123456789abcdef.log"
    _, record = process(config, path, f"2026-11-24T23:10:02.123456789Z stdout F {raw}")
    expected = json.loads(raw)
    assert {k: record[k] for k in expected} == expected
    assert {"level", "msg", "ts", "logger"} <= set(record)
