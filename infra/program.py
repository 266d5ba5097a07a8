"""The program: read the stack's settings once, declare every tier, export what operators need."""

from __future__ import annotations

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env

from infra.components.monitoring import Monitoring, MonitoringArgs
from infra.global_program import declare_global
from infra.global_settings import DnsSettings, global_settings_from_config, is_global_config
from infra.settings import StackSettings, settings_from_config


def read_settings() -> StackSettings | DnsSettings:
    """All of this stack's config, as the engine passed it, parsed and validated in one go.

    The `global` stack (it has `qwen-serving:dns`) declares DNS failover; every other stack is a site.
    """
    raw = {**get_config_env(), **CONFIG.get()}
    if is_global_config(raw):
        return global_settings_from_config(raw)
    return settings_from_config(raw)


def site_exports(settings: StackSettings) -> dict[str, object]:
    """Outputs other stacks read (the global stack's StackReference uses `edge_address`)."""
    return {
        "site": settings.site.name,
        "role": settings.site.role,
        "namespace": settings.kubernetes.namespace,
        "hostname": settings.edge.hostname,
        "edge_address": settings.edge.load_balancer_ip,
        "capacity": settings.capacity.describe(),
    }


def declare(settings: StackSettings) -> dict[str, object]:
    """Declare every tier for one site; returns the stack outputs."""
    outputs = site_exports(settings)
    # Tiers are added here by their components (infra/components/*).
    # monitoring tier: see infra/components/monitoring.py
    if settings.monitoring.enabled:
        monitoring = Monitoring("monitoring", MonitoringArgs(settings=settings))
        outputs["prometheus_url"] = monitoring.prometheus_url
    return outputs


def main() -> None:
    settings = read_settings()  # raises SettingsError before any resource is declared
    outputs = declare_global(settings) if isinstance(settings, DnsSettings) else declare(settings)
    for key, value in outputs.items():
        pulumi.export(key, value)
