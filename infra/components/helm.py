"""Helm releases, declared one way: pinned chart version, chart repository, target namespace."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s


def helm_release(
    name: str,
    *,
    chart: str,
    version: str,
    repo: str,
    namespace: str,
    values: dict[str, Any],
    opts: pulumi.ResourceOptions,
    timeout: int | None = None,
) -> k8s.helm.v3.Release:
    """One chart at a pinned version; the release and the Pulumi resource share the name."""
    return k8s.helm.v3.Release(
        name,
        k8s.helm.v3.ReleaseArgs(
            name=name,
            chart=chart,
            version=version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=repo),
            namespace=namespace,
            values=values,
            timeout=timeout,
        ),
        opts=opts,
    )
