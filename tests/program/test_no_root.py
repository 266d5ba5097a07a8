"""Layer 2: no root anywhere. Every pod any stack declares (Deployments, StatefulSets, DaemonSets, Jobs,
CronJobs) runs as a UID >= 10000, non-root, with a read-only root filesystem; vLLM's every cache is on a
mounted volume, never on that read-only root."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest

from infra.offline import manifest_of
from policies.kube import JOBS, WORKLOADS, containers
from policies.kube import pod_spec as workload_pod
from stackspec.images import VLLM_UID
from stackspec.render.vllm_args import writable_dirs_env
from tests.program.conftest import DEPLOYMENT, STACKS, container, pod_spec, stack_run

HIGH_UID = 10000


def _pods(stack: str) -> dict[str, dict[str, Any]]:
    run = stack_run(stack)
    pods = {}
    for r in run.resources:
        if r.type in WORKLOADS | JOBS:
            manifest = manifest_of(r)
            assert manifest is not None
            pods[f"{r.type.rsplit(':', 1)[-1]}/{r.name}"] = dict(workload_pod(manifest))
    return pods


def _identity_problems(pod: dict[str, Any]) -> list[str]:
    problems = []
    pod_ctx = pod.get("securityContext") or {}
    for c in containers(pod):
        ctx = {**pod_ctx, **(c.get("securityContext") or {})}  # a container's own setting wins, as in Kubernetes
        if not isinstance(ctx.get("runAsUser"), int) or ctx["runAsUser"] < HIGH_UID:
            problems.append(f"{c['name']}: runAsUser {ctx.get('runAsUser')} (want >= {HIGH_UID})")
        if ctx.get("runAsNonRoot") is not True:
            problems.append(f"{c['name']}: runAsNonRoot")
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem")
    return problems


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_runs_as_a_high_uid_non_root_with_a_read_only_root(stack: str) -> None:
    pods = _pods(stack)
    assert {"Deployment/vllm", "Deployment/edge", "Deployment/gateway", "StatefulSet/redis"} <= set(pods)
    problems = {name: p for name, pod in pods.items() if (p := _identity_problems(pod))}
    assert problems == {}


def test_a_low_uid_or_a_writable_root_is_reported() -> None:
    """The check above can fail: the UID of the old edge image, and vLLM as the official image's root."""
    pod = {"securityContext": {"runAsUser": 101, "runAsNonRoot": True},
           "containers": [{"name": "nginx", "securityContext": {"readOnlyRootFilesystem": True}},
                          {"name": "vllm", "securityContext": {"runAsUser": 0}}]}
    assert _identity_problems(pod) == [
        "nginx: runAsUser 101 (want >= 10000)",
        "vllm: runAsUser 0 (want >= 10000)", "vllm: readOnlyRootFilesystem",
    ]


def _under(path: str, mounts: dict[str, str]) -> str | None:
    """The volume whose mount holds `path`, if any."""
    for volume, mount in mounts.items():
        if PurePosixPath(path).is_relative_to(mount):
            return volume
    return None


@pytest.mark.parametrize("stack", STACKS)
def test_vllm_writes_only_to_its_volumes(stack: str) -> None:
    spec = pod_spec(stack_run(stack), DEPLOYMENT, "vllm")
    vllm = container(spec, "vllm")
    assert spec["securityContext"]["runAsUser"] == VLLM_UID
    # fsGroup: a claimed model cache becomes group-writable for vLLM's UID (a hostPath is prepared on the host)
    assert spec["securityContext"]["fsGroup"] == VLLM_UID
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in vllm["volumeMounts"]}
    env = {e["name"]: e["value"] for e in vllm["env"] if "value" in e}
    # Every directory vLLM and its libraries write to is set, and lies on a mounted volume.
    writable = set(writable_dirs_env("/h", "/c", "/m"))
    assert writable <= set(env)
    placed = {name: _under(env[name], mounts) for name in writable}
    assert None not in placed.values(), placed
    assert placed["HF_HOME"] == "model-cache"
    assert {placed[k] for k in writable - {"HF_HOME"}} == {"home"}
    assert "emptyDir" in volumes["home"] and "emptyDir" in volumes["tmp"] and mounts["tmp"] == "/tmp"
    # A hostPath cache must exist, prepared on the host: kubelet would create it root-owned.
    if "hostPath" in volumes["model-cache"]:
        assert volumes["model-cache"]["hostPath"]["type"] == "Directory"
