"""Metric names and PromQL helpers shared by rules, dashboards and tests.

Names come from what the processes really export: vLLM's from a live vLLM `/metrics`, the gateway's from
app/gateway/metrics.py. Scrape jobs are named after the Kubernetes Services (and the local stack uses the
same job names), so one rule file works in both places.
"""

from __future__ import annotations

import re

# Scrape job names (= Kubernetes Service names the ServiceMonitors select).
JOB_VLLM = "vllm"
JOB_GATEWAY = "gateway"
JOB_EDGE = "edge"
JOB_REDIS = "redis"
JOB_DCGM = "dcgm-exporter"
JOB_KSM = "kube-state-metrics"  # kube-prometheus-stack's; it reports objects, labelled with their namespace

# vLLM (v1 engine) metrics.
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = "vllm:kv_cache_usage_perc"  # a fraction, 0..1
VLLM_TTFT = "vllm:time_to_first_token_seconds"  # histogram
VLLM_E2E = "vllm:e2e_request_latency_seconds"  # histogram
VLLM_SUCCESS = "vllm:request_success_total"
VLLM_GENERATION_TOKENS = "vllm:generation_tokens_total"
VLLM_PROMPT_TOKENS = "vllm:prompt_tokens_total"
# Prefix caching, in tokens: of the prompt tokens looked up in the cache (queries), those found (hits).
VLLM_PREFIX_HITS = "vllm:prefix_cache_hits_total"
VLLM_PREFIX_QUERIES = "vllm:prefix_cache_queries_total"

# Gateway metrics (app/gateway/metrics.py).
GW_REQUESTS = "gateway_requests_total"  # labels: route, status, model
GW_TTFT = "gateway_time_to_first_token_seconds"  # histogram, label model
GW_DURATION = "gateway_request_duration_seconds"  # histogram
GW_BACKEND_HEALTHY = "gateway_backend_healthy"  # gauge per backend
GW_RETRIES = "gateway_upstream_retries_total"  # label reason
GW_UPSTREAM_ERRORS = "gateway_upstream_errors_total"  # labels backend, kind
GW_BACKEND_OUTSTANDING = "gateway_backend_outstanding_requests"
GW_RATE_LIMIT_FAIL_OPEN = "gateway_rate_limit_fail_open_total"
GW_REDIS_UP = "gateway_redis_up"
GW_REDIS_ERRORS = "gateway_redis_errors_total"
GW_AUTH_FAILURES = "gateway_auth_failures_total"
GW_TOKENS = "gateway_tokens_total"  # labels direction, model
GW_RATE_LIMITED = "gateway_rate_limited_total"  # label limit
GW_ACTIVE_STREAMS = "gateway_active_streams"
# Routing (app/gateway/backends/routing.py): decisions by policy and outcome (cache_hit, miss, spill), the
# prompt tokens routed and those estimated cached where they went, the decision time, queued prefill.
GW_ROUTING_DECISIONS = "gateway_routing_decisions_total"
GW_ROUTING_PROMPT_TOKENS = "gateway_routing_prompt_tokens_total"
GW_ROUTING_CACHED_TOKENS = "gateway_routing_cached_tokens_total"
GW_ROUTING_DECISION_SECONDS = "gateway_routing_decision_seconds"  # histogram, label policy
GW_BACKEND_QUEUED_PREFILL = "gateway_backend_queued_prefill_tokens"
# Admission control (app/gateway/admission.py): requests refused as overloaded, and what it decides on.
GW_OVERLOAD_REJECTED = "gateway_overload_rejected_total"  # label reason: in_flight | loop_lag
GW_IN_FLIGHT = "gateway_in_flight_requests"
GW_IN_FLIGHT_LIMIT = "gateway_in_flight_limit"
GW_LOOP_LAG = "gateway_event_loop_lag_seconds"

# Exporters.
DCGM_UTIL = "DCGM_FI_DEV_GPU_UTIL"  # percent
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"  # MiB
DCGM_FB_FREE = "DCGM_FI_DEV_FB_FREE"  # MiB
DCGM_TEMP = "DCGM_FI_DEV_GPU_TEMP"  # Celsius
DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"  # W
REDIS_UP = "redis_up"
# Replication (redis_exporter): on a replica, the link and the seconds since the primary last spoke; on a
# primary, its replicas and the seconds since each last acknowledged.
REDIS_MASTER_LINK_UP = "redis_master_link_up"
REDIS_MASTER_LAST_IO = "redis_master_last_io_seconds_ago"
REDIS_CONNECTED_REPLICAS = "redis_connected_slaves"
REDIS_REPLICA_LAG = "redis_connected_slave_lag_seconds"
NGINX_UP = "nginx_up"
# kube-state-metrics: CronJobs (label cronjob) and Jobs (label job_name), times in Unix seconds.
KSM_CRONJOB_CREATED = "kube_cronjob_created"
KSM_CRONJOB_LAST_SUCCESS = "kube_cronjob_status_last_successful_time"
KSM_JOB_OWNER = "kube_job_owner"  # labels owner_kind, owner_name
KSM_JOB_START = "kube_job_status_start_time"
KSM_JOB_FAILED = "kube_job_failed"  # label condition: "true" when the Job has failed for good

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")


def seconds(duration: str) -> float:
    """A single-unit Prometheus duration ("30s", "5m") in seconds."""
    match = _DURATION_RE.match(duration)
    if match is None:
        raise ValueError(f"not a Prometheus duration: {duration!r} (write e.g. 30s, 5m, 1h)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def duration(secs: float) -> str:
    """Seconds as a Prometheus duration, in the largest whole unit ("90s", "5m")."""
    whole = round(secs * 1000)
    for unit in ("d", "h", "m", "s"):
        step = int(_UNITS[unit] * 1000)
        if whole % step == 0:
            return f"{whole // step}{unit}"
    return f"{whole}ms"


def selector(metric: str, **labels: str) -> str:
    """`metric{a="x",b=~"y"}`; a value starting with `~` is a regex match."""
    if not labels:
        return metric
    parts = []
    for key, value in labels.items():
        op, val = ("=~", value[1:]) if value.startswith("~") else ("=", value)
        parts.append(f'{key}{op}"{val}"')
    return f"{metric}{{{','.join(parts)}}}"


def quantile(q: float, histogram: str, window: str, *, by: str = "le", **labels: str) -> str:
    """The q-quantile of a histogram's rate over `window`, aggregated `by` (which must keep `le`)."""
    buckets = selector(f"{histogram}_bucket", **labels)
    return f"histogram_quantile({q:g}, sum by ({by}) (rate({buckets}[{window}])))"
