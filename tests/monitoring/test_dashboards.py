"""Dashboards: valid Grafana JSON from grafanalib; every PromQL expression passes promtool's parser and is
scoped to the stack as the rules are: in promtool, every panel shows this stack's series and nothing of a
foreign target's (this stack's job names in another namespace, a cluster component, another stack's recorded
series)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackspec.monitoring.dashboards import RATE, expressions, render_dashboards
from stackspec.monitoring.rules import render_rules, rule_groups
from stackspec.monitoring.scope import scope
from stackspec.settings import StackSettings
from tests.monitoring.conftest import SITE_STACKS, run, stack_settings, tool
from tests.monitoring.rule_cases import FOREIGN_TARGETS, relabel

PROD = stack_settings("prod")
DASHBOARDS = render_dashboards(PROD)
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)(=~|=)"([^"]*)"')
# A concrete label value for each regex matcher the rules and dashboards use.
REGEX_VALUES = {"route": "/v1/chat/completions", "status": "500"}


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
    recorded = {r["record"] for g in rule_groups(PROD) for r in g["rules"] if "record" in r}
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


@pytest.mark.parametrize("stack", SITE_STACKS)
def test_every_selector_in_the_dashboards_is_scoped_to_the_stack(stack: str) -> None:
    settings = stack_settings(stack)
    sc = scope(settings)
    exprs = [e for text in render_dashboards(settings).values() for e in expressions(text)]
    for expr in exprs:
        selectors = SELECTOR.findall(expr)
        assert selectors, f"a bare metric name reads the whole cluster: {expr}"
        for name, matchers in selectors:
            labels = dict((k, v) for k, _, v in MATCHER.findall(matchers))
            assert labels.get("job") and labels == {**labels, **sc.labels(labels["job"])}, f"{name}{{{matchers}}}"
        # No metric read without a selector (e.g. `sum(vllm:num_requests_running)`).
        bare = re.sub(SELECTOR, "", re.sub(r"\[[^\]]*\]", "", expr))
        assert not re.search(r"(vllm:|gateway_|DCGM_|redis_|qwen:)", bare), expr


def _series(name: str, matchers: str) -> str:
    labels = [(k, REGEX_VALUES[k] if op == "=~" else v) for k, op, v in MATCHER.findall(matchers)]
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def _values(name: str) -> list[str]:
    """promtool input values for one selector's series (buckets become three `le` series)."""
    if name.endswith("_bucket"):
        return ["0+5x40", "0+8x40", "0+10x40"]
    return ["0+10x40"] if name.endswith("_total") else ["1x40"]


def _inputs(settings: StackSettings) -> dict[str, str]:
    """This stack's raw series: one per selector in its recording rules and dashboards."""
    exprs = [rule["expr"] for g in rule_groups(settings) for rule in g["rules"] if "record" in rule]
    exprs += [e for text in render_dashboards(settings).values() for e in expressions(text)]
    series: dict[str, str] = {}
    for expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            if name.startswith("qwen:"):
                continue  # recorded: our recording rules make it from the raw series
            base = _series(name, matchers)
            if name.endswith("_bucket"):
                for le, values in zip(("0.5", "1", "+Inf"), _values(name), strict=True):
                    series[base[:-1] + f',le="{le}"}}'] = values
            else:
                series[base] = _values(name)[0]
    return series


def _foreign_inputs(settings: StackSettings) -> dict[str, str]:
    """The same series on foreign targets, and the recorded series another stack's rules would make."""
    ours = _inputs(settings)
    recorded = {_series(name, matchers) for text in render_dashboards(settings).values()
                for e in expressions(text) for name, matchers in SELECTOR.findall(e) if name.startswith("qwen:")}
    foreign: dict[str, str] = {}
    for job, namespace in FOREIGN_TARGETS:
        foreign |= {relabel(s, job, namespace): v for s, v in ours.items()}
        foreign |= {relabel(s, job, namespace): "1x40" for s in recorded}
    return foreign


def _panel_alerts(settings: StackSettings) -> list[dict[str, Any]]:
    """One alert per dashboard query: it fires while the query returns any series."""
    return [
        {"alert": f"Panel_{uid.removesuffix('.json').replace('-', '_')}_{i}",
         "expr": f"count({expr.replace(RATE, '5m')}) > 0"}
        for uid, text in sorted(render_dashboards(settings).items()) for i, expr in enumerate(expressions(text))
    ]


def _promtool_panels(settings: StackSettings, dashboards_from: StackSettings, where: Path) -> tuple[int, str]:
    """Our rules and one alert per panel query; each query shows our series and none of the foreign ones."""
    (where / "rules.yaml").write_text(render_rules(settings))
    alerts = _panel_alerts(dashboards_from)
    (where / "panels.yaml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": alerts}]}, width=1000))
    interval = settings.monitoring.scrape_interval

    def group(name: str, series: dict[str, str], shows: bool) -> dict[str, Any]:
        return {"name": name, "interval": interval,
                "input_series": [{"series": s, "values": v} for s, v in sorted(series.items())],
                "alert_rule_test": [{"eval_time": "10m", "alertname": a["alert"],
                                     "exp_alerts": [{"exp_labels": {}}] if shows else []} for a in alerts]}

    test = {"rule_files": ["rules.yaml", "panels.yaml"], "evaluation_interval": interval, "tests": [
        group("this stack's series show in every panel", _inputs(settings), True),
        group("foreign targets' series show in none", _foreign_inputs(settings), False),
    ]}
    (where / "test-panels.yaml").write_text(yaml.safe_dump(test, sort_keys=False, width=1000))
    result = run([tool("promtool"), "test", "rules", "test-panels.yaml"], cwd=where)
    return result.returncode, result.stdout + result.stderr


def test_panels_show_this_stacks_series_and_no_foreign_ones(scratch: Path) -> None:
    code, output = _promtool_panels(PROD, PROD, scratch)
    assert code == 0, output


def test_panels_for_another_namespace_would_show_the_foreign_series(scratch: Path) -> None:
    """The check can fail: dashboards rendered for the namespace the test calls foreign show nothing of ours
    and the foreign series."""
    values = PROD.kubernetes.model_dump(by_alias=True) | {"namespace": "another-team"}
    elsewhere = PROD.model_copy(update={"kubernetes": type(PROD.kubernetes)(**values)})
    code, output = _promtool_panels(PROD, elsewhere, scratch)
    assert code != 0 and "FAILED" in output, output
