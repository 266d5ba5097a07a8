"""Autoscaling follows its switches, each autoscaler beside what it scales (issue 22).

For every combination of `monitoring.enabled` × `monitoring.autoscaling.enabled`: which autoscalers exist, in
which tier, and who owns `spec.replicas` — the autoscaler (the Deployment ignores the field, so `pulumi up`
never resets a scaled-out count) or the stack settings (no autoscaler may touch it).
"""

from __future__ import annotations

from functools import cache

import pytest

from infra.components.inference import keda_max_replicas
from infra.offline import OfflineRun, run_stack
from infra.plan import describe
from stackspec.monitoring import promql as m
from tests.program.conftest import DEPLOYMENT, STACKS, obj, stack_run
from tests.stacks import stack_sections

SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
COMBINATIONS = [(mon, auto) for mon in (True, False) for auto in (True, False)]


@cache
def run_with(stack: str, monitoring: bool, autoscaling: bool) -> OfflineRun:
    section = stack_sections(stack).get("monitoring", {})
    section = section | {"enabled": monitoring,
                         "autoscaling": section.get("autoscaling", {}) | {"enabled": autoscaling}}
    return run_stack(stack, overrides={"qwen-serving:monitoring": section})


def parent_type(run: OfflineRun, urn: str) -> str:
    return next(r.type for r in run.resources if r.urn == urn)


@pytest.mark.parametrize(("monitoring", "autoscaling"), COMBINATIONS)
def test_vllm_scaled_object_exists_exactly_with_monitoring_and_autoscaling(monitoring: bool, autoscaling: bool) -> None:
    run = run_with("dev", monitoring, autoscaling)
    scalers = run.of_type(SCALED_OBJECT)
    deployment = run.one(DEPLOYMENT, "vllm")
    if monitoring and autoscaling:
        assert [r.name for r in scalers] == ["vllm-scaler"]
        scaler = scalers[0]
        # Beside the Deployment it scales: the inference tier's child, in its namespace, after KEDA exists.
        assert scaler.parent == deployment.parent
        assert parent_type(run, scaler.parent) == "qwen-serving:inference:Inference"
        spec = obj(run, SCALED_OBJECT, "vllm-scaler")["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"}
        assert spec["minReplicaCount"] == run.settings.inference.replicas
        assert spec["maxReplicaCount"] == keda_max_replicas(run.settings)
        keda = run.one("kubernetes:helm.sh/v3:Release", "keda")
        prometheus = run.one("kubernetes:helm.sh/v3:Release", "kube-prometheus-stack")
        assert {keda.urn, prometheus.urn, deployment.urn} <= set(scaler.dependencies)
        assert spec["triggers"][0]["metadata"]["serverAddress"] == run.outputs["prometheus_url"]
        # KEDA owns the count: `pulumi up` leaves it alone.
        assert "spec.replicas" in deployment.ignore_changes
        assert run.outputs["autoscaling"]["vllm"] == "keda"
        assert "replicas owned by: vLLM KEDA" in describe(run)
    else:
        # No KEDA (monitoring off) or autoscaling off: the settings own the count, and pulumi up enforces it.
        assert scalers == []
        assert "spec.replicas" not in deployment.ignore_changes
        assert obj(run, DEPLOYMENT, "vllm")["spec"]["replicas"] == run.settings.inference.replicas
        assert run.outputs["autoscaling"]["vllm"] == "settings"
        assert "replicas owned by: vLLM inference.replicas" in describe(run)


@pytest.mark.parametrize(("monitoring", "autoscaling"), COMBINATIONS)
def test_gateway_hpa_follows_autoscaling_whatever_monitoring(monitoring: bool, autoscaling: bool) -> None:
    run = run_with("dev", monitoring, autoscaling)
    hpas = run.of_type(HPA)
    deployment = run.one(DEPLOYMENT, "gateway")
    gw = run.settings.gateway
    if autoscaling:
        # The HPA needs the cluster's metrics API only: turning monitoring off must not remove it.
        assert [r.name for r in hpas] == ["gateway-hpa"]
        hpa = hpas[0]
        assert hpa.parent == deployment.parent
        assert parent_type(run, hpa.parent) == "qwen-serving:gateway:Gateway"
        spec = obj(run, HPA, "gateway-hpa")["spec"]
        assert spec["scaleTargetRef"]["name"] == "gateway"
        assert (spec["minReplicas"], spec["maxReplicas"]) == (gw.replicas, gw.max_replicas)
        assert "spec.replicas" in deployment.ignore_changes
        assert run.outputs["autoscaling"]["gateway"] == "hpa"
        assert "gateway the HPA" in describe(run)
    else:
        assert hpas == []
        assert "spec.replicas" not in deployment.ignore_changes
        assert obj(run, DEPLOYMENT, "gateway")["spec"]["replicas"] == gw.replicas
        assert run.outputs["autoscaling"]["gateway"] == "settings"
        assert "gateway gateway.replicas" in describe(run)


@pytest.mark.parametrize(("monitoring", "autoscaling"), COMBINATIONS)
def test_monitoring_tier_declares_no_autoscaler(monitoring: bool, autoscaling: bool) -> None:
    run = run_with("dev", monitoring, autoscaling)
    monitoring_tiers = [r for r in run.resources if r.type == "qwen-serving:monitoring:Monitoring"]
    assert len(monitoring_tiers) == int(monitoring)
    for tier in monitoring_tiers:
        children = {r.type for r in run.children_of(tier)}
        assert not children & {SCALED_OBJECT, HPA}
    # Only the Deployments' replica counts are ever left to an autoscaler.
    for resource in run.resources:
        if resource.type != DEPLOYMENT:
            assert "spec.replicas" not in resource.ignore_changes, resource.name


@pytest.mark.parametrize("name", STACKS)
def test_keda_maximum_never_exceeds_gpus_over_tp(name: str) -> None:
    run = stack_run(name)
    s = run.settings
    scaled = obj(run, SCALED_OBJECT, "vllm-scaler")["spec"]
    bound = s.gpu_pool.total_gpus // s.inference.tensor_parallel_size
    assert scaled["maxReplicaCount"] <= bound
    assert scaled["minReplicaCount"] == s.inference.replicas <= scaled["maxReplicaCount"]
    # It scales the vLLM Deployment that exists, on the queue metric vLLM exports.
    target = scaled["scaleTargetRef"]
    deployment = run.one("kubernetes:apps/v1:Deployment", target["name"])
    assert obj(run, DEPLOYMENT, deployment.name)["metadata"]["namespace"] == s.kubernetes.namespace
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "prometheus" and m.VLLM_WAITING in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == str(s.monitoring.autoscaling.waiting_per_replica)


@pytest.mark.parametrize(("hosts", "tp", "expected"), [
    ([2, 2], 2, 2), ([3, 1], 2, 1), ([8], 2, 4), ([1, 1, 1], 1, 3), ([4, 4, 3], 4, 2),
])
def test_keda_maximum_counts_replicas_that_fit_a_host(hosts: list[int], tp: int, expected: int) -> None:
    run = run_stack("dev", overrides={
        "qwen-serving:gpuPool": {"hosts": [{"name": f"gpu-{i}", "gpus": g} for i, g in enumerate(hosts)]},
        "qwen-serving:inference": {"replicas": 1, "tensorParallelSize": tp, "maxModelLen": 8192},
    })
    assert keda_max_replicas(run.settings) == expected <= sum(hosts) // tp
    scaled = obj(run, SCALED_OBJECT, "vllm-scaler")["spec"]
    assert scaled["maxReplicaCount"] == expected


@pytest.mark.parametrize("name", STACKS)
def test_gateway_hpa_on_cpu(name: str) -> None:
    run = stack_run(name)
    gw = run.settings.gateway
    spec = obj(run, HPA, "gateway-hpa")["spec"]
    assert spec["scaleTargetRef"]["name"] == "gateway"
    run.one("kubernetes:apps/v1:Deployment", spec["scaleTargetRef"]["name"])
    assert (spec["minReplicas"], spec["maxReplicas"]) == (gw.replicas, gw.max_replicas)
    assert spec["metrics"][0]["resource"] == {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": gw.target_cpu_percent}}
