"""Recording and alerting rules, rendered from the stack's settings.

`rule_groups(settings)` gives the groups as plain dicts (the `spec` of a PrometheusRule, and the body
of a Prometheus rule file); `render_rules(settings)` gives the rule-file YAML that promtool checks and
the local Prometheus loads.
"""

from __future__ import annotations

from typing import Any

import yaml

from stackspec.monitoring import promql as m
from stackspec.monitoring.scope import Scope, scope
from stackspec.settings import BACKUP_CRONJOB, StackSettings

Rule = dict[str, Any]

# Windows of the availability SLO's multi-window, multi-burn-rate alerts (Google SRE workbook, ch. 5):
# (long window, short window, burn rate, severity). 14.4 over 1h spends 2 % of a 30-day budget.
BURN_WINDOWS: list[tuple[str, str, float, str]] = [
    ("1h", "5m", 14.4, "critical"),
    ("6h", "30m", 6.0, "critical"),
    ("1d", "2h", 3.0, "warning"),
    ("3d", "6h", 1.0, "warning"),
]
ERROR_RATIO_WINDOWS = sorted({w for long, short, _, _ in BURN_WINDOWS for w in (long, short)}, key=m.seconds)

# Recorded series (level:metric:operations). Each keeps `job` and `namespace`, so another stack's rules
# recording the same names in the same Prometheus never collide with ours, and dashboards select ours.
RPS = "qwen:gateway_requests:rate5m"
ERROR_RATIO = "qwen:gateway_request_errors:ratio_rate{window}"
VLLM_RPS = "qwen:vllm_requests:rate5m"
TOKENS_PER_SECOND = "qwen:vllm_generation_tokens:rate5m"
PROMPT_TOKENS_PER_SECOND = "qwen:vllm_prompt_tokens:rate5m"
TTFT_QUANTILE = "qwen:vllm_ttft_seconds:p{q}_5m"
GW_TTFT_QUANTILE = "qwen:gateway_time_to_first_token_seconds:p{q}_5m"
QUANTILES = (50, 95, 99)
# vLLM's prefix-cache hit rate (hit tokens / looked-up tokens), overall and per replica, and the gateway's
# own estimate of it (what routing expected to find cached where it sent each request).
PREFIX_HIT_RATIO = "qwen:vllm_prefix_cache_hits:ratio_rate5m"
PREFIX_HIT_RATIO_BY_INSTANCE = "qwen:vllm_prefix_cache_hits_by_instance:ratio_rate5m"
ROUTING_CACHED_RATIO = "qwen:gateway_routing_cached_tokens:ratio_rate5m"

# Which errors spend the availability budget: the server's fault, not the client's (4xx, 429).
SERVER_ERROR = "~5.."
# The API the SLO is about; the gateway also counts its own /metrics and probe requests.
API_ROUTES = "~/v1/.+"


def _record(name: str, expr: str) -> Rule:
    return {"record": name, "expr": expr}


def _alert(name: str, expr: str, *, for_: str, severity: str, summary: str, description: str,
           **labels: str) -> Rule:
    rule: Rule = {"alert": name, "expr": expr}
    if m.seconds(for_) > 0:
        rule["for"] = for_
    rule["labels"] = {"severity": severity, **labels}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def recording_rules(settings: StackSettings) -> list[Rule]:
    sc = scope(settings)
    gw = sc.select(m.GW_REQUESTS, m.JOB_GATEWAY, route=API_ROUTES)
    gw_err = sc.select(m.GW_REQUESTS, m.JOB_GATEWAY, route=API_ROUTES, status=SERVER_ERROR)
    rules = [_record(RPS, f"sum by (job, namespace) (rate({gw}[5m]))")]
    for window in ERROR_RATIO_WINDOWS:
        rules.append(_record(
            ERROR_RATIO.format(window=window),
            # `or 0 * ...`: no 5xx at all is a ratio of 0, not a missing series.
            f"(sum by (job, namespace) (rate({gw_err}[{window}]))"
            f" or 0 * sum by (job, namespace) (rate({gw}[{window}])))"
            f" / sum by (job, namespace) (rate({gw}[{window}]))",
        ))
    rules += [
        _record(VLLM_RPS, f"sum by (job, namespace) (rate({sc.select(m.VLLM_SUCCESS, m.JOB_VLLM)}[5m]))"),
        _record(TOKENS_PER_SECOND,
                f"sum by (job, namespace) (rate({sc.select(m.VLLM_GENERATION_TOKENS, m.JOB_VLLM)}[5m]))"),
        _record(PROMPT_TOKENS_PER_SECOND,
                f"sum by (job, namespace) (rate({sc.select(m.VLLM_PROMPT_TOKENS, m.JOB_VLLM)}[5m]))"),
    ]
    hits, queries = sc.select(m.VLLM_PREFIX_HITS, m.JOB_VLLM), sc.select(m.VLLM_PREFIX_QUERIES, m.JOB_VLLM)
    routed = sc.select(m.GW_ROUTING_PROMPT_TOKENS, m.JOB_GATEWAY)
    cached = sc.select(m.GW_ROUTING_CACHED_TOKENS, m.JOB_GATEWAY)
    rules += [
        # No lookups in the window: no series (not a 0 % that would read as a cold cache).
        _record(PREFIX_HIT_RATIO,
                f"sum by (job, namespace) (rate({hits}[5m])) / sum by (job, namespace) (rate({queries}[5m])) > -1"),
        _record(PREFIX_HIT_RATIO_BY_INSTANCE,
                f"sum by (job, namespace, instance) (rate({hits}[5m]))"
                f" / sum by (job, namespace, instance) (rate({queries}[5m])) > -1"),
        _record(ROUTING_CACHED_RATIO,
                f"sum by (job, namespace, policy) (rate({cached}[5m]))"
                f" / sum by (job, namespace, policy) (rate({routed}[5m])) > -1"),
    ]
    for q in QUANTILES:
        rules.append(_record(TTFT_QUANTILE.format(q=q),
                             m.quantile(q / 100, m.VLLM_TTFT, "5m", by="job, namespace, le", **sc.labels(m.JOB_VLLM))))
    for q in QUANTILES:
        rules.append(_record(GW_TTFT_QUANTILE.format(q=q),
                             m.quantile(q / 100, m.GW_TTFT, "5m", by="job, namespace, le", **sc.labels(m.JOB_GATEWAY))))
    return rules


def health_check_window(settings: StackSettings) -> str:
    """A range that holds exactly N scrapes: (N - 0.5) scrape intervals (N = healthCheckFailures)."""
    failures = settings.monitoring.alerting.health_check_failures
    return m.duration((failures - 0.5) * m.seconds(settings.monitoring.scrape_interval))


def _targets_failing(sc: Scope, window: str, failures: int) -> str:
    """Each of this stack's targets (per namespace: its jobs) whose last N scrapes all failed."""
    parts = []
    for namespace, jobs in sc.jobs_by_namespace().items():
        up = m.selector("up", job="~" + "|".join(jobs), namespace=namespace)
        parts.append(f"(max_over_time({up}[{window}]) == 0 and count_over_time({up}[{window}]) >= {failures})")
    return " or ".join(parts)


def capacity_alerts(settings: StackSettings) -> list[Rule]:
    """The three alerts of the original design, and gateways shedding load."""
    a = settings.monitoring.alerting
    failures = a.health_check_failures
    window = health_check_window(settings)
    factor = 1 + a.request_rate_increase_percent / 100
    sc = scope(settings)
    api = sc.select(m.GW_REQUESTS, m.JOB_GATEWAY, route=API_ROUTES)
    now = f"sum by (job, namespace) (rate({api}[5m]))"
    before = f"sum by (job, namespace) (rate({api}[5m] offset 1h))"
    return [
        _alert(
            "GpuUtilizationHigh",
            f"avg({sc.select(m.DCGM_UTIL, m.JOB_DCGM)}) > {a.gpu_utilization_percent:g}",
            for_="5m", severity="warning", signal="scale-out",
            summary=f"GPU pool above {a.gpu_utilization_percent:g} % utilisation for 5 minutes",
            description="Average GPU utilisation is {{ $value | printf \"%.0f\" }} %: the pool is near "
                        "capacity. Add a replica (KEDA does, up to GPUs / TP) or a GPU host.",
        ),
        _alert(
            "TargetHealthCheckFailing",
            # Exactly the last N scrapes (the range holds N samples), all of them failed; our targets only.
            _targets_failing(sc, window, failures),
            for_="0s", severity="critical",
            summary=f"{{{{ $labels.job }}}} target {{{{ $labels.instance }}}} failed {failures} "
                    "consecutive health checks",
            description=f"Prometheus could not scrape {{{{ $labels.instance }}}} {failures} times in a row "
                        f"(every {settings.monitoring.scrape_interval}).",
        ),
        _alert(
            "GatewayShedding",
            f"sum by (job, namespace) (rate({sc.select(m.GW_OVERLOAD_REJECTED, m.JOB_GATEWAY)}[5m])) / {now} > "
            f"{a.overload_shed_percent / 100:g}",
            for_="10m", severity="warning", signal="scale-out",
            summary=f"Gateways refuse more than {a.overload_shed_percent:g} % of requests as overloaded",
            description="{{ $value | humanizePercentage }} of API requests got 503 overloaded for 10 minutes: "
                        "the gateways are at their in-flight bound or their event loops lag, and autoscaling "
                        "is not keeping up. Raise gateway.maxReplicas or cpuRequest (the Gateway dashboard "
                        "shows in-flight against the bound and the loop lag).",
        ),
        _alert(
            "RequestRateSurge",
            f"{now} > {factor:g} * {before} and {before} > {a.min_baseline_rps:g}",
            for_="5m", severity="warning",
            summary=f"Request rate up more than {a.request_rate_increase_percent:g} % on an hour ago",
            description="The gateway serves {{ $value | printf \"%.2f\" }} requests/s, over "
                        f"{factor:g}x the same window an hour earlier (baseline above "
                        f"{a.min_baseline_rps:g}/s).",
        ),
    ]


def slo_alerts(settings: StackSettings) -> list[Rule]:
    a = settings.monitoring.alerting
    budget = 1 - a.availability_target
    rules: list[Rule] = []
    for severity, name in (("critical", "AvailabilityBudgetBurnFast"), ("warning", "AvailabilityBudgetBurnSlow")):
        pairs = [(lw, sw, rate) for lw, sw, rate, sev in BURN_WINDOWS if sev == severity]
        expr = " or ".join(
            f"({ERROR_RATIO.format(window=lw)} > {rate * budget:.6g}"
            f" and {ERROR_RATIO.format(window=sw)} > {rate * budget:.6g})"
            for lw, sw, rate in pairs
        )
        rules.append(_alert(
            name, expr, for_="2m" if severity == "critical" else "15m", severity=severity, slo="availability",
            summary=f"Error budget of the {a.availability_target:.3%} availability SLO burning too fast",
            description="5xx ratio {{ $value | humanizePercentage }} over the long window; windows "
                        + ", ".join(f"{lw}/{sw} at {rate:g}x" for lw, sw, rate in pairs) + ".",
        ))
    sc = scope(settings)
    waiting = sc.select(m.VLLM_WAITING, m.JOB_VLLM)
    rules += [
        _alert(
            "TtftP95High", f"{TTFT_QUANTILE.format(q=95)} > {a.ttft_p95_seconds:g}",
            for_="10m", severity="warning", slo="latency",
            summary=f"P95 time to first token above {a.ttft_p95_seconds:g} s",
            description="vLLM's P95 TTFT over 5 minutes is {{ $value | printf \"%.2f\" }} s.",
        ),
        _alert(
            "KvCacheUsageHigh",
            f"max by (job, instance) ({sc.select(m.VLLM_KV_USAGE, m.JOB_VLLM)}) > {a.kv_cache_usage_ratio:g}",
            for_="5m", severity="warning",
            summary=f"vLLM KV cache above {a.kv_cache_usage_ratio:.0%} on {{{{ $labels.instance }}}}",
            description="KV cache usage {{ $value | humanizePercentage }}: requests will queue or be preempted.",
        ),
        _alert(
            "RequestsWaitingHigh",
            f"max by (job, instance) ({waiting}) > {a.waiting_requests}",
            for_="5m", severity="warning", signal="scale-out",
            summary=f"More than {a.waiting_requests} requests waiting on {{{{ $labels.instance }}}}",
            description="{{ $value | printf \"%.0f\" }} requests queued in vLLM for 5 minutes.",
        ),
        _alert(
            "NoHealthyVllmBackend",
            f'(count({sc.select("up", m.JOB_VLLM)} == 1) or vector(0)) == 0',
            for_="1m", severity="critical",
            summary="No vLLM backend is up",
            description="Every vLLM replica is down or unreachable: all chat requests fail.",
        ),
        _alert(
            "RedisDown",
            f"(max({sc.select(m.REDIS_UP, m.JOB_REDIS)}) or vector(0)) == 0",
            for_="1m", severity="critical",
            summary="Redis is down",
            description="redis_exporter reports Redis unreachable (or the Redis pod is gone): sessions "
                        "and shared rate limits are unavailable.",
        ),
    ]
    return rules


def replication_alerts(settings: StackSettings) -> list[Rule]:
    """The cross-site Redis link (sites with redis.replication): down, lagging, or (primary) no replica."""
    rep = settings.redis.replication
    if rep is None:
        return []
    lag = rep.lag_alert_seconds
    sc = scope(settings)

    def redis(metric: str) -> str:
        return sc.select(metric, m.JOB_REDIS)

    rules = [
        _alert(
            "RedisReplicationLinkDown",
            f"min({redis(m.REDIS_MASTER_LINK_UP)}) == 0",
            for_="1m", severity="critical",
            summary="The standby's Redis has lost its primary",
            description="master_link_status is down on this replica: sessions written at the primary are not "
                        "reaching this site; a failover now would lose them (README: disaster recovery).",
        ),
        _alert(
            "RedisReplicaLagHigh",
            f"max({redis(m.REDIS_MASTER_LAST_IO)} or {redis(m.REDIS_REPLICA_LAG)}) > {lag}",
            for_="1m", severity="warning",
            summary="Redis replication lags",
            description=f"The cross-site replica is {{{{ $value | printf \"%.0f\" }}}} s behind (threshold "
                        f"{lag} s, redis.replication.lagAlertSeconds): the RPO is at least that; failback waits.",
        ),
    ]
    if settings.site.role == "primary":
        rules.append(_alert(
            "RedisPrimaryHasNoReplica",
            f"(max({redis(m.REDIS_CONNECTED_REPLICAS)}) or vector(0)) < 1",
            for_="5m", severity="warning",
            summary="No standby replicates this primary's Redis",
            description="No replica is connected over the replication endpoint: the DR site has no copy of "
                        "new sessions.",
        ))
    return rules


def backup_alerts(settings: StackSettings) -> list[Rule]:
    """The Redis backup CronJob (sites with redis.backup), from kube-state-metrics: no successful snapshot for
    twice the schedule's longest gap (page), and the newest backup Job failed (ticket)."""
    backup = settings.redis.backup
    if backup is None:
        return []
    sc = scope(settings)
    gap = backup.longest_gap_seconds
    overdue = 2 * gap
    cronjob = {"cronjob": BACKUP_CRONJOB}
    last_success = f"max by (namespace, cronjob) ({sc.select(m.KSM_CRONJOB_LAST_SUCCESS, m.JOB_KSM, **cronjob)})"
    created = f"max by (namespace, cronjob) ({sc.select(m.KSM_CRONJOB_CREATED, m.JOB_KSM, **cronjob)})"
    owned = sc.select(m.KSM_JOB_OWNER, m.JOB_KSM, owner_kind="CronJob", owner_name=BACKUP_CRONJOB)
    starts = f"({sc.select(m.KSM_JOB_START, m.JOB_KSM)} and on (namespace, job_name) {owned})"
    newest = f"({starts} == on (namespace) group_left () max by (namespace) ({starts}))"
    failed = f'max by (namespace, job_name) ({sc.select(m.KSM_JOB_FAILED, m.JOB_KSM, condition="true")})'
    kubectl = f"kubectl -n {settings.kubernetes.namespace}"
    return [
        _alert(
            "RedisBackupMissing",
            # Last success too long ago; or none ever, and the CronJob older than that.
            f"(time() - {last_success} > {overdue})"
            f" or (time() - {created} > {overdue} unless on (namespace, cronjob) {last_success})",
            for_="15m", severity="critical",
            summary=f"No successful Redis backup for over twice the schedule ({m.duration(overdue)})",
            description=f"The last successful {BACKUP_CRONJOB} run (schedule '{backup.schedule}' UTC, at most "
                        f"{m.duration(gap)} apart) was {{{{ $value | printf \"%.0f\" }}}} s ago (or never, that "
                        f"long after the CronJob was created): nothing recent to restore from. "
                        f"`{kubectl} describe cronjob {BACKUP_CRONJOB}`, then its newest Job's logs.",
        ),
        _alert(
            "RedisBackupFailed",
            f"{failed} == 1 and on (namespace, job_name) {newest}",
            for_="0s", severity="warning",
            summary="The latest Redis backup Job failed",
            description=f"Job {{{{ $labels.job_name }}}}, the newest of CronJob {BACKUP_CRONJOB}, failed: "
                        f"`{kubectl} logs job/{{{{ $labels.job_name }}}}`. The next scheduled run may succeed; "
                        "RedisBackupMissing pages if none does for twice the schedule.",
        ),
    ]


def rule_groups(settings: StackSettings) -> list[dict[str, Any]]:
    interval = settings.monitoring.scrape_interval
    groups = [
        {"name": "qwen-serving.recording", "interval": interval, "rules": recording_rules(settings)},
        {"name": "qwen-serving.capacity", "interval": interval, "rules": capacity_alerts(settings)},
        {"name": "qwen-serving.slo", "interval": interval, "rules": slo_alerts(settings)},
    ]
    replication = replication_alerts(settings)
    if replication:
        groups.append({"name": "qwen-serving.redis-replication", "interval": interval, "rules": replication})
    backup = backup_alerts(settings)
    if backup:
        groups.append({"name": "qwen-serving.redis-backup", "interval": interval, "rules": backup})
    return groups


def alert_names(settings: StackSettings) -> list[str]:
    return [r["alert"] for g in rule_groups(settings) for r in g["rules"] if "alert" in r]


def render_rules(settings: StackSettings) -> str:
    """The rule file (`groups:`) as YAML text."""
    return yaml.safe_dump({"groups": rule_groups(settings)}, sort_keys=False, width=200)
