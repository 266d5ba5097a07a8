"""promtool unit tests for every alert, built from the same settings the rules are rendered from.

Each alert gets cases where it must fire (with its exact labels and rendered annotations) and cases
where it must stay silent. `expected_alert` expands the rule's own annotation templates for a known
value, so a changed threshold, label or template shows up as a failing `promtool test rules`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from stackspec.monitoring import promql as m
from stackspec.monitoring.rules import rule_groups
from stackspec.monitoring.scope import scope
from stackspec.settings import BACKUP_CRONJOB, StackSettings


@dataclass
class Case:
    """One promtool test group: input series and the alert checks at given times."""

    description: str
    series: dict[str, str]
    checks: list[tuple[str, list[dict[str, Any]]]]  # (eval_time, expected alerts)
    interval: str = "30s"
    fires: bool = field(init=False)

    def __post_init__(self) -> None:
        self.fires = any(alerts for _, alerts in self.checks)


def _rule(settings: StackSettings, alert: str) -> dict[str, Any]:
    for group in rule_groups(settings):
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                return dict(rule)
    raise KeyError(alert)


def _expand(template: str, labels: dict[str, str], value: float) -> str:
    """The subset of Go templates the rules use: $labels.x, $value | printf, $value | humanizePercentage."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda mt: labels.get(mt.group(1), ""), template)
    text = re.sub(r'\{\{\s*\$value\s*\|\s*printf\s*"([^"]+)"\s*\}\}', lambda mt: mt.group(1) % value, text)
    text = re.sub(r"\{\{\s*\$value\s*\|\s*humanizePercentage\s*\}\}", lambda mt: f"{value * 100:.4g}%", text)
    if "{{" in text:
        raise ValueError(f"template not covered by the test expander: {template}")
    return text


def expected_alert(settings: StackSettings, alert: str, value: float, **labels: str) -> dict[str, Any]:
    rule = _rule(settings, alert)
    all_labels = {**labels, **rule["labels"]}
    return {
        "exp_labels": all_labels,
        "exp_annotations": {k: _expand(v, all_labels, value) for k, v in rule["annotations"].items()},
    }


def _counter(per_step: float, steps: int, start: float = 0) -> str:
    return f"{start:g}+{per_step:g}x{steps}"


def cases(settings: StackSettings) -> dict[str, list[Case]]:
    a = settings.monitoring.alerting
    interval = settings.monitoring.scrape_interval
    step = m.seconds(interval)
    ex = expected_alert

    def per_step(rate_per_second: float) -> float:
        return rate_per_second * step

    def span(duration: str) -> int:
        """Samples covering `duration` at this interval."""
        return int(m.seconds(duration) / step)

    quarter = span("15m")
    sc = scope(settings)

    def ours(job: str) -> str:
        """The target labels of one of this stack's jobs (job and namespace, as Prometheus attaches them)."""
        return ",".join(f'{k}="{v}"' for k, v in sc.labels(job).items())

    vllm, gateway, redis, dcgm = ours(m.JOB_VLLM), ours(m.JOB_GATEWAY), ours(m.JOB_REDIS), ours(m.JOB_DCGM)
    gw = m.GW_REQUESTS + '{' + gateway + ',route="/v1/chat/completions",model="m",status="%s"}'
    up_a = f'up{{{vllm},instance="10.0.0.1:8000"}}'
    result: dict[str, list[Case]] = {}

    # --- GPU utilisation > threshold for 5 minutes --------------------------------------------------------
    hot, warm = a.gpu_utilization_percent + 4, a.gpu_utilization_percent + 2
    result["GpuUtilizationHigh"] = [
        Case("pool average above the threshold: pending at 4m, firing at 6m", {
            f'{m.DCGM_UTIL}{{{dcgm},gpu="0",Hostname="gpu-a1"}}': f"{hot:g}x{quarter}",
            f'{m.DCGM_UTIL}{{{dcgm},gpu="1",Hostname="gpu-a1"}}': f"{warm:g}x{quarter}",
        }, [("4m", []), ("6m", [ex(settings, "GpuUtilizationHigh", (hot + warm) / 2)])], interval),
        Case("one hot GPU, pool average below the threshold", {
            f'{m.DCGM_UTIL}{{{dcgm},gpu="0",Hostname="gpu-a1"}}': f"99x{quarter}",
            f'{m.DCGM_UTIL}{{{dcgm},gpu="1",Hostname="gpu-a1"}}': f"{a.gpu_utilization_percent - 40:g}x{quarter}",
        }, [("6m", []), ("12m", [])], interval),
        Case("above the threshold for only 3 minutes", {
            f'{m.DCGM_UTIL}{{{dcgm},gpu="0",Hostname="gpu-a1"}}': f"{hot:g}x{span('3m')} 10x{quarter}",
        }, [("4m", []), ("8m", [])], interval),
    ]

    # --- a target failing N consecutive health checks (scrapes) -------------------------------------------
    n = a.health_check_failures
    ok_then_down = " ".join(["1"] * 3 + ["0"] * n + ["1"])
    t_last_fail = m.duration((3 + n - 1) * step)
    t_one_short = m.duration((3 + n - 2) * step)
    t_recovered = m.duration((3 + n) * step)
    flapping = " ".join((["0"] * (n - 1) + ["1"]) * 4)
    result["TargetHealthCheckFailing"] = [
        Case(f"{n} failed scrapes in a row fire at the {n}th, clear on recovery", {up_a: ok_then_down}, [
            (t_one_short, []),
            (t_last_fail, [ex(settings, "TargetHealthCheckFailing", 0, **sc.labels(m.JOB_VLLM),
                                 instance="10.0.0.1:8000")]),
            (t_recovered, []),
        ], interval),
        Case(f"failures never {n} in a row", {up_a: flapping}, [
            (m.duration(k * step), []) for k in range(n, 4 * n)
        ], interval),
        Case(f"a new target with fewer than {n} scrapes, all failed", {up_a: " ".join(["0"] * (n - 1))}, [
            (m.duration((n - 2) * step), []),
        ], interval),
    ]

    # --- request rate up by more than X % against the same window an hour earlier ---------------------------
    factor = 1 + a.request_rate_increase_percent / 100
    base = max(a.min_baseline_rps * 2, 1.0)
    steps_hour = int(4200 / step)  # 70 minutes of baseline

    def surge(before: float, after: float) -> str:
        return (f"{_counter(per_step(before), steps_hour)} "
                f"{_counter(per_step(after), int(900 / step), start=per_step(before) * (steps_hour + 1))}")

    surged = base * (factor + 1)
    result["RequestRateSurge"] = [
        Case("rate well above the factor over a real baseline", {gw % "200": surge(base, surged)}, [
            ("72m", []), ("82m", [ex(settings, "RequestRateSurge", surged, **sc.labels(m.JOB_GATEWAY))]),
        ], interval),
        Case("rate up, but less than the factor", {gw % "200": surge(base, base * (factor - 0.5))}, [
            ("82m", []),
        ], interval),
        Case("a big jump from a baseline too small to matter", {
            gw % "200": surge(a.min_baseline_rps / 5, a.min_baseline_rps / 5 * (factor + 5)),
        }, [("82m", [])], interval),
    ]

    # --- gateways shedding load (503 overloaded) -----------------------------------------------------------
    shed_share = a.overload_shed_percent / 100
    shed = m.GW_OVERLOAD_REJECTED + '{' + gateway + ',instance="10.0.1.1:8000",reason="in_flight"}'

    def shedding(share: float, minutes: int) -> dict[str, str]:
        """10 API requests/s for 30 minutes, `share` of them shed during the first `minutes` (then none)."""
        busy, rest = span(f"{minutes}m"), span("30m") - span(f"{minutes}m")
        shed_step = per_step(10 * share)
        return {gw % "200": _counter(per_step(10 * (1 - share)), span("30m")),
                gw % "503": f"{_counter(shed_step, busy)} {shed_step * busy:g}x{rest}",
                shed: f"{_counter(shed_step, busy)} {shed_step * busy:g}x{rest}"}

    result["GatewayShedding"] = [
        Case("5x the threshold shed for 20 minutes: pending at 8m, firing at 16m", shedding(shed_share * 5, 20), [
            ("8m", []), ("16m", [ex(settings, "GatewayShedding", shed_share * 5, **sc.labels(m.JOB_GATEWAY))]),
        ], interval),
        Case("half the threshold shed for 20 minutes", shedding(shed_share / 2, 20), [("16m", [])], interval),
        Case("5x the threshold for only 5 minutes", shedding(shed_share * 5, 5), [("8m", []), ("16m", [])], interval),
    ]

    # --- availability SLO burn rates -------------------------------------------------------------------------
    budget = 1 - a.availability_target
    total = 10.0

    def traffic(error_ratio: float, steps: int, spacing: float) -> dict[str, str]:
        # 10 % are 429s: client errors count in the total but never spend the budget.
        return {
            gw % "200": _counter(total * (0.9 - error_ratio) * spacing, steps),
            gw % "500": _counter(total * error_ratio * spacing, steps),
            gw % "429": _counter(total * 0.1 * spacing, steps),
        }

    fast_ratio = budget * 14.4 * 3
    result["AvailabilityBudgetBurnFast"] = [
        Case("a high 5xx ratio for an hour pages", traffic(fast_ratio, int(4200 / step), step), [
            ("1m", []), ("70m", [ex(settings, "AvailabilityBudgetBurnFast", fast_ratio, **sc.labels(m.JOB_GATEWAY))]),
        ], interval),
        Case("5xx within the budget", traffic(budget * 0.5, int(4200 / step), step), [("70m", [])], interval),
    ]
    slow_ratio = budget * 3 * 1.5  # above the 1d/2h rate, below the 6h/30m one
    result["AvailabilityBudgetBurnSlow"] = [
        Case("a moderate 5xx ratio for 3 hours opens a ticket", traffic(slow_ratio, 200, 60), [
            ("3h", [ex(settings, "AvailabilityBudgetBurnSlow", slow_ratio, **sc.labels(m.JOB_GATEWAY))]),
        ], "1m"),
        Case("5xx below the budget for 3 hours", traffic(budget * 0.5, 200, 60), [("3h", [])], "1m"),
    ]

    # --- P95 time to first token --------------------------------------------------------------------------
    t = a.ttft_p95_seconds
    bounds = [t / 3, t * 2 / 3, t * 4 / 3, t * 8 / 3]

    def histogram(counts: list[float]) -> dict[str, str]:
        series, cumulative = {}, 0.0
        for le, c in zip([*(f"{b:g}" for b in bounds), "+Inf"], counts, strict=True):
            cumulative += c
            series[f'{m.VLLM_TTFT}_bucket{{{vllm},instance="a",model_name="m",le="{le}"}}'] = \
                _counter(cumulative, span("30m"))
        return series

    slow_p95 = bounds[2] + (bounds[3] - bounds[2]) * 0.5  # 90 % fast, 10 % in the slowest bucket
    result["TtftP95High"] = [
        Case("10 % of first tokens slow: P95 above the SLO for 10 minutes", histogram([9, 0, 0, 1, 0]), [
            ("8m", []), ("16m", [ex(settings, "TtftP95High", slow_p95, **sc.labels(m.JOB_VLLM))]),
        ], interval),
        Case("all first tokens fast", histogram([0, 10, 0, 0, 0]), [("16m", [])], interval),
    ]

    # --- KV cache, waiting requests ---------------------------------------------------------------------
    kv = f'{m.VLLM_KV_USAGE}{{{vllm},instance="10.0.0.1:8000",engine="0",model_name="m"}}'
    full = min(a.kv_cache_usage_ratio + 0.05, 1.0)
    result["KvCacheUsageHigh"] = [
        Case("KV cache nearly full for 5 minutes", {kv: f"{full:g}x{quarter}"}, [
            ("3m", []),
            ("6m", [ex(settings, "KvCacheUsageHigh", full, job="vllm", instance="10.0.0.1:8000")]),
        ], interval),
        Case("KV cache busy but below the threshold", {kv: f"{a.kv_cache_usage_ratio - 0.1:g}x{quarter}"},
             [("10m", [])], interval),
    ]
    waiting = f'{m.VLLM_WAITING}{{{vllm},instance="10.0.0.1:8000",engine="0",model_name="m"}}'
    queued = a.waiting_requests + 5
    result["RequestsWaitingHigh"] = [
        Case("queue above the threshold for 5 minutes", {waiting: f"{queued}x{quarter}"}, [
            ("4m", []),
            ("6m", [ex(settings, "RequestsWaitingHigh", queued, job="vllm", instance="10.0.0.1:8000")]),
        ], interval),
        Case("queue at the threshold", {waiting: f"{a.waiting_requests}x{quarter}"}, [("10m", [])], interval),
        Case("a 2-minute burst", {waiting: f"{queued * 3}x{span('2m')} 0x{quarter}"}, [("6m", [])], interval),
    ]

    # --- no healthy backend, Redis down ------------------------------------------------------------------
    up_b = f'up{{{vllm},instance="10.0.0.2:8000"}}'
    result["NoHealthyVllmBackend"] = [
        Case("every vLLM target down", {up_a: f"0x{quarter}", up_b: f"0x{quarter}"}, [
            ("30s", []), ("2m", [ex(settings, "NoHealthyVllmBackend", 0)]),
        ], interval),
        Case("vLLM targets gone entirely (pods deleted)", {f'up{{{gateway},instance="g"}}': f"1x{quarter}"}, [
            ("2m", [ex(settings, "NoHealthyVllmBackend", 0)]),
        ], interval),
        Case("one backend down, one up", {up_a: f"0x{quarter}", up_b: f"1x{quarter}"}, [("2m", [])], interval),
    ]
    redis_up = f'{m.REDIS_UP}{{{redis},instance="redis-0"}}'
    result["RedisDown"] = [
        Case("redis_exporter reports Redis down", {redis_up: f"0x{quarter}"}, [("2m", [ex(settings, "RedisDown", 0)])],
             interval),
        Case("Redis pod gone (no redis_up at all)", {f'up{{{gateway},instance="g"}}': f"1x{quarter}"}, [
            ("2m", [ex(settings, "RedisDown", 0)]),
        ], interval),
        Case("Redis up", {redis_up: f"1x{quarter}"}, [("2m", [])], interval),
    ]
    result |= replication_cases(settings, quarter, interval)
    result |= backup_cases(settings)
    return {alert: [*found, *foreign_cases(settings, alert, found)] for alert, found in result.items()}


def replication_cases(settings: StackSettings, quarter: int, interval: str) -> dict[str, list[Case]]:
    """The cross-site Redis link's alerts (their own rule group), both ways."""
    rep = settings.redis.replication
    if rep is None:
        return {}
    ex = expected_alert
    redis = ",".join(f'{k}="{v}"' for k, v in scope(settings).labels(m.JOB_REDIS).items())
    link = f'{m.REDIS_MASTER_LINK_UP}{{{redis},instance="redis-0"}}'
    last_io = f'{m.REDIS_MASTER_LAST_IO}{{{redis},instance="redis-0"}}'
    replica_lag = f'{m.REDIS_REPLICA_LAG}{{{redis},instance="redis-0",slave_ip="198.51.100.5"}}'
    replicas = f'{m.REDIS_CONNECTED_REPLICAS}{{{redis},instance="redis-0"}}'
    late = rep.lag_alert_seconds + 5
    found = {
        "RedisReplicationLinkDown": [
            Case("the replica's link to its primary is down", {link: f"0x{quarter}"},
                 [("30s", []), ("2m", [ex(settings, "RedisReplicationLinkDown", 0)])], interval),
            Case("the link is up", {link: f"1x{quarter}"}, [("2m", [])], interval),
            Case("a primary has no link series at all", {replicas: f"1x{quarter}"}, [("2m", [])], interval),
        ],
        "RedisReplicaLagHigh": [
            Case("the replica has not heard from its primary for longer than the threshold",
                 {last_io: f"{late}x{quarter}"}, [("2m", [ex(settings, "RedisReplicaLagHigh", late)])], interval),
            Case("the primary's replica acknowledges late", {replica_lag: f"{late}x{quarter}"},
                 [("2m", [ex(settings, "RedisReplicaLagHigh", late)])], interval),
            Case("within the threshold", {last_io: f"1x{quarter}", replica_lag: f"{rep.lag_alert_seconds}x{quarter}"},
                 [("2m", [])], interval),
        ],
    }
    if settings.site.role == "primary":
        found["RedisPrimaryHasNoReplica"] = [
            Case("no replica connected", {replicas: f"0x{quarter}"},
                 [("2m", []), ("6m", [ex(settings, "RedisPrimaryHasNoReplica", 0)])], interval),
            Case("the standby is connected", {replicas: f"1x{quarter}"}, [("6m", [])], interval),
        ]
    return found


def backup_cases(settings: StackSettings) -> dict[str, list[Case]]:
    """The backup CronJob's alerts (sites with redis.backup), from kube-state-metrics series, both ways.

    Samples every minute (within the 5-minute lookback) over more than twice the schedule's longest gap;
    promtool's clock starts at 0, so a CronJob created or last successful "at 0" is that old at each evaluation.
    """
    backup = settings.redis.backup
    if backup is None:
        return {}
    ex = expected_alert
    ksm = ",".join(f'{k}="{v}"' for k, v in scope(settings).labels(m.JOB_KSM).items())
    step = 60
    gap = backup.longest_gap_seconds
    samples = int(3 * gap / step) + 6  # past 2x the gap plus the alert's 15 minutes, with room

    def at(seconds: float) -> str:
        return m.duration(seconds)

    cron = f'cronjob="{BACKUP_CRONJOB}"'
    created = f"{m.KSM_CRONJOB_CREATED}{{{ksm},{cron}}}"
    success = f"{m.KSM_CRONJOB_LAST_SUCCESS}{{{ksm},{cron}}}"
    # A success every `gap`: the series steps up to each run's time.
    runs = max(samples // int(gap / step), 1)
    on_schedule = " ".join(f"{r * gap:g}x{int(gap / step) - 1}" for r in range(runs + 1))
    labels = {"namespace": settings.kubernetes.namespace, "cronjob": BACKUP_CRONJOB}
    overdue, late = 2 * gap, 2 * gap + 20 * 60  # the alert waits 15 minutes after the threshold
    found = {
        "RedisBackupMissing": [
            Case("the last success is older than twice the schedule: pages after 15 minutes",
                 {created: f"0x{samples}", success: f"0x{samples}"},
                 [(at(overdue - 3600), []), (at(overdue + 300), []),
                  (at(late), [ex(settings, "RedisBackupMissing", late, **labels)])], f"{step}s"),
            Case("never successful since the CronJob was created, that long ago",
                 {created: f"0x{samples}"},
                 [(at(overdue - 3600), []), (at(late), [ex(settings, "RedisBackupMissing", late, **labels)])],
                 f"{step}s"),
            Case("a success on every run", {created: f"0x{samples}", success: on_schedule},
                 [(at(late), []), (at(late + gap / 2), [])], f"{step}s"),
        ],
    }
    owner = f'owner_kind="CronJob",owner_name="{BACKUP_CRONJOB}"'

    def job(name: str, start: int, failed: bool, owner_name: str = BACKUP_CRONJOB) -> dict[str, str]:
        jn = f'job_name="{name}"'
        return {
            f'{m.KSM_JOB_OWNER}{{{ksm},{jn},{owner.replace(BACKUP_CRONJOB, owner_name)}}}': "1x12",
            f"{m.KSM_JOB_START}{{{ksm},{jn}}}": f"{start}x12",
            f'{m.KSM_JOB_FAILED}{{{ksm},{jn},condition="true"}}': f"{int(failed)}x12",
            f'{m.KSM_JOB_FAILED}{{{ksm},{jn},condition="false"}}': f"{int(not failed)}x12",
        }

    found["RedisBackupFailed"] = [
        Case("the newest backup Job failed", {**job("redis-backup-100", 100, False),
                                              **job("redis-backup-200", 200, True)},
             [("2m", [ex(settings, "RedisBackupFailed", 1, namespace=settings.kubernetes.namespace,
                         job_name="redis-backup-200")])], "1m"),
        Case("an older Job failed, the newest succeeded", {**job("redis-backup-100", 100, True),
                                                           **job("redis-backup-200", 200, False)},
             [("2m", [])], "1m"),
        Case("a newer failed Job of another CronJob, ours succeeded", {
            **job("redis-backup-100", 100, False), **job("other-300", 300, True, owner_name="other")},
             [("2m", [])], "1m"),
    ]
    return found


# Targets that are not this stack's: its job names in another team's namespace, and a cluster component.
FOREIGN_TARGETS = ((None, "another-team"), ("kube-scheduler", "kube-system"))
# Alerts that fire when this stack's series are missing ("no healthy backend", "Redis down"): a foreign
# target alone would make them fire for the right reason, so their foreign cases keep this stack healthy.
ABSENCE_ALERTS = {"NoHealthyVllmBackend", "RedisDown", "RedisPrimaryHasNoReplica"}


def relabel(series: str, job: str | None, namespace: str) -> str:
    """The series of a foreign target: `namespace` (and `job`, when given) replaced."""
    if job is not None:
        series = re.sub(r'(?<![\w])job="[^"]*"', f'job="{job}"', series)
    return re.sub(r'(?<![\w])namespace="[^"]*"', f'namespace="{namespace}"', series)


def _foreign(series: dict[str, str], job: str | None, namespace: str) -> dict[str, str]:
    return {relabel(name, job, namespace): values for name, values in series.items()}


def foreign_cases(settings: StackSettings, alert: str, found: list[Case]) -> list[Case]:
    """For each firing case, the same failure on foreign targets stays silent, and next to this stack's own
    failure changes nothing (the same alerts, labels and values fire).

    For an absence alert the foreign failure comes with this stack healthy (its first silent case), and this
    stack's failure comes with foreign targets healthy (a foreign `vllm` up must not hide ours down).
    """
    firing = [c for c in found if c.fires]
    healthy = next(c for c in found if not c.fires)
    result: list[Case] = []
    for case in firing:
        for job, namespace in FOREIGN_TARGETS:
            who = f'{f"job {job}" if job else "the same jobs"} in namespace {namespace}'
            failing_elsewhere = _foreign(case.series, job, namespace)
            if alert in ABSENCE_ALERTS:
                quiet = {**healthy.series, **failing_elsewhere}
                loud = {**case.series, **_foreign(healthy.series, job, namespace)}
            else:
                quiet = failing_elsewhere
                loud = {**case.series, **failing_elsewhere}
            result.append(Case(f"foreign ({who}): {case.description} -> silent", quiet,
                               [(when, []) for when, _ in case.checks], case.interval))
            result.append(Case(f"ours and foreign ({who}): {case.description} -> only ours", loud,
                               case.checks, case.interval))
    return result


def promtool_test_file(settings: StackSettings, rule_file: str, alert: str, alert_cases: list[Case]
                       ) -> dict[str, Any]:
    return {
        "rule_files": [rule_file],
        "evaluation_interval": settings.monitoring.scrape_interval,
        "tests": [
            {
                "name": case.description,
                "interval": case.interval,
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [
                    {"eval_time": when, "alertname": alert, "exp_alerts": alerts} for when, alerts in case.checks
                ],
            }
            for case in alert_cases
        ],
    }
