"""Labels, metadata and security contexts shared by every tier.

Every object carries `app.kubernetes.io/{name,instance,component,part-of,managed-by}`; selectors use only
name + instance (they must never change for a live workload).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stackspec.settings import PROJECT, StackSettings

RESTRICTED_SECCOMP = k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault")


@dataclass
class SiteArgs:
    """What every component of a site takes: the parsed stack settings."""

    settings: StackSettings


@dataclass
class TierArgs(SiteArgs):
    """A tier in the application namespace (the output carries the dependency on the namespace)."""

    namespace: pulumi.Input[str]


@dataclass
class ImageTierArgs(TierArgs):
    """A tier that runs an image this stack builds or pins (vLLM, gateway, edge)."""

    image: pulumi.Input[str]


class Tier(pulumi.ComponentResource):
    """One tier in the application namespace. Before the tier declares anything: `settings`, `namespace`,
    and `child`, the options that make every resource of the tier its child."""

    def __init__(self, token: str, name: str, args: TierArgs, opts: pulumi.ResourceOptions | None) -> None:
        super().__init__(token, name, None, opts)
        self.settings, self.namespace = args.settings, args.namespace
        self.child = pulumi.ResourceOptions(parent=self)


def selector_labels(settings: StackSettings, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": settings.site.name}


def labels(settings: StackSettings, name: str, component: str) -> dict[str, str]:
    return {
        **selector_labels(settings, name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PROJECT,
        "app.kubernetes.io/managed-by": "pulumi",
    }


def metadata(
    settings: StackSettings,
    name: str,
    component: str,
    *,
    namespace: pulumi.Input[str] | None,
    object_name: str | None = None,
    annotations: dict[str, str] | None = None,
) -> k8s.meta.v1.ObjectMetaArgs:
    """Metadata for an object of tier `name`; `object_name` when the object is not named after the tier."""
    return k8s.meta.v1.ObjectMetaArgs(
        name=object_name or name,
        namespace=namespace,
        labels=labels(settings, name, component),
        annotations=annotations,
    )


def content_hash(*texts: str) -> str:
    """A pod-template annotation value that changes when mounted config changes, so pods roll."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def restricted_container(*, read_only_root: bool = True) -> k8s.core.v1.SecurityContextArgs:
    """What Pod Security `restricted` asks of a container (plus a read-only root where the image allows)."""
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        read_only_root_filesystem=read_only_root,
        run_as_non_root=True,
        seccomp_profile=RESTRICTED_SECCOMP,
    )


def restricted_pod(uid: int, *, fs_group: int | None = None) -> k8s.core.v1.PodSecurityContextArgs:
    return k8s.core.v1.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        fs_group=fs_group,
        seccomp_profile=RESTRICTED_SECCOMP,
    )


def spread_by_host(
    settings: StackSettings, name: str, *, required: bool
) -> k8s.core.v1.AffinityArgs:
    """Pod anti-affinity over `kubernetes.io/hostname`: one pod per host when required, best effort otherwise."""
    term = k8s.core.v1.PodAffinityTermArgs(
        label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(settings, name)),
        topology_key="kubernetes.io/hostname",
    )
    if required:
        anti = k8s.core.v1.PodAntiAffinityArgs(required_during_scheduling_ignored_during_execution=[term])
    else:
        anti = k8s.core.v1.PodAntiAffinityArgs(preferred_during_scheduling_ignored_during_execution=[
            k8s.core.v1.WeightedPodAffinityTermArgs(weight=100, pod_affinity_term=term)
        ])
    return k8s.core.v1.AffinityArgs(pod_anti_affinity=anti)


def disruption_budget(
    settings: StackSettings,
    name: str,
    component: str,
    *,
    namespace: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> k8s.policy.v1.PodDisruptionBudget:
    """At most one pod of the tier down by choice at a time. With one replica that still lets a node drain
    (a PDB that forbids every eviction would block node maintenance forever)."""
    return k8s.policy.v1.PodDisruptionBudget(
        f"{name}-pdb",
        metadata=metadata(settings, name, component, namespace=namespace),
        spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
            max_unavailable=1,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(settings, name)),
        ),
        opts=opts,
    )


def surge_rollout() -> k8s.apps.v1.DeploymentStrategyArgs:
    """Roll out one extra pod at a time and never take a serving one down first."""
    return k8s.apps.v1.DeploymentStrategyArgs(
        type="RollingUpdate",
        rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0),
    )


def http_probe(
    path: str, port: str, *, period: int, failures: int, timeout: int = 5, initial_delay: int | None = None
) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=port),
        period_seconds=period,
        failure_threshold=failures,
        timeout_seconds=timeout,
        initial_delay_seconds=initial_delay,
    )


def tcp_probe(port: str, *, period: int, failures: int) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=port), period_seconds=period, failure_threshold=failures
    )


def pod_template(
    settings: StackSettings,
    name: str,
    component: str,
    *,
    uid: int,
    containers: list[k8s.core.v1.ContainerArgs],
    grace_seconds: int,
    volumes: list[k8s.core.v1.VolumeArgs] | None = None,
    affinity: k8s.core.v1.AffinityArgs | None = None,
    annotations: dict[str, str] | None = None,
    fs_group: int | None = None,
    restart_policy: str | None = None,
) -> k8s.core.v1.PodTemplateSpecArgs:
    """The pod skeleton every tier we run shares: labels, no service-account token, no service links,
    Pod Security `restricted`, a termination grace (and for a Job's pods a restart policy)."""
    return k8s.core.v1.PodTemplateSpecArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels(settings, name, component), annotations=annotations),
        spec=k8s.core.v1.PodSpecArgs(
            affinity=affinity,
            automount_service_account_token=False,
            enable_service_links=False,
            restart_policy=restart_policy,
            security_context=restricted_pod(uid, fs_group=fs_group),
            termination_grace_period_seconds=grace_seconds,
            containers=containers,
            volumes=volumes,
        ),
    )


def deployment(
    settings: StackSettings,
    name: str,
    component: str,
    *,
    namespace: pulumi.Input[str],
    replicas: int,
    template: k8s.core.v1.PodTemplateSpecArgs,
    opts: pulumi.ResourceOptions,
) -> k8s.apps.v1.Deployment:
    """A Deployment of tier `name` that rolls out with surge (never a serving pod down first)."""
    return k8s.apps.v1.Deployment(
        name,
        metadata=metadata(settings, name, component, namespace=namespace),
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=replicas,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(settings, name)),
            strategy=surge_rollout(),
            template=template,
        ),
        opts=opts,
    )


def service(
    settings: StackSettings,
    name: str,
    component: str,
    *,
    namespace: pulumi.Input[str],
    ports: list[tuple[str, int]],
    opts: pulumi.ResourceOptions,
    headless: bool = False,
) -> k8s.core.v1.Service:
    """The `name` Service in front of tier `name`'s pods; each (port name, port) targets the named container
    port. Headless: DNS answers with every ready pod (the gateway balances over vLLM itself)."""
    return k8s.core.v1.Service(
        f"{name}-service",
        metadata=metadata(settings, name, component, namespace=namespace),
        spec=k8s.core.v1.ServiceSpecArgs(
            cluster_ip="None" if headless else None,
            selector=selector_labels(settings, name),
            ports=[k8s.core.v1.ServicePortArgs(name=port_name, port=port, target_port=port_name)
                   for port_name, port in ports],
        ),
        opts=opts,
    )


# Mounted secret files: root-owned, readable by the pod's fsGroup only, never writable.
SECRET_FILE_MODE = 0o440
OBJECT_STORAGE_DIR = "/var/run/secrets/object-storage"


@dataclass(frozen=True)
class SecretFile:
    """One key of a Secret as a read-only file in a container: the pod's volume and the container's mount."""

    volume: k8s.core.v1.VolumeArgs
    mount: k8s.core.v1.VolumeMountArgs


def object_storage_credentials(secret: str) -> tuple[SecretFile, k8s.core.v1.EnvVarArgs]:
    """The object storage's shared-credentials file (the Secret's key `credentials`), and the variable that
    names it to boto3: what the backup and model-manifest CronJobs read their keys from."""
    name = "object-storage"
    file = SecretFile(
        k8s.core.v1.VolumeArgs(name=name, secret=k8s.core.v1.SecretVolumeSourceArgs(
            secret_name=secret, default_mode=SECRET_FILE_MODE,
            items=[k8s.core.v1.KeyToPathArgs(key="credentials", path="credentials")])),
        k8s.core.v1.VolumeMountArgs(name=name, mount_path=OBJECT_STORAGE_DIR, read_only=True),
    )
    return file, k8s.core.v1.EnvVarArgs(name="AWS_SHARED_CREDENTIALS_FILE", value=f"{OBJECT_STORAGE_DIR}/credentials")


def exporter_sidecar(
    name: str,
    image: str,
    *,
    port: int,
    memory_request: str,
    args: list[str] | None = None,
    env: list[k8s.core.v1.EnvVarArgs] | None = None,
    volume_mounts: list[k8s.core.v1.VolumeMountArgs] | None = None,
) -> k8s.core.v1.ContainerArgs:
    """A Prometheus exporter beside the server it reads: a TCP-probed `metrics` port, small, restricted."""
    return k8s.core.v1.ContainerArgs(
        name=name,
        image=image,
        args=args,
        env=env,
        volume_mounts=volume_mounts,
        ports=[k8s.core.v1.ContainerPortArgs(name="metrics", container_port=port)],
        liveness_probe=tcp_probe("metrics", period=20, failures=3),
        readiness_probe=tcp_probe("metrics", period=10, failures=3),
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "10m", "memory": memory_request}, limits={"memory": "64Mi"}),
        security_context=restricted_container(),
    )
