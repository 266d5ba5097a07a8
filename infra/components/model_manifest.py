"""The model manifest in the cluster: a daily CronJob on a GPU host that records what the model cache holds
(every file with its sha256, `python -m dr.backup manifest`) to the object storage the Redis snapshots go to
(README: backups and restore). The cache lives on the GPU hosts, so the pod must run there without a GPU: the
one such pod the policy pack admits (gpu-hosts-run-only-gpu-pods names it), and only with the cache mounted
read-only. It runs as vLLM's UID, the cache's owner, in the backup image.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.components import labels as kube
from infra.components.gpu_pool import GpuNodePool
from stackspec.images import VLLM_UID
from stackspec.render.vllm_args import CACHE_MOUNT
from stackspec.settings import MODEL_MANIFEST_CRONJOB, StackSettings

# Hashing a 7B model's ~15 GB reads the NVMe for about a minute: once a day is enough to notice drift.
MANIFEST_SCHEDULE = "43 3 * * *"


def manifest_command(settings: StackSettings) -> list[str]:
    """The CronJob's arguments to `python -m dr.backup` (the backup image's entry point)."""
    b = settings.redis.backup
    assert b is not None
    return ["manifest", "--model-dir", CACHE_MOUNT, "--model-name", settings.model.name,
            "--endpoint", b.endpoint, "--bucket", b.bucket, "--prefix", b.prefix, "--site", settings.site.name,
            "--region", b.region]


def model_manifest_cronjob(
    settings: StackSettings,
    *,
    namespace: pulumi.Input[str],
    image: pulumi.Input[str],
    storage_secret: str,
    cache_volume: k8s.core.v1.VolumeArgs,
    pool: GpuNodePool,
    opts: pulumi.ResourceOptions,
) -> k8s.batch.v1.CronJob:
    """The CronJob; `storage_secret` holds the object storage's shared-credentials file (key `credentials`)."""
    name = MODEL_MANIFEST_CRONJOB
    storage, storage_env = kube.object_storage_credentials(storage_secret)
    container = k8s.core.v1.ContainerArgs(
        name="manifest",
        image=image,
        args=manifest_command(settings),
        env=[storage_env],
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name="model-cache", mount_path=CACHE_MOUNT, read_only=True),
            storage.mount,
        ],
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "50m", "memory": "64Mi"}, limits={"cpu": "500m", "memory": "128Mi"}),
        security_context=kube.restricted_container(),
    )
    volumes = [cache_volume, storage.volume]
    template = kube.pod_template(settings, name, "backup", uid=VLLM_UID, fs_group=VLLM_UID, containers=[container],
                                 grace_seconds=30, volumes=volumes, restart_policy="Never")
    # On a GPU host (where the hostPath cache is), with no GPU and no runtime class: it only reads files.
    template.spec.node_selector = pool.node_selector  # type: ignore[union-attr]
    template.spec.tolerations = pool.toleration_args()  # type: ignore[union-attr]
    return k8s.batch.v1.CronJob(
        name,
        metadata=kube.metadata(settings, name, "backup", namespace=namespace),
        spec=k8s.batch.v1.CronJobSpecArgs(
            schedule=MANIFEST_SCHEDULE,
            time_zone="Etc/UTC",
            concurrency_policy="Forbid",
            starting_deadline_seconds=600,
            successful_jobs_history_limit=3,
            failed_jobs_history_limit=3,
            job_template=k8s.batch.v1.JobTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=kube.labels(settings, name, "backup")),
                spec=k8s.batch.v1.JobSpecArgs(backoff_limit=2, active_deadline_seconds=3600, template=template),
            ),
        ),
        opts=opts,
    )
