"""Whose targets this stack's rules are about: its scrape jobs, each in its namespace, from the settings.

Under kube-prometheus-stack one Prometheus scrapes the whole cluster (the scheduler, etcd, other teams'
Services, another stack's `vllm` in its own namespace). A rule that selects `up` or a metric name alone
pages for all of them. Every selector in the rules comes from `Scope.select`, which pins `job` and
`namespace`; the ServiceMonitors put those labels on (job = the Service's `app.kubernetes.io/name`,
namespace = the target's), and the local stack's static scrape config attaches the same two labels
(stackspec/monitoring/scrape.py).

kube-state-metrics is not a target of ours but reports on our objects (the backup CronJob and its Jobs): its
ServiceMonitor keeps the reported object's `namespace` (honorLabels), so its series of this stack are the
ones in the application namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

from stackspec.monitoring import promql as m
from stackspec.settings import StackSettings

# The jobs in the application namespace (the Services the ServiceMonitors select).
APP_JOBS = (m.JOB_VLLM, m.JOB_GATEWAY, m.JOB_EDGE, m.JOB_REDIS)
# The jobs in the GPU system namespace (the DCGM exporter's Helm chart).
GPU_JOBS = (m.JOB_DCGM,)
# Jobs that report on objects in the application namespace (not scrape targets of ours: no `up` alert).
OBJECT_JOBS = (m.JOB_KSM,)


@dataclass(frozen=True)
class Scope:
    namespace: str  # settings.kubernetes.namespace
    gpu_namespace: str  # settings.kubernetes.gpu_system_namespace

    def namespace_of(self, job: str) -> str:
        if job in APP_JOBS or job in OBJECT_JOBS:
            return self.namespace
        if job in GPU_JOBS:
            return self.gpu_namespace
        raise KeyError(f"{job!r} is not one of this stack's scrape jobs: {APP_JOBS + GPU_JOBS + OBJECT_JOBS}")

    def labels(self, job: str) -> dict[str, str]:
        """The target labels Prometheus attaches to every series of `job` (cluster and local stack alike)."""
        return {"job": job, "namespace": self.namespace_of(job)}

    def select(self, metric: str, job: str, **labels: str) -> str:
        """`metric{job="…",namespace="…",…}` (values starting with `~` are regex matches, as in promql)."""
        return m.selector(metric, **self.labels(job), **labels)

    def jobs_by_namespace(self) -> dict[str, tuple[str, ...]]:
        return {self.namespace: APP_JOBS, self.gpu_namespace: GPU_JOBS}


def scope(settings: StackSettings) -> Scope:
    return Scope(namespace=settings.kubernetes.namespace, gpu_namespace=settings.kubernetes.gpu_system_namespace)
