"""The namespace (with Pod Security labels) and its NetworkPolicies: deny everything, then allow the data path
(edge -> gateway -> vLLM / Redis), DNS, Prometheus to the metrics ports, and the Redis backup CronJob to Redis and
the object storage."""

from __future__ import annotations

from urllib.parse import urlparse

import pulumi
import pulumi_kubernetes as k8s

from infra.components import labels as kube
from infra.components.labels import labels, metadata, selector_labels
from stackspec.settings import BACKUP_CRONJOB, MODEL_MANIFEST_CRONJOB, StackSettings

# Ports the tiers listen on in their pods (the Services may map them).
EDGE_HTTP_PORT = 8080
EDGE_HTTPS_PORT = 8443
EDGE_METRICS_PORT = 9113  # nginx-prometheus-exporter sidecar
REDIS_PORT = 6379
REDIS_METRICS_PORT = 9121  # redis_exporter sidecar
BACKUP = BACKUP_CRONJOB  # the Redis tier's backup CronJob's pods (infra/components/redis.py)


def backup_endpoint_port(endpoint: str) -> int:
    """The object storage's port: the URL's own, else 443 for https and 80 for http."""
    parts = urlparse(endpoint)
    return parts.port or (443 if parts.scheme == "https" else 80)


def pod_security_level(settings: StackSettings) -> str:
    """The enforced Pod Security level.

    Every tier meets `restricted` (vLLM included: a non-root UID, read-only root). A hostPath model cache is
    forbidden by `baseline` and `restricted` alike: with `inference.cache.kind: hostPath` the namespace must
    enforce `privileged`. `restricted` is still audited and warned about either way, so drift shows up.
    """
    return "privileged" if settings.inference.cache.kind == "hostPath" else "restricted"


NetworkArgs = kube.SiteArgs  # the settings are all it takes


class Network(pulumi.ComponentResource):
    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:network:Network", name, None, opts)
        s = args.settings
        self._settings = s
        minor = ".".join(s.kubernetes.version.split(".")[:2])
        level = pod_security_level(s)
        self.namespace = k8s.core.v1.Namespace(
            "namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=s.kubernetes.namespace,
                labels={
                    **labels(s, "qwen-serving", "namespace"),
                    "pod-security.kubernetes.io/enforce": level,
                    "pod-security.kubernetes.io/enforce-version": f"v{minor}",
                    "pod-security.kubernetes.io/audit": "restricted",
                    "pod-security.kubernetes.io/audit-version": f"v{minor}",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/warn-version": f"v{minor}",
                },
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Children in the namespace wait for it (the output carries the dependency).
        self.namespace_name: pulumi.Output[str] = self.namespace.metadata.apply(
            lambda m: m.name or s.kubernetes.namespace
        )
        self._opts = pulumi.ResourceOptions(parent=self)
        self.policies = self._policies()
        self.register_outputs({"namespace": self.namespace_name, "policies": [p.urn for p in self.policies]})

    # -- helpers --------------------------------------------------------------------------------------
    def _pods(self, name: str | None) -> k8s.meta.v1.LabelSelectorArgs:
        # No name: the empty selector, i.e. every pod in the namespace.
        return k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(self._settings, name) if name else None)

    def _peer(self, name: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
        return k8s.networking.v1.NetworkPolicyPeerArgs(pod_selector=self._pods(name))

    @staticmethod
    def _ports(*ports: int, protocol: str = "TCP") -> list[k8s.networking.v1.NetworkPolicyPortArgs]:
        return [k8s.networking.v1.NetworkPolicyPortArgs(port=p, protocol=protocol) for p in ports]

    def _policy(
        self,
        object_name: str,
        pods: str | None,
        *,
        ingress: list[k8s.networking.v1.NetworkPolicyIngressRuleArgs] | None = None,
        egress: list[k8s.networking.v1.NetworkPolicyEgressRuleArgs] | None = None,
        types: list[str] | None = None,
    ) -> k8s.networking.v1.NetworkPolicy:
        kinds = types or [t for t, rules in (("Ingress", ingress), ("Egress", egress)) if rules is not None]
        return k8s.networking.v1.NetworkPolicy(
            f"netpol-{object_name}",
            metadata=metadata(self._settings, pods or "qwen-serving", "network",
                              namespace=self.namespace_name, object_name=object_name),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=self._pods(pods), policy_types=kinds, ingress=ingress, egress=egress,
            ),
            opts=self._opts,
        )

    def _from_monitoring(self, *ports: int) -> k8s.networking.v1.NetworkPolicyIngressRuleArgs:
        mon = self._settings.monitoring.namespace
        return k8s.networking.v1.NetworkPolicyIngressRuleArgs(
            from_=[k8s.networking.v1.NetworkPolicyPeerArgs(
                namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels={"kubernetes.io/metadata.name": mon}),
            )],
            ports=self._ports(*ports),
        )

    # -- the rules ------------------------------------------------------------------------------------
    def _policies(self) -> list[k8s.networking.v1.NetworkPolicy]:
        s = self._settings
        gw_port, vllm_port = s.gateway.port, s.inference.port
        ingress, egress = k8s.networking.v1.NetworkPolicyIngressRuleArgs, k8s.networking.v1.NetworkPolicyEgressRuleArgs
        anywhere = [k8s.networking.v1.NetworkPolicyPeerArgs(
            ip_block=k8s.networking.v1.IPBlockArgs(cidr="0.0.0.0/0"))]
        dns = egress(
            to=[k8s.networking.v1.NetworkPolicyPeerArgs(
                namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels={"kubernetes.io/metadata.name": "kube-system"}),
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"k8s-app": "kube-dns"}),
            )],
            ports=[*self._ports(53, protocol="UDP"), *self._ports(53)],
        )
        gateway_egress = [
            egress(to=[self._peer("vllm")], ports=self._ports(vllm_port)),
            egress(to=[self._peer("redis")], ports=self._ports(REDIS_PORT)),
        ]
        if s.gateway.oidc_jwks_url:  # the JWKS endpoint lives outside the cluster
            gateway_egress.append(egress(to=anywhere, ports=self._ports(443)))
        policies = [
            self._policy("default-deny", None, types=["Ingress", "Egress"]),
            self._policy("allow-dns", None, egress=[dns]),
            # The edge is the way in: anyone may reach its listeners; it may only talk to the gateway.
            self._policy("edge", "edge",
                         ingress=[ingress(ports=self._ports(EDGE_HTTP_PORT, EDGE_HTTPS_PORT)),
                                  self._from_monitoring(EDGE_METRICS_PORT)],
                         egress=[egress(to=[self._peer("gateway")], ports=self._ports(gw_port))]),
            self._policy("gateway", "gateway",
                         ingress=[ingress(from_=[self._peer("edge")], ports=self._ports(gw_port)),
                                  self._from_monitoring(gw_port)],
                         egress=gateway_egress),
            # vLLM: requests from the gateway only; out to HTTPS so a cold model cache can download weights.
            self._policy("vllm", "vllm",
                         ingress=[ingress(from_=[self._peer("gateway")], ports=self._ports(vllm_port)),
                                  self._from_monitoring(vllm_port)],
                         egress=[egress(to=anywhere, ports=self._ports(443))]),
        ]
        redis_egress = None
        if s.redis.replica_of:  # the standby's Redis follows the primary's, across sites
            replica_port = int(s.redis.replica_of.rpartition(":")[2])
            redis_egress = [egress(to=anywhere, ports=self._ports(replica_port))]
        redis_ingress = [ingress(from_=[self._peer("gateway")], ports=self._ports(REDIS_PORT)),
                         self._from_monitoring(REDIS_METRICS_PORT)]
        if s.redis.backup is not None:  # the backup CronJob reads Redis and writes to the object storage
            redis_ingress.append(ingress(from_=[self._peer(BACKUP)], ports=self._ports(REDIS_PORT)))
            policies.append(self._policy(BACKUP, BACKUP, egress=[
                egress(to=[self._peer("redis")], ports=self._ports(REDIS_PORT)),
                egress(to=anywhere, ports=self._ports(backup_endpoint_port(s.redis.backup.endpoint))),
            ]))
            # the model manifest CronJob writes to the same storage, and reaches nothing else
            policies.append(self._policy(MODEL_MANIFEST_CRONJOB, MODEL_MANIFEST_CRONJOB, egress=[
                egress(to=anywhere, ports=self._ports(backup_endpoint_port(s.redis.backup.endpoint))),
            ]))
        rep = s.redis.replication
        if s.replication_endpoint and rep is not None:  # the peer site's replica, over TLS, from its CIDRs only
            redis_ingress.append(ingress(
                from_=[k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr=c))
                       for c in rep.peer_cidrs],
                ports=self._ports(rep.port)))
        policies.append(self._policy("redis", "redis", ingress=redis_ingress, egress=redis_egress))
        return policies
