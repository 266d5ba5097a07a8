"""The Monitoring component under Pulumi's mocks: what it declares, for every site stack."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest

from infra.components.monitoring import CHART_REPOS
from infra.offline import SECRET_PLACEHOLDERS, Captured, OfflineRun, is_secret, run_stack, unwrap_secrets
from stackspec.monitoring import promql as m
from stackspec.monitoring.dashboards import render_dashboards
from stackspec.monitoring.logs import render_fluent_bit
from stackspec.monitoring.rules import rule_groups
from stackspec.settings import SettingsError
from tests.monitoring.conftest import SITE_STACKS

SERVICE_MONITOR = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"
RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "kubernetes:core/v1:Secret"
JOBS = {m.JOB_VLLM, m.JOB_GATEWAY, m.JOB_EDGE, m.JOB_REDIS, m.JOB_DCGM}


@cache
def stack(name: str) -> OfflineRun:
    return run_stack(name)


def monitoring_children(run: OfflineRun) -> list[Captured]:
    component = run.one("qwen-serving:monitoring:Monitoring", "monitoring")
    return run.children_of(component)


def inputs(resource: Captured) -> dict[str, Any]:
    return unwrap_secrets(resource.inputs)


def namespace_of(resource: Captured) -> str:
    return str(inputs(resource)["metadata"].get("namespace", ""))


@pytest.mark.parametrize("name", SITE_STACKS)
def test_every_scrape_target_matches_a_service_and_port(name: str) -> None:
    run = stack(name)
    services = run.of_type("kubernetes:core/v1:Service")
    monitors = run.of_type(SERVICE_MONITOR)
    assert len(monitors) == 5
    for monitor in monitors:
        spec = inputs(monitor)["spec"]
        wanted = spec["selector"]["matchLabels"]
        port = spec["endpoints"][0]["port"]
        if wanted.get("app.kubernetes.io/name") == m.JOB_DCGM:
            # DCGM exporter's Service is rendered by its Helm chart (GPU tier): the chart's Service is
            # labelled with the chart name and exposes the port named "metrics".
            dcgm = run.one(RELEASE, "dcgm-exporter")
            assert inputs(dcgm)["chart"] == "dcgm-exporter" and port == "metrics"
            assert inputs(dcgm)["values"]["service"]["enable"] is True
            # Only the GPU system namespace's exporter: the rules' DCGM selectors pin that namespace.
            assert spec["namespaceSelector"] == {"matchNames": [run.settings.kubernetes.gpu_system_namespace]}
            assert inputs(dcgm)["namespace"] == run.settings.kubernetes.gpu_system_namespace
            continue
        namespaces = spec["namespaceSelector"]["matchNames"]
        matching = [
            svc for svc in services
            if namespace_of(svc) in namespaces
            and wanted.items() <= (inputs(svc)["metadata"].get("labels") or {}).items()
        ]
        assert matching, f"{monitor.name}: no Service in {namespaces} labelled {wanted}"
        for svc in matching:
            ports = [p.get("name") for p in inputs(svc)["spec"]["ports"]]
            assert port in ports, f"{monitor.name}: Service {svc.name} has ports {ports}, not {port!r}"
            # The job label Prometheus gives the series is what the rules select on.
            assert inputs(svc)["metadata"]["labels"][spec["jobLabel"]] in JOBS


@pytest.mark.parametrize("name", SITE_STACKS)
def test_charts_are_pinned_and_values_follow_settings(name: str) -> None:
    run = stack(name)
    mon = run.settings.monitoring
    releases = {r.name: inputs(r) for r in monitoring_children(run) if r.type == RELEASE}
    assert set(releases) == {"kube-prometheus-stack", "keda", "fluent-bit"}
    for chart, release in releases.items():
        assert release["repositoryOpts"]["repo"] == CHART_REPOS[chart]
        assert release["version"] and release["version"][0].isdigit()
        assert release["namespace"] == mon.namespace
    kps = releases["kube-prometheus-stack"]
    assert kps["version"] == mon.kube_prometheus_stack_chart_version
    spec = kps["values"]["prometheus"]["prometheusSpec"]
    assert spec["retention"] == mon.retention
    assert spec["storageSpec"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == mon.storage_size
    grafana = kps["values"]["grafana"]
    assert grafana["admin"]["existingSecret"] == "grafana-admin"
    assert kps["values"]["alertmanager"]["alertmanagerSpec"]["configSecret"] == "alertmanager-config"


@pytest.mark.parametrize("name", SITE_STACKS)
def test_secrets_only_in_kubernetes_secrets(name: str) -> None:
    run = stack(name)
    children = monitoring_children(run)
    secrets = {r.name: r for r in children if r.type == SECRET}
    assert set(secrets) == {"grafana-admin", "alertmanager-config", "log-sink"}

    def secret_on_the_wire(resource: Captured, key: str) -> bool:
        data = resource.inputs["stringData"]
        return is_secret(data) or is_secret(data.get(key))

    assert secret_on_the_wire(secrets["grafana-admin"], "admin-password")
    assert secret_on_the_wire(secrets["alertmanager-config"], "alertmanager.yaml")
    assert secret_on_the_wire(secrets["log-sink"], "password")
    assert SECRET_PLACEHOLDERS["alertmanagerWebhookUrl"] in json.dumps(inputs(secrets["alertmanager-config"]))
    # Nothing else the tier declares carries a secret value in plain text.
    values = [SECRET_PLACEHOLDERS[k] for k in ("alertmanagerWebhookUrl", "grafanaAdminPassword")]
    for resource in children:
        if resource.type == SECRET:
            continue
        text = json.dumps(resource.inputs)
        assert not any(v in text for v in values), f"{resource.type} {resource.name} carries a secret"


@pytest.mark.parametrize("name", SITE_STACKS)
def test_rules_dashboards_and_log_config_are_the_rendered_text(name: str) -> None:
    run = stack(name)
    rule = inputs(run.one("kubernetes:monitoring.coreos.com/v1:PrometheusRule", "qwen-serving-rules"))
    assert rule["spec"] == {"groups": json.loads(json.dumps(rule_groups(run.settings)))}
    dashboards = render_dashboards(run.settings)
    found = {}
    for cm in run.of_type("kubernetes:core/v1:ConfigMap"):
        data = inputs(cm)
        if data["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            found.update(data["data"])
            assert namespace_of(cm) == run.settings.monitoring.namespace
    assert found == dashboards
    fluent = inputs(run.one("kubernetes:core/v1:ConfigMap", "fluent-bit-config"))
    assert fluent["data"]["fluent-bit.yaml"] == render_fluent_bit(run.settings)
    # The gateway parser matches the gateway's container by name: it must be called "gateway".
    gateway = inputs(run.one("kubernetes:apps/v1:Deployment", "gateway"))
    assert "gateway" in [c["name"] for c in gateway["spec"]["template"]["spec"]["containers"]]


def test_monitoring_can_be_turned_off() -> None:
    run = run_stack("dev", overrides={"qwen-serving:monitoring": {"enabled": False}})
    assert not [r for r in run.resources if r.type == "qwen-serving:monitoring:Monitoring"]
    assert not run.of_type(SERVICE_MONITOR)


def test_missing_grafana_password_names_the_key() -> None:
    with pytest.raises(SettingsError, match="qwen-serving:grafanaAdminPassword"):
        run_stack("dev", fill_secrets=False, overrides={
            "qwen-serving:gateway": {"authEnabled": False, "replicas": 1, "maxReplicas": 2},
            "qwen-serving:redisPassword": "x", "qwen-serving:alertmanagerWebhookUrl": "https://x.invalid/",
            "qwen-serving:logSinkPassword": "x",
        })
