"""Runs of the real program under Pulumi's mocks, one per stack (cached), and helpers to read them."""

from __future__ import annotations

from functools import cache
from typing import Any

from infra.offline import OfflineRun, manifest_of, run_stack
from tests.stacks import SITE_STACKS

STACKS = SITE_STACKS
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
SERVICE = "kubernetes:core/v1:Service"
SECRET = "kubernetes:core/v1:Secret"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NAMESPACE = "kubernetes:core/v1:Namespace"
RELEASE = "kubernetes:helm.sh/v3:Release"
IMAGE = "docker:index/image:Image"


@cache
def stack_run(stack: str) -> OfflineRun:
    """The program's resources for one stack file (runs are pure data afterwards, so they are shared)."""
    return run_stack(stack)


def obj(run: OfflineRun, type_: str, name: str) -> dict[str, Any]:
    """The Kubernetes object (secrets unwrapped, whole numbers as ints) of one captured resource."""
    manifest = manifest_of(run.one(type_, name))
    assert manifest is not None
    return manifest


def pod_spec(run: OfflineRun, type_: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = obj(run, type_, name)["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1, [c["name"] for c in spec["containers"]]
    return found[0]
