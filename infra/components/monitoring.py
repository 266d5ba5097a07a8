"""The monitoring tier: kube-prometheus-stack, KEDA, scrape targets, rules, dashboards and logs.

The autoscalers themselves live beside what they scale: vLLM's ScaledObject in the inference tier (it is given
`keda_backend`), the gateway's HPA in the gateway tier.

Everything it ships is rendered by stackspec/monitoring/* from the stack's settings (the local stack renders the
same text). Secrets (Grafana's admin password, Alertmanager's webhook URL and SMTP password, the log
sink's password) come only from secret config and only ever land in Kubernetes Secrets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi import Output, ResourceOptions

from infra.components.helm import helm_release
from infra.components.inference import KedaBackend
from infra.components.labels import SECRET_FILE_MODE, labels
from stackspec.monitoring import logs as log_pipeline
from stackspec.monitoring import promql as m
from stackspec.monitoring.alertmanager import render_alertmanager
from stackspec.monitoring.dashboards import render_dashboards
from stackspec.monitoring.rules import rule_groups
from stackspec.settings import PROJECT, StackSettings

PROMETHEUS_OPERATOR_API = "monitoring.coreos.com/v1"
KPS_NAME = "kps"  # fullnameOverride: the chart's objects are kps-prometheus, kps-alertmanager, ...
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"
# Called by the API server: KEDA's metrics API (6443), KEDA's and the Prometheus operator's admission
# webhooks (9443, 10250).
API_SERVER_PORTS = (6443, 9443, 10250)

CHART_REPOS = {
    "kube-prometheus-stack": "https://prometheus-community.github.io/helm-charts",
    "keda": "https://kedacore.github.io/charts",
    "fluent-bit": "https://fluent.github.io/helm-charts",
}


@dataclass(frozen=True)
class ScrapeTarget:
    """A Service the tier scrapes: its name (= job), the port name and the path."""

    service: str
    port: str
    path: str = "/metrics"
    namespace: str | None = None  # None: the application namespace
    component: str = ""


def scrape_targets(settings: StackSettings) -> list[ScrapeTarget]:
    """What the ServiceMonitors select. Job names are the Service names (stackspec/monitoring/promql.py)."""
    return [
        ScrapeTarget(m.JOB_VLLM, "http", component="inference"),
        ScrapeTarget(m.JOB_GATEWAY, "http", component="gateway"),
        ScrapeTarget(m.JOB_EDGE, "metrics", component="edge"),  # nginx-prometheus-exporter sidecar
        ScrapeTarget(m.JOB_REDIS, "metrics", component="redis"),  # redis_exporter sidecar
    ]


def _secret_config(key: str) -> Output[str] | None:
    # Which secrets the stack needs is checked with the settings, before any resource (required_secrets).
    return pulumi.Config(PROJECT).get_secret(key)


@dataclass
class MonitoringArgs:
    settings: StackSettings


class Monitoring(pulumi.ComponentResource):
    """kube-prometheus-stack + KEDA + Fluent Bit (Helm, pinned), with everything rendered from settings."""

    def __init__(self, name: str, args: MonitoringArgs, opts: ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:monitoring:Monitoring", name, None, opts)
        s = args.settings
        mon = s.monitoring
        self._settings = s
        self.namespace_name = mon.namespace
        self.app_namespace = s.kubernetes.namespace
        child = ResourceOptions(parent=self)

        grafana_password = _secret_config("grafanaAdminPassword")
        webhook = _secret_config("alertmanagerWebhookUrl")
        smtp = _secret_config("alertmanagerSmtpPassword")
        log_password = _secret_config("logSinkPassword")

        self.namespace = k8s.core.v1.Namespace(
            "monitoring-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=mon.namespace, labels=self._labels("monitoring")),
            opts=child,
        )
        in_ns = ResourceOptions(parent=self, depends_on=[self.namespace])
        self.network_policies = self._network_policies(in_ns)

        grafana_secret = k8s.core.v1.Secret(
            "grafana-admin",
            metadata=self._meta("grafana-admin", "grafana"),
            string_data={"admin-user": "admin", "admin-password": grafana_password},  # type: ignore[dict-item]
            opts=in_ns,
        )
        alertmanager_text = Output.all(webhook, smtp).apply(
            lambda secrets: render_alertmanager(s, webhook_url=secrets[0], smtp_password=secrets[1])
        )
        alertmanager_secret = k8s.core.v1.Secret(
            "alertmanager-config",
            metadata=self._meta("alertmanager-config", "alertmanager"),
            string_data={"alertmanager.yaml": Output.secret(alertmanager_text)},  # type: ignore[arg-type]
            opts=in_ns,
        )

        self.prometheus_stack = helm_release(
            "kube-prometheus-stack", chart="kube-prometheus-stack", version=mon.kube_prometheus_stack_chart_version,
            repo=CHART_REPOS["kube-prometheus-stack"], namespace=mon.namespace,
            values=self._kps_values(grafana_secret_name="grafana-admin",
                                    alertmanager_secret_name="alertmanager-config"),
            timeout=900,
            opts=ResourceOptions(parent=self, depends_on=[self.namespace, grafana_secret, alertmanager_secret]),
        )
        self.keda = helm_release(
            "keda", chart="keda", version=mon.keda_chart_version, repo=CHART_REPOS["keda"], namespace=mon.namespace,
            values={"prometheus": {"operator": {"enabled": True, "serviceMonitor": {"enabled": True}}}},
            opts=in_ns,
        )
        # The CRDs below (ServiceMonitor, PrometheusRule, ScaledObject) come with the charts.
        after_crds = ResourceOptions(parent=self, depends_on=[self.prometheus_stack])

        self.service_monitors = [self._service_monitor(t, after_crds) for t in scrape_targets(s)]
        self.dcgm_monitor = self._dcgm_service_monitor(after_crds)
        self.rules = k8s.apiextensions.CustomResource(
            "qwen-serving-rules",
            api_version=PROMETHEUS_OPERATOR_API,
            kind="PrometheusRule",
            metadata=self._meta("qwen-serving-rules", "monitoring", namespace=self.app_namespace),
            spec={"groups": rule_groups(s)},
            opts=after_crds,
        )
        self.dashboards = [
            k8s.core.v1.ConfigMap(
                f"dashboard-{file.removesuffix('.json')}",
                metadata=self._meta(file.removesuffix(".json"), "grafana",
                                    extra_labels={GRAFANA_DASHBOARD_LABEL: "1"}),
                data={file: text},
                opts=in_ns,
            )
            for file, text in sorted(render_dashboards(s).items())
        ]

        self.log_shipper: k8s.helm.v3.Release | None = None
        if mon.logs.enabled:
            self.log_shipper = self._fluent_bit(log_password, in_ns)

        self.prometheus_url = f"http://{KPS_NAME}-prometheus.{mon.namespace}.svc:9090"
        self.alertmanager_url = f"http://{KPS_NAME}-alertmanager.{mon.namespace}.svc:9093"
        self.grafana_service = f"kube-prometheus-stack-grafana.{mon.namespace}.svc"
        # What a ScaledObject elsewhere needs: the Prometheus its trigger queries, KEDA's CRD and operator.
        self.keda_backend = KedaBackend(prometheus_url=self.prometheus_url, ready=[self.keda, self.prometheus_stack])
        self.register_outputs({
            "prometheusUrl": self.prometheus_url,
            "alertmanagerUrl": self.alertmanager_url,
            "grafanaService": self.grafana_service,
        })

    # --- helpers -------------------------------------------------------------------------------------

    def _labels(self, component: str, name: str = "monitoring") -> dict[str, str]:
        return labels(self._settings, name, component)

    def _meta(self, name: str, component: str, *, namespace: str | None = None,
              extra_labels: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(
            name=name,
            namespace=namespace or self.namespace_name,
            labels={**self._labels(component, name), **(extra_labels or {})},
        )

    def _network_policies(self, opts: ResourceOptions) -> list[k8s.networking.v1.NetworkPolicy]:
        """Deny ingress by default; allow the namespace's own pods (Grafana -> Prometheus, Prometheus ->
        exporters, KEDA -> Prometheus) and the API server's calls to the webhooks and KEDA's metrics API
        (the API server is not a pod, so those ports are open to any source)."""
        np = k8s.networking.v1

        def policy(name: str, ingress: list[k8s.networking.v1.NetworkPolicyIngressRuleArgs] | None
                   ) -> k8s.networking.v1.NetworkPolicy:
            return np.NetworkPolicy(
                f"monitoring-netpol-{name}",
                metadata=self._meta(name, "network"),
                spec=np.NetworkPolicySpecArgs(pod_selector=k8s.meta.v1.LabelSelectorArgs(),
                                              policy_types=["Ingress"], ingress=ingress),
                opts=opts,
            )

        return [
            policy("default-deny", None),
            policy("allow-same-namespace", [np.NetworkPolicyIngressRuleArgs(
                from_=[np.NetworkPolicyPeerArgs(pod_selector=k8s.meta.v1.LabelSelectorArgs())])]),
            policy("allow-apiserver-webhooks", [np.NetworkPolicyIngressRuleArgs(ports=[
                np.NetworkPolicyPortArgs(port=port, protocol="TCP") for port in API_SERVER_PORTS])]),
        ]

    def _kps_values(self, *, grafana_secret_name: str, alertmanager_secret_name: str) -> dict[str, Any]:
        mon = self._settings.monitoring
        storage: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                   "resources": {"requests": {"storage": mon.storage_size}}}
        if mon.storage_class:
            storage["storageClassName"] = mon.storage_class
        return {
            "fullnameOverride": KPS_NAME,
            "prometheus": {"prometheusSpec": {
                "retention": mon.retention,
                "scrapeInterval": mon.scrape_interval,
                "evaluationInterval": mon.scrape_interval,
                "externalLabels": {"site": self._settings.site.name},
                "storageSpec": {"volumeClaimTemplate": {"spec": storage}},
                # Select our ServiceMonitors/PodMonitors/PrometheusRules in any namespace, whatever labels.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "serviceMonitorNamespaceSelector": {},
                "ruleNamespaceSelector": {},
            }},
            "alertmanager": {"alertmanagerSpec": {"configSecret": alertmanager_secret_name}},
            "grafana": {
                "admin": {"existingSecret": grafana_secret_name, "userKey": "admin-user",
                          "passwordKey": "admin-password"},
                "sidecar": {"dashboards": {"enabled": True, "label": GRAFANA_DASHBOARD_LABEL, "labelValue": "1",
                                           "searchNamespace": "ALL"}},
            },
        }

    def _service_monitor(self, target: ScrapeTarget, opts: ResourceOptions) -> k8s.apiextensions.CustomResource:
        namespace = target.namespace or self.app_namespace
        return k8s.apiextensions.CustomResource(
            f"servicemonitor-{target.service}",
            api_version=PROMETHEUS_OPERATOR_API,
            kind="ServiceMonitor",
            metadata=self._meta(target.service, "monitoring", namespace=namespace),
            spec={
                "jobLabel": "app.kubernetes.io/name",  # job = the Service's name label = the rules' job
                "selector": {"matchLabels": {"app.kubernetes.io/name": target.service,
                                             "app.kubernetes.io/part-of": PROJECT}},
                "namespaceSelector": {"matchNames": [namespace]},
                "endpoints": [{"port": target.port, "path": target.path,
                               "interval": self._settings.monitoring.scrape_interval}],
            },
            opts=opts,
        )

    def _dcgm_service_monitor(self, opts: ResourceOptions) -> k8s.apiextensions.CustomResource:
        """DCGM exporter's Service comes from its Helm chart (GPU tier), in the GPU system namespace only:
        the rules select `namespace` = that namespace (stackspec/monitoring/scope.py)."""
        return k8s.apiextensions.CustomResource(
            "servicemonitor-dcgm-exporter",
            api_version=PROMETHEUS_OPERATOR_API,
            kind="ServiceMonitor",
            metadata=self._meta(m.JOB_DCGM, "monitoring"),
            spec={
                "jobLabel": "app.kubernetes.io/name",
                "selector": {"matchLabels": {"app.kubernetes.io/name": m.JOB_DCGM}},
                "namespaceSelector": {"matchNames": [self._settings.kubernetes.gpu_system_namespace]},
                "endpoints": [{"port": "metrics", "path": "/metrics",
                               "interval": self._settings.monitoring.scrape_interval}],
            },
            opts=opts,
        )

    def _fluent_bit(self, password: Output[str] | None, opts: ResourceOptions) -> k8s.helm.v3.Release:
        s = self._settings
        logs = s.monitoring.logs
        secret = k8s.core.v1.Secret(
            "log-sink",
            metadata=self._meta("log-sink", "logs"),
            string_data={"password": password},  # type: ignore[dict-item]
            opts=opts,
        )
        config = k8s.core.v1.ConfigMap(
            "fluent-bit-config",
            metadata=self._meta("fluent-bit-config", "logs"),
            data={log_pipeline.CONFIG_FILE: log_pipeline.render_fluent_bit(s)},
            opts=opts,
        )
        if logs.sink == "elasticsearch":
            self._ilm_setup(opts)
        return helm_release(
            "fluent-bit", chart="fluent-bit", version=s.monitoring.fluent_bit_chart_version,
            repo=CHART_REPOS["fluent-bit"], namespace=s.monitoring.namespace,
            values={
                "existingConfigMap": "fluent-bit-config",
                "args": ["--workdir=/fluent-bit/etc", f"--config=/fluent-bit/etc/conf/{log_pipeline.CONFIG_FILE}"],
                "env": [{"name": log_pipeline.PASSWORD_ENV, "valueFrom": {
                    "secretKeyRef": {"name": "log-sink", "key": "password"}}}],
                "serviceMonitor": {"enabled": True},
            },
            opts=ResourceOptions(parent=self, depends_on=[secret, config, self.prometheus_stack]),
        )

    def _ilm_setup(self, opts: ResourceOptions) -> None:
        """The retentionDays deletion policy and the index template that applies it, PUT by a Job."""
        s = self._settings
        logs = s.monitoring.logs
        policy = k8s.core.v1.ConfigMap(
            "log-retention-policy",
            metadata=self._meta("log-retention-policy", "logs"),
            data={
                "ilm-policy.json": json.dumps(log_pipeline.ilm_policy(s), indent=2),
                "index-template.json": json.dumps(log_pipeline.index_template(s), indent=2),
            },
            opts=opts,
        )
        endpoint = f"{'https' if logs.tls else 'http'}://{logs.host}:{logs.port}"
        # The password is a file (the Secret mounted), handed to curl as config on stdin: never in the
        # environment, never on a command line.
        auth = 'printf \'user = "%s:%s"\\n\' "$ES_USER" "$(cat /run/secrets/log-sink/password)"'
        put = f'{auth} | curl -fsS -K - -X PUT -H "Content-Type: application/json"'
        script = (f"set -eu; {put} {endpoint}/_ilm/policy/{logs.index} --data-binary @/policy/ilm-policy.json; "
                  f"{put} {endpoint}/_index_template/{logs.index} --data-binary @/policy/index-template.json")
        k8s.batch.v1.Job(
            "log-retention-setup",
            metadata=self._meta("log-retention-setup", "logs"),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=6,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=self._labels("logs", "log-retention-setup")),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="OnFailure",
                        automount_service_account_token=False,
                        security_context=k8s.core.v1.PodSecurityContextArgs(
                            run_as_non_root=True, run_as_user=65532, fs_group=65532,
                            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault")),
                        containers=[k8s.core.v1.ContainerArgs(
                            name="put-policy",
                            image=s.images.log_setup,
                            command=["sh", "-c", script],
                            env=[k8s.core.v1.EnvVarArgs(name="ES_USER", value=logs.user)],
                            volume_mounts=[
                                k8s.core.v1.VolumeMountArgs(name="policy", mount_path="/policy", read_only=True),
                                k8s.core.v1.VolumeMountArgs(name="log-sink", mount_path="/run/secrets/log-sink",
                                                            read_only=True),
                            ],
                            resources=k8s.core.v1.ResourceRequirementsArgs(
                                requests={"cpu": "10m", "memory": "16Mi"}, limits={"cpu": "100m", "memory": "64Mi"}),
                            security_context=k8s.core.v1.SecurityContextArgs(
                                allow_privilege_escalation=False, read_only_root_filesystem=True,
                                capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"])),
                        )],
                        volumes=[
                            k8s.core.v1.VolumeArgs(name="policy", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                                name="log-retention-policy")),
                            k8s.core.v1.VolumeArgs(name="log-sink", secret=k8s.core.v1.SecretVolumeSourceArgs(
                                secret_name="log-sink", default_mode=SECRET_FILE_MODE,
                                items=[k8s.core.v1.KeyToPathArgs(key="password", path="password")])),
                        ],
                    ),
                ),
            ),
            opts=ResourceOptions(parent=self, depends_on=[policy]),
        )
