"""The gateway (FastAPI, OpenAI API): Deployment, Service, PDB, and the Secret with the API-key hashes.

Its environment is rendered from settings (stackspec/render/gateway_env.py); the two secrets (API-key hashes,
Redis password) are files in a read-only Secret mount, never environment variables. With autoscaling on
(`StackSettings.hpa_scales_gateway`) its HPA on CPU is declared here, beside the Deployment: it needs the
cluster's metrics API, not the monitoring tier, so turning monitoring off keeps it.

Key rotation needs no manual restart: the pod template carries a hash of the API-key Secret's content and
of the environment, so changing `apiKeyHashes` (revoking a key) rolls the gateways. A rolling restart loses
no request: a preStop pause keeps a terminating pod serving while it leaves the Service's endpoints (and
the edge's connections move), then SIGTERM starts the gateway's own drain (readiness off, in-flight
requests finish within the grace: shutdownGraceSeconds, or totalTimeout when unset; one still unanswered then
gets a 503 in OpenAI's shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from app.gateway.settings import DEFAULT_SECRETS_DIR
from infra.components import labels as kube
from stackspec.images import GATEWAY_UID
from stackspec.render.gateway_env import render_gateway_env
from stackspec.settings import GATEWAY_PRE_STOP_SECONDS, StackSettings

SERVICE_PORT = 8080  # what other tiers and ServiceMonitors address; the container port comes from settings
API_KEYS_KEY = "api-key-hashes"
PRE_STOP_SECONDS = GATEWAY_PRE_STOP_SECONDS  # endpoints and kube-proxy catch up with a terminating pod within this
# With several gateway processes per pod, where they share their metrics (prometheus_client's multiprocess
# files; app/gateway/metrics.py): a memory-backed emptyDir, one per pod, emptied by the gateway at start.
METRICS_DIR = "/run/gateway-metrics"
METRICS_DIR_SIZE = "64Mi"  # a few MiB of mmap files per process


@dataclass
class GatewayArgs(kube.ImageTierArgs):
    backends_dns: str
    redis_url: str
    redis_secret_name: str
    redis_password_key: str = "password"


class Gateway(kube.Tier):
    service_name = deployment_name = "gateway"
    port = metrics_port = SERVICE_PORT  # /metrics on the same port

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:gateway:Gateway", name, args, opts)
        s, ns, child = self.settings, self.namespace, self.child
        self.secret_name = "gateway-api-keys"
        self.env = render_gateway_env(s, backends_dns=args.backends_dns, redis_url=args.redis_url)

        self.secret = k8s.core.v1.Secret(
            "gateway-secret",
            metadata=kube.metadata(s, "gateway", "api", namespace=ns, object_name=self.secret_name),
            type="Opaque",
            string_data={API_KEYS_KEY: pulumi.Output.secret(json.dumps(s.api_key_hashes, sort_keys=True))},
            opts=child,
        )
        self.service = kube.service(s, "gateway", "api", namespace=ns, ports=[("http", SERVICE_PORT)], opts=child)
        self.deployment = self._deployment(s, args, child)
        self.pdb = kube.disruption_budget(s, "gateway", "api", namespace=ns, opts=child)
        self.hpa = self._hpa(s) if s.hpa_scales_gateway else None
        self.register_outputs({"service": self.service_name, "port": self.port, "deployment": self.deployment_name,
                               "autoscaled": self.hpa is not None})

    def _hpa(self, s: StackSettings) -> k8s.autoscaling.v2.HorizontalPodAutoscaler:
        gw = s.gateway
        return k8s.autoscaling.v2.HorizontalPodAutoscaler(
            "gateway-hpa",
            metadata=kube.metadata(s, "gateway", "autoscaling", namespace=self.namespace),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=self.deployment_name),
                min_replicas=gw.replicas,
                max_replicas=gw.max_replicas,
                metrics=[k8s.autoscaling.v2.MetricSpecArgs(
                    type="Resource",
                    resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                        name="cpu",
                        target=k8s.autoscaling.v2.MetricTargetArgs(
                            type="Utilization", average_utilization=gw.target_cpu_percent),
                    ),
                )],
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.deployment]),
        )

    def _deployment(self, s: StackSettings, args: GatewayArgs, opts: pulumi.ResourceOptions) -> k8s.apps.v1.Deployment:
        gw = s.gateway
        env = [k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in sorted(self.env.items())]
        # The secrets are files named like the settings' variables (pydantic-settings' secrets_dir), from both
        # Secrets in one read-only projected volume: no secret value in the environment (checkov CKV_K8S_35).
        secrets = k8s.core.v1.VolumeArgs(name="secrets", projected=k8s.core.v1.ProjectedVolumeSourceArgs(
            default_mode=kube.SECRET_FILE_MODE,
            sources=[
                k8s.core.v1.VolumeProjectionArgs(secret=k8s.core.v1.SecretProjectionArgs(
                    name=self.secret_name,
                    items=[k8s.core.v1.KeyToPathArgs(key=API_KEYS_KEY, path="GATEWAY_API_KEY_HASHES")])),
                k8s.core.v1.VolumeProjectionArgs(secret=k8s.core.v1.SecretProjectionArgs(
                    name=args.redis_secret_name,
                    items=[k8s.core.v1.KeyToPathArgs(key=args.redis_password_key, path="GATEWAY_REDIS_PASSWORD")])),
            ]))
        volumes = [k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()), secrets]
        mounts = [k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                  k8s.core.v1.VolumeMountArgs(name="secrets", mount_path=DEFAULT_SECRETS_DIR, read_only=True)]
        if s.gateway_processes > 1:  # one /metrics for the pod's processes (their shared files)
            env.append(k8s.core.v1.EnvVarArgs(name="PROMETHEUS_MULTIPROC_DIR", value=METRICS_DIR))
            volumes.append(k8s.core.v1.VolumeArgs(name="metrics", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                medium="Memory", size_limit=METRICS_DIR_SIZE)))
            mounts.append(k8s.core.v1.VolumeMountArgs(name="metrics", mount_path=METRICS_DIR))
        container = k8s.core.v1.ContainerArgs(
            name="gateway",
            image=args.image,
            env=env,
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=gw.port)],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": gw.cpu_request, "memory": gw.memory_request},
                limits={"memory": gw.memory_request},  # no CPU limit: throttling would stall token streams
            ),
            startup_probe=kube.http_probe("/healthz", "http", period=2, failures=30),
            liveness_probe=kube.http_probe("/healthz", "http", period=10, failures=3),
            readiness_probe=kube.http_probe("/readyz", "http", period=5, failures=2),
            volume_mounts=mounts,
            security_context=kube.restricted_container(),
            # Keep serving while the pod leaves the endpoints; SIGTERM (the gateway's drain) comes after.
            lifecycle=k8s.core.v1.LifecycleArgs(pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                exec_=k8s.core.v1.ExecActionArgs(command=["sleep", str(PRE_STOP_SECONDS)]))),
        )
        template = kube.pod_template(
            # fsGroup: the secret files are root-owned, group-readable (mode 0440) by the gateway's group only.
            s, "gateway", "api", uid=GATEWAY_UID, fs_group=GATEWAY_UID, containers=[container],
            volumes=volumes,
            # preStop, then the gateway drains itself on SIGTERM (readiness off, requests finish within the
            # grace, derived from totalTimeout unless set); `make plan` states the sum.
            grace_seconds=gw.termination_grace_seconds,
            affinity=kube.spread_by_host(s, "gateway", required=False),
            # Rotating keys (the Secret) or any setting rolls the pods: the gateway reads its settings at start
            # only (the kubelet refreshes the mounted files, the process does not reread them).
            annotations={"qwen-serving.io/config-hash": kube.content_hash(
                json.dumps(s.api_key_hashes, sort_keys=True), json.dumps(self.env, sort_keys=True))},
        )
        # With the HPA owning the scale, `pulumi up` must not reset it to the minimum.
        scaled_by_hpa = ["spec.replicas"] if s.hpa_scales_gateway else None
        return kube.deployment(s, "gateway", "api", namespace=args.namespace, replicas=gw.replicas, template=template,
                          opts=pulumi.ResourceOptions(parent=self, depends_on=[self.secret],
                                                      ignore_changes=scaled_by_hpa))
