"""Prometheus' own configuration for the local stack: the same jobs and rules as the cluster.

In the cluster the Prometheus Operator builds the scrape config from ServiceMonitors; locally there is
no operator, so this renders the equivalent static config. Job names match the Kubernetes Service
names (stackspec/monitoring/promql.py), and each target carries the `namespace` label the operator would
give it (stackspec/monitoring/scope.py), so the rules, scoped to both, render once for both places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from stackspec.monitoring.scope import scope
from stackspec.settings import StackSettings

RULE_FILE = "rules.yaml"


def prometheus_config(settings: StackSettings, targets: Mapping[str, Sequence[str]],
                      rule_files: Sequence[str] = (RULE_FILE,)) -> dict[str, Any]:
    """`targets`: job name -> ["127.0.0.1:port", ...] (each serves /metrics)."""
    interval = settings.monitoring.scrape_interval
    sc = scope(settings)
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": interval,
            "external_labels": {"site": settings.site.name},
        },
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics",
             "static_configs": [{"targets": list(hosts), "labels": {"namespace": sc.namespace_of(job)}}]}
            for job, hosts in sorted(targets.items())
        ],
    }


def render_prometheus_config(settings: StackSettings, targets: Mapping[str, Sequence[str]],
                             rule_files: Sequence[str] = (RULE_FILE,)) -> str:
    return yaml.safe_dump(prometheus_config(settings, targets, rule_files), sort_keys=False)
