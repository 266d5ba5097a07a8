"""vLLM: one Deployment of `replicas` pods, each holding `tensorParallelSize` GPUs on one host, behind a
headless Service (the gateway addresses every pod), with a PodDisruptionBudget.

A pod is scheduled on one node, so its TP GPUs are always on one host; anti-affinity spreads replicas over
hosts (required on prod-like sites). When KEDA owns the scale (`StackSettings.keda_scales_vllm`), its
ScaledObject is declared here, beside the Deployment it scales; KEDA itself and the Prometheus its trigger
queries come from the monitoring tier (`KedaBackend`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components import labels as kube
from infra.components.gpu_pool import GpuNodePool
from infra.components.model_manifest import model_manifest_cronjob
from stackspec.images import VLLM_UID
from stackspec.monitoring import promql as m
from stackspec.monitoring.scope import scope
from stackspec.render.vllm_args import (  # the pod environment is the contract's (make verify checks it too)
    CACHE_MOUNT,
    ENTRYPOINT_MODULE,
    HOME_MOUNT,
    render_vllm_args,
    vllm_env,
)
from stackspec.settings import MODEL_MANIFEST_CRONJOB, StackSettings

DRAIN_SECONDS = 15  # preStop: long enough for the gateway's DNS re-resolve and endpoint removal
KEDA_API = "keda.sh/v1alpha1"
# torch.compile, Triton and FlashInfer caches of one model: hundreds of MB; the limit only bounds a runaway.
HOME_SIZE = "4Gi"


def keda_max_replicas(settings: StackSettings) -> int:
    """The most vLLM replicas the pool can hold: TP never spans hosts, so per host gpus // TP, summed.

    Never more than total GPUs / TP (the bound the issue states), never below the configured replicas.
    """
    tp = settings.inference.tensor_parallel_size
    slots = sum(h.gpus // tp for h in settings.gpu_pool.hosts)
    return max(min(slots, settings.gpu_pool.total_gpus // tp), settings.inference.replicas)


@dataclass(frozen=True)
class KedaBackend:
    """What the monitoring tier gives a ScaledObject: the Prometheus its trigger queries, and the releases
    that must exist first (KEDA's CRD and operator, Prometheus)."""

    prometheus_url: str
    ready: list[pulumi.Resource]


@dataclass(frozen=True)
class ManifestBackend:
    """What the model manifest CronJob needs from elsewhere: the backup image, the Secret holding the object
    storage's credentials file (the Redis tier's), and what must exist first."""

    image: pulumi.Input[str]
    storage_secret: str
    ready: list[pulumi.Resource]


@dataclass
class InferenceArgs(kube.ImageTierArgs):
    pool: GpuNodePool
    keda: KedaBackend | None = None  # required exactly when settings.keda_scales_vllm
    manifest: ManifestBackend | None = None  # required exactly when redis.backup is set


class Inference(kube.Tier):
    def __init__(self, name: str, args: InferenceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:inference:Inference", name, args, opts)
        s, ns, child = self.settings, self.namespace, self.child
        inf = s.inference
        self.service_name = "vllm"
        self.deployment_name = "vllm"
        self.port = inf.port
        self.metrics_port = inf.port  # /metrics on the API port
        self.backends_dns = s.gateway_backends_dns  # one definition: the gateway's settings were checked with it
        self.args = render_vllm_args(s, model=s.model.name, host="0.0.0.0", port=inf.port)

        cache_volume = self._cache_volume(s, ns, child)
        keda = s.keda_scales_vllm
        if keda and args.keda is None:
            raise ValueError("keda_scales_vllm: the inference tier needs the monitoring tier's KedaBackend")
        self.service = kube.service(s, "vllm", "inference", namespace=ns, ports=[("http", inf.port)], opts=child,
                               headless=True)
        self.deployment = k8s.apps.v1.Deployment(
            "vllm",
            metadata=kube.metadata(s, "vllm", "inference", namespace=ns),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=inf.replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=kube.selector_labels(s, "vllm")),
                # Every GPU is taken: a surge pod could never schedule. Replace one replica at a time.
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=0, max_unavailable=1),
                ),
                progress_deadline_seconds=inf.startup_budget_seconds + 300,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=kube.labels(s, "vllm", "inference")),
                    spec=self._pod_spec(s, args, cache_volume),
                ),
            ),
            # KEDA owns the scale when it is on: `pulumi up` must not reset it.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["spec.replicas"] if keda else None),
        )
        self.pdb = kube.disruption_budget(s, "vllm", "inference", namespace=ns, opts=child)
        self.scaled_object: k8s.apiextensions.CustomResource | None = None
        self.max_replicas = s.inference.replicas
        if keda and args.keda is not None:
            self.max_replicas = keda_max_replicas(s)
            self.scaled_object = self._scaled_object(s, args.keda)
        # The model manifest to object storage, beside the cache it reads, wherever backups are configured.
        self.manifest: k8s.batch.v1.CronJob | None = None
        if s.redis.backup is not None:
            if args.manifest is None:
                raise ValueError("redis.backup: the inference tier needs the ManifestBackend (image, storage Secret)")
            self.manifest = model_manifest_cronjob(
                s, namespace=ns, image=args.manifest.image, storage_secret=args.manifest.storage_secret,
                cache_volume=cache_volume, pool=args.pool,
                opts=pulumi.ResourceOptions(parent=self, depends_on=args.manifest.ready))
        self.register_outputs({
            "manifestCronJob": MODEL_MANIFEST_CRONJOB if self.manifest else None,
            "service": self.service_name, "port": self.port, "deployment": self.deployment_name,
            "backends_dns": self.backends_dns, "maxReplicas": self.max_replicas,
            "autoscaled": self.scaled_object is not None,
        })

    def _scaled_object(self, s: StackSettings, keda: KedaBackend) -> k8s.apiextensions.CustomResource:
        auto = s.monitoring.autoscaling
        waiting = scope(s).select(m.VLLM_WAITING, m.JOB_VLLM)  # the rules' scope: this stack's vLLM only
        return k8s.apiextensions.CustomResource(
            "vllm-scaler",
            api_version=KEDA_API,
            kind="ScaledObject",
            metadata=kube.metadata(s, "vllm", "autoscaling", namespace=self.namespace),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.deployment_name},
                "minReplicaCount": s.inference.replicas,
                "maxReplicaCount": self.max_replicas,
                "pollingInterval": auto.polling_interval_seconds,
                "cooldownPeriod": auto.cooldown_seconds,
                # A new replica takes minutes to load; scale down slowly so load spikes do not thrash.
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                    "stabilizationWindowSeconds": auto.cooldown_seconds,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                }}}},
                "triggers": [{
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": keda.prometheus_url,
                        "query": f"sum({waiting})",
                        "threshold": str(auto.waiting_per_replica),
                        "ignoreNullValues": "true",
                    },
                }],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.deployment, *keda.ready]),
        )

    def _cache_volume(
        self, s: StackSettings, ns: pulumi.Input[str], opts: pulumi.ResourceOptions
    ) -> k8s.core.v1.VolumeArgs:
        cache = s.inference.cache
        if cache.kind == "hostPath":
            # The NVMe on each GPU host: weights download once per host and survive pod restarts. fsGroup does
            # not reach a hostPath, so the host prepares it owned by VLLM_UID (README: GPU hosts); `Directory`,
            # not `DirectoryOrCreate`: a host not prepared holds the pod in ContainerCreating with a named
            # reason, instead of a root-owned directory vLLM cannot write and a crash at the first download.
            return k8s.core.v1.VolumeArgs(name="model-cache", host_path=k8s.core.v1.HostPathVolumeSourceArgs(
                path=cache.host_path, type="Directory"))
        # One claim shared by every replica (replicas sit on different hosts): it must be ReadWriteMany.
        self.cache_claim = k8s.core.v1.PersistentVolumeClaim(
            "vllm-model-cache",
            metadata=kube.metadata(s, "vllm", "inference", namespace=ns, object_name="vllm-model-cache"),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                access_modes=["ReadWriteMany"],
                storage_class_name=cache.storage_class,
                resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": cache.pvc_size}),
            ),
            opts=opts,
        )
        return k8s.core.v1.VolumeArgs(name="model-cache", persistent_volume_claim=(
            k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(claim_name="vllm-model-cache")))

    def _pod_spec(
        self, s: StackSettings, args: InferenceArgs, cache_volume: k8s.core.v1.VolumeArgs
    ) -> k8s.core.v1.PodSpecArgs:
        inf, pool = s.inference, args.pool
        gpus = str(inf.tensor_parallel_size)
        container = k8s.core.v1.ContainerArgs(
            name="vllm",
            image=args.image,
            command=["python3", "-m", ENTRYPOINT_MODULE],
            args=self.args,
            env=[k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in sorted(vllm_env(s).items())],
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=inf.port)],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": inf.cpu_request, "memory": inf.memory_request, "nvidia.com/gpu": gpus},
                limits={"memory": inf.memory_request, "nvidia.com/gpu": gpus},
            ),
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(name="dshm", mount_path="/dev/shm"),
                k8s.core.v1.VolumeMountArgs(name="model-cache", mount_path=CACHE_MOUNT),
                # The root filesystem is read-only: $HOME with every compile cache, and /tmp (ZeroMQ sockets).
                k8s.core.v1.VolumeMountArgs(name="home", mount_path=HOME_MOUNT),
                k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
            ],
            # Loading weights takes minutes: liveness and readiness wait for the startup probe's budget.
            startup_probe=kube.http_probe("/health", "http", period=10,
                                     failures=math.ceil(inf.startup_budget_seconds / 10)),
            readiness_probe=kube.http_probe("/v1/models", "http", period=5, failures=3),
            liveness_probe=kube.http_probe("/health", "http", period=15, failures=4, timeout=10),
            # Leave the Service (and the gateway's DNS view) before SIGTERM; in-flight streams then finish.
            lifecycle=k8s.core.v1.LifecycleArgs(pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                exec_=k8s.core.v1.ExecActionArgs(command=["sleep", str(DRAIN_SECONDS)]))),
            # Pod Security `restricted`: the official image runs as VLLM_UID (it owns nothing there; every
            # write goes to the volumes above, named by vllm_env).
            security_context=kube.restricted_container(),
        )
        return k8s.core.v1.PodSpecArgs(
            runtime_class_name=pool.runtime_class_name,
            node_selector=pool.node_selector,
            tolerations=pool.toleration_args(),
            affinity=kube.spread_by_host(s, "vllm", required=s.site.prod_like),
            # A Service named `vllm` would inject VLLM_PORT=tcp://... which vLLM reads as its own setting.
            enable_service_links=False,
            automount_service_account_token=False,
            # fsGroup makes a claimed model cache group-writable for VLLM_UID (a hostPath is prepared on the host).
            security_context=kube.restricted_pod(VLLM_UID, fs_group=VLLM_UID),
            termination_grace_period_seconds=inf.termination_grace_seconds,
            containers=[container],
            volumes=[
                # NCCL and the tokenizer workers share memory through /dev/shm; the default 64 MiB is far too small.
                k8s.core.v1.VolumeArgs(name="dshm", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                    medium="Memory", size_limit=inf.shm_size)),
                cache_volume,
                k8s.core.v1.VolumeArgs(name="home", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                    size_limit=HOME_SIZE)),
                k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="1Gi")),
            ],
        )
