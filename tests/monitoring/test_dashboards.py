"""Dashboards: valid Grafana JSON from grafanalib; every PromQL expression passes promtool's parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from stackspec.monitoring.dashboards import RATE, expressions, render_dashboards
from stackspec.monitoring.rules import rule_groups
from tests.monitoring.conftest import run, stack_settings, tool

DASHBOARDS = render_dashboards()


def all_expressions() -> list[str]:
    return [e for text in DASHBOARDS.values() for e in expressions(text)]


def test_every_expression_parses_in_promtool(scratch: Path) -> None:
    exprs = all_expressions()
    assert len(exprs) >= 25
    # promtool has no bare "parse" command; a rule file with one recording rule per expression runs the
    # same parser. Grafana substitutes $__rate_interval before querying; so does this test.
    rules = [{"record": f"dashboard:expr_{i}", "expr": e.replace(RATE, "5m")} for i, e in enumerate(exprs)]
    path = scratch / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, width=1000))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_the_parser_check_catches_a_broken_expression(scratch: Path) -> None:
    path = scratch / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:broken", "expr": "sum by (instance (vllm:num_requests_running)"}]}]}))
    assert run([tool("promtool"), "check", "rules", str(path)]).returncode != 0


def test_recorded_series_used_by_dashboards_exist() -> None:
    recorded = {r["record"] for g in rule_groups(stack_settings("prod")) for r in g["rules"] if "record" in r}
    used = {name for e in all_expressions() for name in re.findall(r"\bqwen:[a-z0-9_:]+", e)}
    assert used, "dashboards should read the recorded series"
    assert used <= recorded, f"not recorded: {used - recorded}"


def test_panels_the_issue_asks_for() -> None:
    titles = {uid: [p["title"] for p in json.loads(text)["panels"]] for uid, text in DASHBOARDS.items()}
    overview = " | ".join(titles["qwen-serving-overview.json"]).lower()
    for word in ("requests per second", "error", "time to first token", "tokens per second", "waiting", "kv cache"):
        assert word in overview
    gpus = " | ".join(titles["qwen-serving-gpus.json"]).lower()
    for word in ("utilisation", "memory", "temperature", "power"):
        assert word in gpus
    gateway = " | ".join(titles["qwen-serving-gateway.json"]).lower()
    for word in ("backend health", "retries", "rate limiting", "sessions"):
        assert word in gateway
    ttft = json.loads(DASHBOARDS["qwen-serving-overview.json"])["panels"][2]
    assert [t["legendFormat"] for t in ttft["targets"]] == ["p50", "p95", "p99"]


def test_dashboard_json_is_what_grafana_loads() -> None:
    for name, text in DASHBOARDS.items():
        board = json.loads(text)
        assert f"{board['uid']}.json" == name
        assert board["templating"]["list"][0]["type"] == "datasource"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and None not in ids
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
