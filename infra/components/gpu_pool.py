"""The GPU pool: labels and a taint on the listed 4090D hosts, the `nvidia` RuntimeClass, the NVIDIA device
plugin and the DCGM exporter (both Helm, pinned chart versions)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components import labels as kube
from infra.components.helm import helm_release
from infra.components.labels import labels
from stackspec.settings import StackSettings

DEVICE_PLUGIN_REPO = "https://nvidia.github.io/k8s-device-plugin"
DCGM_EXPORTER_REPO = "https://nvidia.github.io/dcgm-exporter/helm-charts"
RUNTIME_CLASS = "nvidia"
TAINT_VALUE = "present"
DCGM_METRICS_PORT = 9400


GpuNodePoolArgs = kube.SiteArgs  # the settings are all it takes


class GpuNodePool(pulumi.ComponentResource):
    """After this, GPU workloads schedule with `node_selector` + `tolerations` + `runtime_class_name`."""

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:gpu_pool:GpuNodePool", name, None, opts)
        s = args.settings
        pool = s.gpu_pool
        child = pulumi.ResourceOptions(parent=self)
        self.node_selector: dict[str, str] = {pool.node_label: "true"}
        self.tolerations: list[dict[str, str]] = [
            {"key": pool.taint_key, "operator": "Exists", "effect": "NoSchedule"},
        ]
        self.runtime_class_name = RUNTIME_CLASS
        # The device plugin and DCGM need host paths and privileges: their own namespace, not the app's.
        self.system_namespace = s.kubernetes.gpu_system_namespace

        self.node_patches = [
            k8s.core.v1.NodePatch(
                f"gpu-node-{host.name}",
                metadata=k8s.meta.v1.ObjectMetaPatchArgs(
                    name=host.name,
                    labels={
                        pool.node_label: "true",
                        "qwen-serving.io/gpu-model": pool.gpu_model,
                        "qwen-serving.io/gpu-count": str(host.gpus),
                        "nvidia.com/gpu.present": "true",  # what the device plugin chart's affinity looks for
                    },
                    annotations={"pulumi.com/patchForce": "true"},
                ),
                # Only GPU workloads (which tolerate this) land on the GPU hosts.
                spec=k8s.core.v1.NodeSpecPatchArgs(taints=[
                    k8s.core.v1.TaintPatchArgs(key=pool.taint_key, value=TAINT_VALUE, effect="NoSchedule"),
                ]),
                opts=child,
            )
            for host in pool.hosts
        ]
        self.runtime_class = k8s.node.v1.RuntimeClass(
            "nvidia-runtime-class",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=RUNTIME_CLASS, labels=labels(s, "nvidia", "gpu-pool")),
            handler="nvidia",
            # Pods that ask for this runtime get the pool's selector and toleration from it.
            scheduling=k8s.node.v1.SchedulingArgs(node_selector=self.node_selector,
                                                  tolerations=self.toleration_args()),
            opts=child,
        )
        self.namespace = k8s.core.v1.Namespace(
            "gpu-system-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=self.system_namespace,
                labels={**labels(s, "gpu-system", "gpu-pool"), "pod-security.kubernetes.io/enforce": "privileged"},
            ),
            opts=child,
        )
        self.policies = self._network_policies(s, child)
        after_namespace = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace, self.runtime_class])
        placement: dict[str, Any] = {
            "nodeSelector": self.node_selector,
            "tolerations": self.tolerations,
        }
        self.device_plugin = helm_release(
            "nvidia-device-plugin", chart="nvidia-device-plugin", version=pool.device_plugin_chart_version,
            repo=DEVICE_PLUGIN_REPO, namespace=self.system_namespace,
            values={**placement, "runtimeClassName": RUNTIME_CLASS, "affinity": {}},
            opts=after_namespace,
        )
        self.dcgm_exporter = helm_release(
            "dcgm-exporter", chart="dcgm-exporter", version=pool.dcgm_exporter_chart_version,
            repo=DCGM_EXPORTER_REPO, namespace=self.system_namespace,
            values={
                **placement,
                "runtimeClassName": RUNTIME_CLASS,
                # The monitoring tier's ServiceMonitor selects this Service by name.
                "serviceMonitor": {"enabled": False},
                "service": {"enable": True},
            },
            opts=after_namespace,
        )
        self.register_outputs({
            "node_selector": self.node_selector,
            "runtime_class_name": self.runtime_class_name,
            "system_namespace": self.system_namespace,
        })

    def _network_policies(
        self, s: StackSettings, opts: pulumi.ResourceOptions
    ) -> list[k8s.networking.v1.NetworkPolicy]:
        """Deny by default here too. The device plugin talks to the kubelet over a host socket (no network);
        DCGM exporter only answers Prometheus on its metrics port."""
        namespace = self.namespace.metadata.apply(lambda m: m.name or self.system_namespace)

        def meta(name: str) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels(s, "gpu-system", "network"))

        deny = k8s.networking.v1.NetworkPolicy(
            "gpu-netpol-default-deny",
            metadata=meta("default-deny"),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(), policy_types=["Ingress", "Egress"]),
            opts=opts,
        )
        metrics = k8s.networking.v1.NetworkPolicy(
            "gpu-netpol-dcgm-metrics",
            metadata=meta("dcgm-exporter-metrics"),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels={"app.kubernetes.io/name": "dcgm-exporter"}),
                policy_types=["Ingress"],
                ingress=[k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                    from_=[k8s.networking.v1.NetworkPolicyPeerArgs(namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"kubernetes.io/metadata.name": s.monitoring.namespace}))],
                    ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=DCGM_METRICS_PORT, protocol="TCP")],
                )],
            ),
            opts=opts,
        )
        return [deny, metrics]

    def toleration_args(self) -> list[k8s.core.v1.TolerationArgs]:
        return [k8s.core.v1.TolerationArgs(key=t["key"], operator=t["operator"], effect=t["effect"])
                for t in self.tolerations]
