"""Issue 22, secrets as files: no rendered pod of any stack carries a secret in its environment (neither a
Secret's value nor a secretKeyRef), and every Secret a pod reads reaches it as a read-only volume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.program.conftest import STACKS, manifest_of, stack_run

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# The Secrets issue 22 moved to files, mounted group-readable only (0440, the pod's fsGroup). The edge's TLS
# Secret keeps the kubelet's default mode until the edge runs with an fsGroup of its own (the "no root" item).
OURS = {"redis", "gateway-api-keys", "redis-backup"}


def pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for m in manifests:
        if m["kind"] not in POD_KINDS:
            continue
        spec = m["spec"]
        if m["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        yield f"{m['kind']}/{m['metadata']['name']}", spec["template"]["spec"]


def secret_values(manifests: list[dict[str, Any]]) -> set[str]:
    """Every value of every Secret, and each of its lines (a secrets file holds several)."""
    values: set[str] = set()
    for m in manifests:
        if m["kind"] == "Secret":
            for value in {**(m.get("stringData") or {}), **(m.get("data") or {})}.values():
                values |= {str(value).strip(), *(line.strip() for line in str(value).splitlines())}
    return {v for v in values if len(v) >= 8}  # "{}" or "" are no secrets


@pytest.mark.parametrize("stack", STACKS)
def test_no_pod_has_a_secret_in_its_environment(stack: str) -> None:
    run = stack_run(stack)
    manifests = [m for r in run.resources if (m := manifest_of(r)) is not None]
    secrets = secret_values(manifests)
    pods = dict(pod_specs(manifests))
    assert {"Deployment/gateway", "StatefulSet/redis"} <= set(pods)
    assert secrets, "the stack renders Secrets (the redis password, the API-key hashes)"
    for where, pod in pods.items():
        for c in [*(pod.get("initContainers") or []), *pod["containers"]]:
            for env in c.get("env") or []:
                assert not (env.get("valueFrom") or {}).get("secretKeyRef"), (where, c["name"], env["name"])
                assert str(env.get("value", "")).strip() not in secrets, (where, c["name"], env["name"])
            assert not any(s in arg for arg in [*(c.get("args") or []), *(c.get("command") or [])] for s in secrets), (
                where, c["name"])


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_reach_pods_as_read_only_volumes(stack: str) -> None:
    run = stack_run(stack)
    manifests = [m for r in run.resources if (m := manifest_of(r)) is not None]
    declared = {m["metadata"]["name"] for m in manifests if m["kind"] == "Secret"}
    readers: dict[str, set[str]] = {}
    for where, pod in pod_specs(manifests):
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for c in pod["containers"]:
            for mount in c.get("volumeMounts") or []:
                v = volumes.get(mount["name"], {})  # a volumeClaimTemplate is not among the volumes
                names = [v["secret"]["secretName"]] if "secret" in v else [
                    s["secret"]["name"] for s in (v.get("projected") or {}).get("sources", []) if "secret" in s]
                for name in names:
                    assert mount.get("readOnly") is True, (where, c["name"], mount["name"])
                    if name in OURS:
                        assert (v.get("secret") or v.get("projected")).get("defaultMode") == 0o440, (where, name)
                    readers.setdefault(name, set()).add(f"{where}/{c['name']}")
    assert {"Deployment/gateway/gateway", "StatefulSet/redis/redis", "StatefulSet/redis/redis-exporter"} <= (
        readers["redis"])
    assert readers["gateway-api-keys"] == {"Deployment/gateway/gateway"}
    assert {"redis", "gateway-api-keys"} <= declared
