"""The program: read the stack's settings once, declare every tier, export what operators need."""

from __future__ import annotations

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env

from infra.components.monitoring import Monitoring, MonitoringArgs
from infra.settings import StackSettings, settings_from_config


def read_settings() -> StackSettings:
    """All of this stack's config, as the engine passed it, parsed and validated in one go."""
    raw = {**get_config_env(), **CONFIG.get()}
    return settings_from_config(raw)


def declare(settings: StackSettings) -> dict[str, object]:
    """Declare every tier for one site; returns the stack outputs."""
    outputs: dict[str, object] = {
        "site": settings.site.name,
        "role": settings.site.role,
        "namespace": settings.kubernetes.namespace,
        "capacity": settings.capacity.describe(),
    }
    # Tiers are added here by their components (infra/components/*).
    # monitoring tier: see infra/components/monitoring.py
    if settings.monitoring.enabled:
        monitoring = Monitoring("monitoring", MonitoringArgs(settings=settings))
        outputs["prometheus_url"] = monitoring.prometheus_url
    return outputs


def main() -> None:
    settings = read_settings()  # raises SettingsError before any resource is declared
    for key, value in declare(settings).items():
        pulumi.export(key, value)
