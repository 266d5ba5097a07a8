"""Grafana dashboards as code (grafanalib), shipped as ConfigMaps for Grafana's dashboard sidecar.

Three dashboards: the service overview, the GPUs and the gateway. Panels read the recorded series of
stackspec/monitoring/rules.py where one exists, so a dashboard and an alert never disagree on a definition.
Every selector is the stack's, as the rules' are (stackspec/monitoring/scope.py): raw series pin the scrape
job and its namespace, recorded series the job and namespace they keep. A cluster-wide Prometheus holds
other teams' `vllm`, other stacks' recorded series and other GPUs' DCGM series; none of them shows here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard, GridPos, Target, Template, Templating, Time, TimeSeries

from stackspec.monitoring import promql as m
from stackspec.monitoring import rules as r
from stackspec.monitoring.scope import Scope, scope
from stackspec.settings import StackSettings

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"  # Grafana's own range for rate(); promtool checks see it replaced


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


def _panel(spec: PanelSpec, index: int) -> TimeSeries:
    width, height = 12, 8
    return TimeSeries(
        title=spec.title,
        description=spec.description,
        dataSource=DATASOURCE,
        unit=spec.unit,
        gridPos=GridPos(h=height, w=width, x=(index % 2) * width, y=(index // 2) * height),
        targets=[
            Target(expr=q.expr, legendFormat=q.legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
            for i, q in enumerate(spec.queries)
        ],
    )


def _dashboard(uid: str, title: str, specs: list[PanelSpec]) -> Dashboard:
    return Dashboard(
        title=title,
        uid=uid,
        tags=["qwen-serving"],
        timezone="browser",
        refresh="30s",
        time=Time("now-6h", "now"),
        schemaVersion=39,
        templating=Templating(list=[
            Template(name="datasource", label="Data source", type="datasource", query="prometheus", default="",
                     includeAll=False),
        ]),
        panels=[_panel(spec, i) for i, spec in enumerate(specs)],
    ).auto_panel_ids()


def _recorded(sc: Scope, series: str, job: str) -> str:
    """A recorded series of this stack (the recording rules keep `job` and `namespace`)."""
    return sc.select(series, job)


def service_overview(sc: Scope) -> list[PanelSpec]:
    gw, vllm = m.JOB_GATEWAY, m.JOB_VLLM
    return [
        PanelSpec("Requests per second", "reqps", (
            Query(_recorded(sc, r.RPS, gw), "all"),
            Query(f"sum by (status) (rate({sc.select(m.GW_REQUESTS, gw)}[{RATE}]))", "{{status}}"),
        )),
        PanelSpec("Error ratio (5xx)", "percentunit", (
            Query(_recorded(sc, r.ERROR_RATIO.format(window="5m"), gw), "5m"),
            Query(_recorded(sc, r.ERROR_RATIO.format(window="1h"), gw), "1h"),
        ), "The availability SLO's error ratio; the burn-rate alerts use the same series."),
        PanelSpec("Time to first token (vLLM)", "s", tuple(
            Query(_recorded(sc, r.TTFT_QUANTILE.format(q=p), vllm), f"p{p}") for p in r.QUANTILES
        )),
        PanelSpec("Tokens per second", "short", (
            Query(_recorded(sc, r.TOKENS_PER_SECOND, vllm), "generated"),
            Query(_recorded(sc, r.PROMPT_TOKENS_PER_SECOND, vllm), "prompt"),
        )),
        PanelSpec("Requests running / waiting", "short", (
            Query(f"sum by (instance) ({sc.select(m.VLLM_RUNNING, vllm)})", "running {{instance}}"),
            Query(f"sum by (instance) ({sc.select(m.VLLM_WAITING, vllm)})", "waiting {{instance}}"),
        )),
        PanelSpec("KV cache usage", "percentunit", (
            Query(f"max by (instance) ({sc.select(m.VLLM_KV_USAGE, vllm)})", "{{instance}}"),
        )),
        PanelSpec("Prefix cache hit rate", "percentunit", (
            Query(_recorded(sc, r.PREFIX_HIT_RATIO, vllm), "all replicas"),
            Query(_recorded(sc, r.PREFIX_HIT_RATIO_BY_INSTANCE, vllm), "{{instance}}"),
        ), "Prompt tokens vLLM found in its prefix cache, of those it looked up: what prefix-aware routing is for."),
    ]


def gpus(sc: Scope) -> list[PanelSpec]:
    per_gpu = "{{Hostname}} GPU {{gpu}}"

    def dcgm(metric: str) -> str:
        return sc.select(metric, m.JOB_DCGM)  # the GPU system namespace's exporter: this pool's GPUs

    return [
        PanelSpec("GPU utilisation", "percent", (
            Query(f"avg by (Hostname, gpu) ({dcgm(m.DCGM_UTIL)})", per_gpu),
            Query(f"avg by (Hostname) ({dcgm(m.DCGM_UTIL)})", "{{Hostname}} (host)"),
        )),
        PanelSpec("GPU memory used", "decmbytes", (
            Query(f"max by (Hostname, gpu) ({dcgm(m.DCGM_FB_USED)})", per_gpu),
            Query(f"sum by (Hostname) ({dcgm(m.DCGM_FB_USED)})", "{{Hostname}} (host)"),
        )),
        PanelSpec("GPU temperature", "celsius", (
            Query(f"max by (Hostname, gpu) ({dcgm(m.DCGM_TEMP)})", per_gpu),
            Query(f"max by (Hostname) ({dcgm(m.DCGM_TEMP)})", "{{Hostname}} (hottest)"),
        )),
        PanelSpec("GPU power", "watt", (
            Query(f"max by (Hostname, gpu) ({dcgm(m.DCGM_POWER)})", per_gpu),
            Query(f"sum by (Hostname) ({dcgm(m.DCGM_POWER)})", "{{Hostname}} (host)"),
        )),
    ]


def gateway(sc: Scope) -> list[PanelSpec]:
    def gw(metric: str) -> str:
        return sc.select(metric, m.JOB_GATEWAY)

    return [
        PanelSpec("Backend health", "short", (
            Query(f"max by (backend) ({gw(m.GW_BACKEND_HEALTHY)})", "{{backend}}"),
        ), "1 = the gateway routes to this vLLM backend."),
        PanelSpec("Outstanding requests per backend", "short", (
            Query(f"sum by (backend) ({gw(m.GW_BACKEND_OUTSTANDING)})", "{{backend}}"),
        )),
        PanelSpec("Retries and upstream errors", "reqps", (
            Query(f"sum by (reason) (rate({gw(m.GW_RETRIES)}[{RATE}]))", "retry: {{reason}}"),
            Query(f"sum by (kind) (rate({gw(m.GW_UPSTREAM_ERRORS)}[{RATE}]))", "error: {{kind}}"),
        )),
        PanelSpec("Rate limiting", "reqps", (
            Query(f"sum by (limit) (rate({gw(m.GW_RATE_LIMITED)}[{RATE}]))", "limited: {{limit}}"),
            Query(f"sum(rate({gw(m.GW_RATE_LIMIT_FAIL_OPEN)}[{RATE}]))", "let through (Redis down)"),
        )),
        PanelSpec("Sessions and streams", "short", (
            Query(f"sum({gw(m.GW_ACTIVE_STREAMS)})", "active streams"),
            Query(f"min({gw(m.GW_REDIS_UP)})", "session store (Redis) up"),
            Query(f"sum(rate({gw(m.GW_REDIS_ERRORS)}[{RATE}]))", "session store errors/s"),
        )),
        PanelSpec("Admission: in flight against the bound", "short", (
            Query(f"sum by (instance) ({gw(m.GW_IN_FLIGHT)})", "in flight: {{instance}}"),
            Query(f"sum by (instance) ({gw(m.GW_IN_FLIGHT_LIMIT)})", "bound: {{instance}}"),
        ), "New generation requests past the bound (lowered while the loop lags) get 503 overloaded."),
        PanelSpec("Shed as overloaded, and event-loop lag", "reqps", (
            Query(f"sum by (reason) (rate({gw(m.GW_OVERLOAD_REJECTED)}[{RATE}]))", "shed: {{reason}}"),
            Query(f"max({gw(m.GW_LOOP_LAG)})", "worst loop lag (s)"),
        ), "GatewayShedding fires when the shed share stays above its threshold for 10 minutes."),
        PanelSpec("Gateway time to first token", "s", tuple(
            Query(_recorded(sc, r.GW_TTFT_QUANTILE.format(q=p), m.JOB_GATEWAY), f"p{p}") for p in r.QUANTILES
        )),
        PanelSpec("Routing decisions", "reqps", (
            Query(f"sum by (policy, outcome) (rate({gw(m.GW_ROUTING_DECISIONS)}[{RATE}]))", "{{policy}}: {{outcome}}"),
        ), "cache_hit: sent where part of the prompt is estimated cached; spill: the best backend for the cache "
           "was over the load bound (gateway.routing.loadFactor), so the request went elsewhere."),
        PanelSpec("Routing: estimated vs measured prefix-cache hits", "percentunit", (
            Query(_recorded(sc, r.ROUTING_CACHED_RATIO, m.JOB_GATEWAY), "gateway estimate ({{policy}})"),
            Query(_recorded(sc, r.PREFIX_HIT_RATIO, m.JOB_VLLM), "vLLM measured"),
        ), "The gateway's estimate well above vLLM's count: the router's LRU outlives the KV cache (lower "
           "gateway.routing.cacheTokens)."),
        PanelSpec("Queued prefill per backend", "short", (
            Query(f"sum by (backend) ({gw(m.GW_BACKEND_QUEUED_PREFILL)})", "{{backend}}"),
        ), "Estimated prompt tokens routed to the backend whose first token is not out yet (part of the load)."),
        PanelSpec("Routing decision time", "s", (
            Query(m.quantile(0.99, m.GW_ROUTING_DECISION_SECONDS, RATE, by="policy, le",
                             **sc.labels(m.JOB_GATEWAY)), "p99 {{policy}}"),
        )),
    ]


DASHBOARDS = {
    "qwen-serving-overview": ("qwen-serving / service overview", service_overview),
    "qwen-serving-gpus": ("qwen-serving / GPUs", gpus),
    "qwen-serving-gateway": ("qwen-serving / gateway", gateway),
}


def dashboards(settings: StackSettings) -> dict[str, Dashboard]:
    sc = scope(settings)
    return {uid: _dashboard(uid, title, build(sc)) for uid, (title, build) in DASHBOARDS.items()}


def render_dashboard(dashboard: Dashboard) -> str:
    return json.dumps(dashboard.to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True)


def render_dashboards(settings: StackSettings) -> dict[str, str]:
    """`<uid>.json` -> dashboard JSON, the data of the Grafana sidecar's ConfigMaps."""
    return {f"{uid}.json": render_dashboard(d) for uid, d in dashboards(settings).items()}


def expressions(dashboard_json: str) -> Iterator[str]:
    """Every PromQL expression in a rendered dashboard (what the tests hand to promtool)."""
    for panel in json.loads(dashboard_json)["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
