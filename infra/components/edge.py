"""The edge (Nginx): nginx.conf rendered from settings into a ConfigMap, the edge image (nginx + web/),
a Deployment with an nginx-prometheus-exporter sidecar, the `edge` Service and a PDB."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components import labels as kube
from infra.components.network import EDGE_HTTP_PORT, EDGE_HTTPS_PORT, EDGE_METRICS_PORT
from stackspec.images import NGINX_UID
from stackspec.render.nginx import K8S_CONF_DIR, K8S_STATE_DIR, K8S_TLS_DIR, NGINX_COMMAND, render_nginx_conf
from stackspec.settings import StackSettings

CONF_DIR = K8S_CONF_DIR


@dataclass
class EdgeArgs(kube.ImageTierArgs):
    gateway_service: str
    gateway_port: int


class Edge(kube.Tier):
    service_name = deployment_name = "edge"
    metrics_port = EDGE_METRICS_PORT

    def __init__(self, name: str, args: EdgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:edge:Edge", name, args, opts)
        s, ns, child = self.settings, self.namespace, self.child
        upstream = f"{args.gateway_service}.{s.kubernetes.namespace}.svc.cluster.local:{args.gateway_port}"
        self.nginx_conf = render_nginx_conf(s, listen=f"0.0.0.0:{EDGE_HTTP_PORT}", gateway_upstreams=(upstream,),
                                            tls_listen=f"0.0.0.0:{EDGE_HTTPS_PORT}")
        self.config = k8s.core.v1.ConfigMap(
            "edge-config",
            metadata=kube.metadata(s, "edge", "edge", namespace=ns, object_name="edge-nginx"),
            data={"nginx.conf": self.nginx_conf},
            opts=child,
        )
        self.service = self._service(s, ns, child)
        self.deployment = self._deployment(s, args)
        self.pdb = kube.disruption_budget(s, "edge", "edge", namespace=ns, opts=child)
        self.register_outputs({"service": self.service_name, "deployment": self.deployment_name})

    def _service(self, s: StackSettings, ns: pulumi.Input[str], opts: pulumi.ResourceOptions) -> k8s.core.v1.Service:
        edge = s.edge
        tls = edge.tls.enabled
        ports = [
            k8s.core.v1.ServicePortArgs(name="http", port=80, target_port="http"),
            k8s.core.v1.ServicePortArgs(name="metrics", port=EDGE_METRICS_PORT, target_port="metrics"),
        ]
        if tls:
            ports.insert(1, k8s.core.v1.ServicePortArgs(name="https", port=443, target_port="https"))
        if edge.service_type == "NodePort" and edge.node_port is not None:
            # The fixed node port goes on the port users reach: https when TLS is on.
            index = 1 if tls else 0
            ports[index] = k8s.core.v1.ServicePortArgs(
                name=ports[index].name, port=ports[index].port, target_port=ports[index].target_port,
                node_port=edge.node_port,
            )
        return k8s.core.v1.Service(
            "edge-service",
            metadata=kube.metadata(s, "edge", "edge", namespace=ns),
            spec=k8s.core.v1.ServiceSpecArgs(
                type=edge.service_type,
                load_balancer_ip=edge.load_balancer_ip if edge.service_type == "LoadBalancer" else None,
                # A LoadBalancer keeps client addresses (logs, X-Forwarded-For); a NodePort must answer on
                # every node, including those without an edge pod.
                external_traffic_policy="Local" if edge.service_type == "LoadBalancer" else "Cluster",
                selector=kube.selector_labels(s, "edge"),
                ports=ports,
            ),
            opts=opts,
        )

    def _deployment(self, s: StackSettings, args: EdgeArgs) -> k8s.apps.v1.Deployment:
        edge = s.edge
        mounts = [
            k8s.core.v1.VolumeMountArgs(name="config", mount_path=CONF_DIR, read_only=True),
            k8s.core.v1.VolumeMountArgs(name="state", mount_path=K8S_STATE_DIR),
        ]
        volumes = [
            k8s.core.v1.VolumeArgs(name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name="edge-nginx")),
            k8s.core.v1.VolumeArgs(name="state", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()),
        ]
        ports = [k8s.core.v1.ContainerPortArgs(name="http", container_port=EDGE_HTTP_PORT)]
        if edge.tls.enabled:
            mounts.append(k8s.core.v1.VolumeMountArgs(name="tls", mount_path=K8S_TLS_DIR, read_only=True))
            volumes.append(k8s.core.v1.VolumeArgs(name="tls", secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=edge.tls.secret_name)))
            ports.append(k8s.core.v1.ContainerPortArgs(name="https", container_port=EDGE_HTTPS_PORT))
        nginx = k8s.core.v1.ContainerArgs(
            name="nginx",
            image=args.image,
            command=list(NGINX_COMMAND),
            ports=ports,
            volume_mounts=mounts,
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "100m", "memory": "64Mi"}, limits={"memory": "256Mi"}),
            # Probes check this nginx only; /healthz (gateway readiness) is for the external DNS health check.
            liveness_probe=kube.http_probe("/nginx-live", "http", period=10, failures=3),
            readiness_probe=kube.http_probe("/nginx-live", "http", period=5, failures=2),
            # Leave the Service first; then the image's STOPSIGNAL (SIGQUIT) lets open streams finish.
            lifecycle=k8s.core.v1.LifecycleArgs(pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                exec_=k8s.core.v1.ExecActionArgs(command=["sleep", "5"]))),
            security_context=kube.restricted_container(),
        )
        exporter = kube.exporter_sidecar(
            "nginx-exporter", s.images.nginx_exporter, port=EDGE_METRICS_PORT, memory_request="16Mi",
            args=[f"--nginx.scrape-uri=http://127.0.0.1:{EDGE_HTTP_PORT}/nginx_status"],
        )
        template = kube.pod_template(
            s, "edge", "edge", uid=NGINX_UID, containers=[nginx, exporter], volumes=volumes,
            grace_seconds=min(s.edge_read_timeout_seconds, 660) + 10,
            affinity=kube.spread_by_host(s, "edge", required=False),
            annotations={"qwen-serving.io/config-hash": kube.content_hash(self.nginx_conf)},
        )
        return kube.deployment(s, "edge", "edge", namespace=args.namespace, replicas=edge.replicas, template=template,
                          opts=pulumi.ResourceOptions(parent=self, depends_on=[self.config]))
