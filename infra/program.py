"""The program: read the stack's settings once, declare every tier, export what operators need."""

from __future__ import annotations

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env

from infra.components.edge import Edge, EdgeArgs
from infra.components.gateway import Gateway, GatewayArgs
from infra.components.gpu_pool import GpuNodePool, GpuNodePoolArgs
from infra.components.images import Images, ImagesArgs
from infra.components.inference import Inference, InferenceArgs, ManifestBackend
from infra.components.monitoring import Monitoring, MonitoringArgs
from infra.components.network import Network, NetworkArgs
from infra.components.redis import Redis, RedisArgs
from infra.global_program import declare_global
from stackspec.dns import DnsSettings, global_settings_from_config, is_global_config
from stackspec.settings import BACKUP_CRONJOB, PROJECT, StackSettings, settings_from_config


def read_settings() -> StackSettings | DnsSettings:
    """All of this stack's config, as the engine passed it, parsed and validated in one go.

    The `global` stack (it has `qwen-serving:dns`) declares DNS failover; every other stack is a site.
    """
    raw = {**get_config_env(), **CONFIG.get()}
    if is_global_config(raw):
        return global_settings_from_config(raw)
    return settings_from_config(raw)


def site_exports(settings: StackSettings) -> dict[str, object]:
    """Outputs other stacks read (the global stack's StackReference uses `edge_address`)."""
    return {
        "site": settings.site.name,
        "role": settings.site.role,
        "namespace": settings.kubernetes.namespace,
        "hostname": settings.edge.hostname,
        "edge_address": settings.edge.load_balancer_ip,
        # The peer's redis.replicaOf points here while this site is primary (README: disaster recovery).
        "redis_replication_address": (
            f"{settings.redis.replication.load_balancer_ip}:{settings.redis.replication.port}"
            if settings.replication_endpoint and settings.redis.replication
            and settings.redis.replication.load_balancer_ip else None),
        "capacity": settings.capacity.describe(),
    }


def redis_password_config(settings: StackSettings) -> pulumi.Output[str] | None:
    """Secret config `redisPassword`; None lets the Redis tier generate one. (A standby must have it: the
    settings check that, with every other required secret, before any resource.)"""
    return pulumi.Config(PROJECT).get_secret("redisPassword")


def declare(settings: StackSettings) -> dict[str, object]:
    """Declare every tier for one site; returns the stack outputs."""
    outputs = site_exports(settings)
    # Tiers, in dependency order (infra/components/*). Children in the namespace take its name as an
    # output, so they wait for it.
    redis_password = redis_password_config(settings)
    network = Network("network", NetworkArgs(settings=settings))
    ns = network.namespace_name
    pool = GpuNodePool("gpu-pool", GpuNodePoolArgs(settings=settings))
    images = Images("images", ImagesArgs(settings=settings))
    config = pulumi.Config(PROJECT)
    redis = Redis("redis", RedisArgs(settings=settings, namespace=ns, password=redis_password,
                                     replication_password=config.get_secret("redisReplicationPassword"),
                                     backup_image=images.backup_ref,
                                     backup_access_key_id=config.get_secret("backupAccessKeyId"),
                                     backup_secret_access_key=config.get_secret("backupSecretAccessKey")))
    # monitoring tier (infra/components/monitoring.py): KEDA and Prometheus, which vLLM's ScaledObject needs
    monitoring = Monitoring("monitoring", MonitoringArgs(settings=settings)) if settings.monitoring.enabled else None
    inference = Inference(
        "inference", InferenceArgs(settings=settings, namespace=ns, pool=pool, image=images.vllm_ref,
                                   keda=monitoring.keda_backend if settings.keda_scales_vllm and monitoring else None,
                                   manifest=ManifestBackend(images.backup_ref, BACKUP_CRONJOB, [redis])
                                   if settings.redis.backup is not None and images.backup_ref is not None else None),
        opts=pulumi.ResourceOptions(depends_on=[pool]),
    )
    gateway = Gateway(
        "gateway",
        GatewayArgs(settings=settings, namespace=ns, image=images.gateway_ref, backends_dns=inference.backends_dns,
                    redis_url=redis.url, redis_secret_name=redis.secret_name,
                    redis_password_key=redis.password_key),
        opts=pulumi.ResourceOptions(depends_on=[redis]),
    )
    edge = Edge(
        "edge",
        EdgeArgs(settings=settings, namespace=ns, image=images.edge_ref, gateway_service=gateway.service_name,
                 gateway_port=gateway.port),
        opts=pulumi.ResourceOptions(depends_on=[gateway]),  # nginx resolves the gateway Service at start
    )
    outputs |= {
        "namespace": ns,
        "services": {"vllm": inference.service_name, "gateway": gateway.service_name, "edge": edge.service_name,
                     "redis": redis.service_name},
        "vllm_args": inference.args,
        "images": {"vllm": images.vllm_ref, "gateway": images.gateway_ref, "edge": images.edge_ref,
                   "backup": images.backup_ref},
        # The scheduled Redis snapshot (README: backups and restore); None without redis.backup.
        "redis_backup": redis.backup_location,
        "gpu_nodes": [h.name for h in settings.gpu_pool.hosts],
    }
    # Who owns each Deployment's replica count (README: autoscaling): KEDA, the HPA, or these settings.
    outputs["autoscaling"] = {"vllm": "keda" if settings.keda_scales_vllm else "settings",
                              "gateway": "hpa" if settings.hpa_scales_gateway else "settings"}
    if monitoring is not None:
        outputs["prometheus_url"] = monitoring.prometheus_url
    return outputs


def main() -> None:
    settings = read_settings()  # raises SettingsError before any resource is declared
    outputs = declare_global(settings) if isinstance(settings, DnsSettings) else declare(settings)
    for key, value in outputs.items():
        pulumi.export(key, value)
