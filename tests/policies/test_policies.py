"""Layer 4: the policy pack passes every stack, and catches misconfigurations planted in real resources."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from typing import Any

import pytest

from infra.offline import Captured, OfflineRun, run_stack
from infra.policy_config import evaluate_run, policy_config
from policies.rules import POLICIES
from policies.runner import evaluate
from tests.policies.planted import PLANTED_MORE, first, pod
from tests.stacks import GLOBAL_STACKS, SITE_STACKS

STACKS = SITE_STACKS + GLOBAL_STACKS
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CRONJOB = "kubernetes:batch/v1:CronJob"


@cache
def prod() -> OfflineRun:
    return run_stack("prod")


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_passes_the_pack(stack: str) -> None:
    assert evaluate_run(run_stack(stack)) == []


def plant(type_: str, name: str, change: Callable[[dict[str, Any]], None]) -> list[Captured]:
    """The prod resources with one resource's inputs changed."""
    resources = []
    for r in prod().resources:
        if r.type == type_ and r.name == name:
            inputs = copy.deepcopy(r.inputs)
            change(inputs)
            r = replace(r, inputs=inputs)
        resources.append(r)
    return resources


def set_key(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(inputs: dict[str, Any]) -> None:
        node = first(inputs)
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return change


def drop_gpu_toleration(inputs: dict[str, Any]) -> None:
    pod(inputs)["tolerations"] = []


def plain_password(inputs: dict[str, Any]) -> None:
    first(inputs).setdefault("env", []).append({"name": "GATEWAY_REDIS_PASSWORD", "value": "hunter2"})


def secret_in_env(inputs: dict[str, Any]) -> None:
    """The way the gateway read its Redis password before issue 22: from the Secret, but through the env."""
    first(inputs).setdefault("env", []).append(
        {"name": "GATEWAY_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "password"}}})


def plain_storage_key(inputs: dict[str, Any]) -> None:
    first(inputs).setdefault("env", []).append({"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"})


def root_pod(inputs: dict[str, Any]) -> None:
    pod(inputs).pop("securityContext", None)
    for c in pod(inputs)["containers"]:
        c.pop("securityContext", None)


def writable_model_cache(inputs: dict[str, Any]) -> None:
    for mount in first(inputs)["volumeMounts"]:
        if mount["name"] == "model-cache":
            mount["readOnly"] = False


def another_name(inputs: dict[str, Any]) -> None:
    owner = inputs["spec"]["jobTemplate"]["spec"]
    owner["template"]["metadata"]["labels"]["app.kubernetes.io/name"] = "anything-else"


def expose(inputs: dict[str, Any]) -> None:
    inputs["spec"]["type"] = "LoadBalancer"


def no_pdb_selector(inputs: dict[str, Any]) -> None:
    inputs["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": "nothing"}}


def allow_all(inputs: dict[str, Any]) -> None:
    inputs["spec"]["ingress"] = [{}]


def no_source_ranges(inputs: dict[str, Any]) -> None:
    inputs["spec"].pop("loadBalancerSourceRanges", None)


def open_to_everyone(inputs: dict[str, Any]) -> None:
    inputs["spec"]["loadBalancerSourceRanges"] = ["0.0.0.0/0"]


def plain_port_too(inputs: dict[str, Any]) -> None:
    inputs["spec"]["ports"].append({"name": "redis", "port": 6379, "targetPort": "redis"})


def no_tls(inputs: dict[str, Any]) -> None:
    conf = inputs["data"]["redis.conf"]
    inputs["data"]["redis.conf"] = "\n".join(line for line in conf.splitlines() if not line.startswith("tls-"))


REPLICATION_ENDPOINT = ("kubernetes:core/v1:Service", "redis-replication-service")
PLANTED_REPLICATION = [  # the one exception to only-the-edge-is-exposed, and only as declared
    ("redis-replication-endpoint-is-fenced", *REPLICATION_ENDPOINT, no_source_ranges),
    ("redis-replication-endpoint-is-fenced", *REPLICATION_ENDPOINT, open_to_everyone),
    ("redis-replication-endpoint-is-fenced", *REPLICATION_ENDPOINT, plain_port_too),
    ("redis-replication-endpoint-is-fenced", "kubernetes:core/v1:ConfigMap", "redis-config", no_tls),
]

PLANTED = [
    ("images-have-a-fixed-version", DEPLOYMENT, "gateway", set_key("image", "registry.local/gateway:latest")),
    ("images-have-a-fixed-version", DEPLOYMENT, "edge", set_key("image", "nginx")),
    ("containers-have-requests-and-limits", DEPLOYMENT, "gateway", set_key("resources.limits", None)),
    ("workloads-have-probes", DEPLOYMENT, "vllm", set_key("readinessProbe", None)),
    ("gpus-only-on-the-gpu-pool", DEPLOYMENT, "vllm", drop_gpu_toleration),
    ("no-plain-secrets-in-env", DEPLOYMENT, "gateway", plain_password),
    ("no-plain-secrets-in-env", DEPLOYMENT, "gateway", secret_in_env),
    ("runs-as-non-root", DEPLOYMENT, "edge", root_pod),
    ("runs-as-non-root", DEPLOYMENT, "vllm", root_pod),  # no tier is exempt any more, vLLM included
    ("only-the-edge-is-exposed", "kubernetes:core/v1:Service", "redis-service", expose),
    ("every-workload-has-a-pdb", "kubernetes:policy/v1:PodDisruptionBudget", "gateway-pdb", no_pdb_selector),
    ("namespaces-deny-by-default", "kubernetes:networking.k8s.io/v1:NetworkPolicy", "netpol-default-deny", allow_all),
    *PLANTED_REPLICATION,
    # Jobs and CronJobs run our images with our secrets too: the same rules hold for their pods.
    ("images-have-a-fixed-version", CRONJOB, "redis-backup", set_key("image", "registry.local/backup:latest")),
    ("no-plain-secrets-in-env", CRONJOB, "redis-backup", plain_storage_key),
    ("runs-as-non-root", CRONJOB, "redis-backup", root_pod),
    ("runs-as-non-root", "kubernetes:batch/v1:Job", "log-retention-setup", root_pod),
    # The model manifest's pass onto a GPU host holds only for it, and only while it reads the cache read-only.
    ("gpu-hosts-run-only-gpu-pods", CRONJOB, "model-manifest", writable_model_cache),
    ("gpu-hosts-run-only-gpu-pods", CRONJOB, "model-manifest", another_name),
]


@pytest.mark.parametrize(("policy", "type_", "name", "change"), PLANTED, ids=[f"{p[0]}:{p[2]}" for p in PLANTED])
def test_planted_misconfiguration_is_caught(
    policy: str, type_: str, name: str, change: Callable[[dict[str, Any]], None]
) -> None:
    prod().one(type_, name)  # the resource exists, so the plant really lands
    violations = evaluate(plant(type_, name, change), config=policy_config(prod().settings))
    assert violations and {v.policy for v in violations} == {policy}, violations


def test_the_replication_endpoint_exists_only_on_the_primary_and_passes() -> None:
    assert prod().one(*REPLICATION_ENDPOINT)
    assert not [r for r in run_stack("prod-dr").resources if r.name == REPLICATION_ENDPOINT[1]]


def test_every_policy_has_a_planted_case() -> None:
    assert {p.name for p in POLICIES} == {p[0] for p in PLANTED} | {p.policy for p in PLANTED_MORE}


def test_the_packs_named_exception_is_the_programs_manifest_cronjob() -> None:
    from policies.workloads import MODEL_MANIFEST
    from stackspec.settings import MODEL_MANIFEST_CRONJOB

    assert MODEL_MANIFEST == MODEL_MANIFEST_CRONJOB  # the pack keeps no import of ours: the two must agree
