"""Prometheus metrics, on a registry per app so several apps can live in one process (tests).

Several gateway processes in one pod (GATEWAY_PROCESSES, supervisor.py) share one /metrics: prometheus_client's
multiprocess mode. The supervisor sets PROMETHEUS_MULTIPROC_DIR (the pod's emptyDir) before the processes
start; each process writes its values to files there (prometheus_client decides this when it is imported), and
whichever process answers a scrape reads all of them (`exposition()`). Counters and histograms add up over the
processes; each gauge says how its processes' values combine (`multiprocess_mode`, live* = the processes
running now): counts in flight add up, a health or readiness verdict is the worst process's, and so is lag.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it


def multiprocess_dir() -> str | None:
    """The directory the processes of this pod share their metrics in, or None (one process)."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total", "Requests by route, status and model", ["route", "status", "model"], registry=r
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Time to the end of the response", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds", "Time to the first streamed chunk", ["model"],
            buckets=TTFT_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens_total", "Tokens by direction (prompt/completion), from vLLM's usage",
            ["direction", "model"], registry=r,
        )
        self.backend_healthy = Gauge(
            "gateway_backend_healthy", "1 if the backend passes health checks", ["backend"], registry=r,
            multiprocess_mode="livemin",
        )
        self.backend_outstanding = Gauge(
            "gateway_backend_outstanding_requests", "Requests in flight per backend", ["backend"], registry=r,
            multiprocess_mode="livesum",
        )
        self.backend_queued_prefill = Gauge(
            "gateway_backend_queued_prefill_tokens",
            "Estimated prompt tokens routed to the backend whose prefill is not over (routing's load)", ["backend"],
            registry=r, multiprocess_mode="livesum",
        )
        self.routing_decisions = Counter(
            "gateway_routing_decisions_total",
            "Routing decisions by policy and outcome: cache_hit (the backend is estimated to hold part of the "
            "prompt), miss, spill (the best backend for the cache was over the load bound)",
            ["policy", "outcome"], registry=r,
        )
        self.routing_prompt_tokens = Counter(
            "gateway_routing_prompt_tokens_total", "Estimated prompt tokens of routed requests", ["policy"],
            registry=r,
        )
        self.routing_cached_tokens = Counter(
            "gateway_routing_cached_tokens_total",
            "Of those, the tokens the chosen backend was estimated to hold in its prefix cache", ["policy"],
            registry=r,
        )
        self.routing_decision_seconds = Histogram(
            "gateway_routing_decision_seconds", "Time to choose a backend (hashing the prompt excluded)",
            ["policy"], buckets=DECISION_BUCKETS, registry=r,
        )
        self.retries = Counter(
            "gateway_upstream_retries_total", "Requests retried on another backend", ["reason"], registry=r
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total", "Upstream failures by kind", ["backend", "kind"], registry=r
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_total", "Requests refused by a rate limit", ["limit"], registry=r
        )
        self.rate_limit_fail_open = Counter(
            "gateway_rate_limit_fail_open_total", "Requests let through because Redis was unavailable", registry=r
        )
        self.active_streams = Gauge("gateway_active_streams", "Streaming responses in progress", registry=r,
                                    multiprocess_mode="livesum")
        self.redis_errors = Counter(
            "gateway_redis_errors_total", "Redis operations that failed", ["operation"], registry=r
        )
        self.turns_not_stored = Counter(
            "gateway_session_turns_not_stored_total",
            "Session turns answered but not saved (Redis unavailable); the client was told", registry=r,
        )
        self.redis_up = Gauge("gateway_redis_up", "1 if the last Redis operation succeeded", registry=r,
                              multiprocess_mode="livemin")
        self.auth_failures = Counter(
            "gateway_auth_failures_total", "Rejected credentials by reason", ["reason"], registry=r
        )
        self.background_errors = Counter(
            "gateway_background_errors_total", "Background loops (probes, DNS) that raised and were restarted",
            ["task"], registry=r,
        )
        self.loop_lag = Gauge(
            "gateway_event_loop_lag_seconds", "How late the event loop runs a timer (worst of the last second)",
            registry=r, multiprocess_mode="livemax",
        )
        self.in_flight = Gauge("gateway_in_flight_requests", "Generation requests being served", registry=r,
                               multiprocess_mode="livesum")
        self.in_flight_limit = Gauge(
            "gateway_in_flight_limit",
            "Generation requests admitted at once now (each process's bound, lowered while its event loop lags)",
            registry=r, multiprocess_mode="livesum",
        )
        self.overload_rejected = Counter(
            "gateway_overload_rejected_total", "Generation requests refused with 503 overloaded, by reason",
            ["reason"], registry=r,
        )
        self.verdicts_withheld = Counter(
            "gateway_backend_verdicts_withheld_total",
            "Backend failures (probe or request timeouts) not held against the backend: our own loop lagged",
            ["kind"], registry=r,
        )
        self.redis_pool_exhausted = Counter(
            "gateway_redis_pool_exhausted_total",
            "Redis calls refused because no pool connection freed up in time (overload, not an outage)",
            ["redis"], registry=r,
        )
        self.ready = Gauge("gateway_ready", "1 when the gateway would pass its readiness probe", registry=r,
                           multiprocess_mode="livemin")

    def exposition(self) -> bytes:
        """The text a scrape gets: this registry, or with several processes every process's values combined."""
        if multiprocess_dir() is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined)
        return generate_latest(combined)
