"""Redis: a StatefulSet with a PVC and AOF, the password from a Secret, redis.conf rendered from settings,
a redis_exporter sidecar for metrics, and the `redis` Service.

On a DR pair (`redis.replication`): the replication user's password in the same Secret, the TLS material
mounted from `redis.replication.tlsSecretName`, and — on the primary only — the `redis-replication`
endpoint: a LoadBalancer Service on the TLS port alone, admitting only the peer's egress CIDRs
(loadBalancerSourceRanges; `externalTrafficPolicy: Local` keeps their source address for the
NetworkPolicy's ipBlock, infra/components/network.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra.components import labels as kube
from infra.components.network import REDIS_METRICS_PORT, REDIS_PORT
from stackspec.render.redis import REPLICATION_TLS_DIR, render_redis_conf, replication_user_args
from stackspec.settings import StackSettings, redis_size_bytes

REDIS_UID = 999  # the `redis` user of the official image
CONF_DIR = "/etc/redis"
REPLICATION_SERVICE = "redis-replication"
# Marks the one Service the policy pack lets face the outside besides the edge (policies/rules.py).
REPLICATION_ENDPOINT_LABEL = "qwen-serving.io/endpoint"


def memory_limit(maxmemory: str) -> str:
    """maxmemory plus headroom for fragmentation, AOF rewrite buffers and clients (x1.5, at least 256Mi)."""
    size = redis_size_bytes(maxmemory)
    return f"{max(256, -(-size * 3 // 2 // 1024**2))}Mi"


@dataclass
class RedisArgs(kube.TierArgs):
    password: pulumi.Input[str] | None = None  # generated when None
    replication_password: pulumi.Input[str] | None = None  # secret config redisReplicationPassword


class Redis(kube.Tier):
    def __init__(self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:redis:Redis", name, args, opts)
        s, ns, child = self.settings, self.namespace, self.child
        self.service_name = "redis"
        self.port = REDIS_PORT
        self.metrics_port = REDIS_METRICS_PORT
        self.secret_name = "redis"
        self.password_key = "password"
        self.url = s.gateway_redis_url  # one definition: the gateway's settings were checked with it

        if args.password is None:
            # A standby replicates the primary: both sites must then share one password (pass it in).
            generated = random.RandomPassword("redis-password", length=32, special=False, opts=child)
            password: pulumi.Input[str] = generated.result
        else:
            password = args.password
        self.replication_password_key = "replication-password"
        secret_data: dict[str, pulumi.Input[str]] = {self.password_key: pulumi.Output.secret(password)}
        if s.redis.replication is not None:
            if args.replication_password is None:  # the settings check this before any resource
                raise ValueError("qwen-serving:redisReplicationPassword is required with redis.replication")
            secret_data[self.replication_password_key] = pulumi.Output.secret(args.replication_password)
        self.secret = k8s.core.v1.Secret(
            "redis-secret",
            metadata=kube.metadata(s, "redis", "cache", namespace=ns),
            type="Opaque",
            string_data=secret_data,
            opts=child,
        )
        conf = render_redis_conf(s, port=REDIS_PORT, bind="0.0.0.0", data_dir="/data")
        self.config = k8s.core.v1.ConfigMap(
            "redis-config",
            metadata=kube.metadata(s, "redis", "cache", namespace=ns, object_name="redis-config"),
            data={"redis.conf": conf},
            opts=child,
        )
        self.service = kube.service(s, "redis", "cache", namespace=ns,
                               ports=[("redis", REDIS_PORT), ("metrics", REDIS_METRICS_PORT)], opts=child)
        self.replication_service = self._replication_service(s, ns, child) if s.replication_endpoint else None
        self.stateful_set = self._stateful_set(s, ns, conf, child)
        # One replica: the budget still lets a node drain (it only stops two voluntary evictions at once).
        self.pdb = kube.disruption_budget(s, "redis", "cache", namespace=ns, opts=child)
        self.register_outputs({"service": self.service_name, "url": self.url, "secret": self.secret_name,
                               "replication_endpoint": REPLICATION_SERVICE if self.replication_service else None})

    def _replication_service(
        self, s: StackSettings, ns: pulumi.Input[str], opts: pulumi.ResourceOptions
    ) -> k8s.core.v1.Service:
        """The peer site's way in: TLS port only, the peer's egress CIDRs only."""
        rep = s.redis.replication
        assert rep is not None
        return k8s.core.v1.Service(
            "redis-replication-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=REPLICATION_SERVICE, namespace=ns,
                labels={**kube.labels(s, REPLICATION_SERVICE, "cache"),
                        REPLICATION_ENDPOINT_LABEL: REPLICATION_SERVICE}),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="LoadBalancer",
                load_balancer_ip=rep.load_balancer_ip,
                load_balancer_source_ranges=list(rep.peer_cidrs),
                external_traffic_policy="Local",
                selector=kube.selector_labels(s, "redis"),
                ports=[k8s.core.v1.ServicePortArgs(name="redis-tls", port=rep.port, target_port="redis-tls")],
            ),
            opts=opts,
        )

    def _secret_env(self, name: str) -> k8s.core.v1.EnvVarArgs:
        return kube.secret_env(name, self.secret_name, self.password_key)

    def _stateful_set(
        self, s: StackSettings, ns: pulumi.Input[str], conf: str, opts: pulumi.ResourceOptions
    ) -> k8s.apps.v1.StatefulSet:
        ping = ["sh", "-c", f"redis-cli -h 127.0.0.1 -p {REDIS_PORT} ping | grep -q PONG"]
        rep = s.redis.replication
        # $(REDIS_PASSWORD) is expanded by the kubelet from the Secret: never in the ConfigMap or image.
        args = [f"{CONF_DIR}/redis.conf", "--requirepass", "$(REDIS_PASSWORD)"]
        env = [self._secret_env("REDIS_PASSWORD"), self._secret_env("REDISCLI_AUTH")]
        ports = [k8s.core.v1.ContainerPortArgs(name="redis", container_port=REDIS_PORT)]
        mounts = [
            k8s.core.v1.VolumeMountArgs(name="data", mount_path="/data"),
            k8s.core.v1.VolumeMountArgs(name="config", mount_path=CONF_DIR, read_only=True),
        ]
        volumes = [k8s.core.v1.VolumeArgs(
            name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name="redis-config"))]
        if rep is None:
            args += ["--masterauth", "$(REDIS_PASSWORD)"]
        else:
            # The replication-only ACL user, and a replica authenticates as it (masteruser in redis.conf).
            env.append(kube.secret_env("REDIS_REPLICATION_PASSWORD", self.secret_name, self.replication_password_key))
            args += ["--user", *replication_user_args(s, "$(REDIS_REPLICATION_PASSWORD)"),
                     "--masterauth", "$(REDIS_REPLICATION_PASSWORD)"]
            ports.append(k8s.core.v1.ContainerPortArgs(name="redis-tls", container_port=rep.port))
            mounts.append(k8s.core.v1.VolumeMountArgs(name="replication-tls", mount_path=REPLICATION_TLS_DIR,
                                                      read_only=True))
            volumes.append(k8s.core.v1.VolumeArgs(name="replication-tls", secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=rep.tls_secret_name, default_mode=0o440)))
        server = k8s.core.v1.ContainerArgs(
            name="redis",
            image=s.images.redis,
            command=["redis-server"],
            args=args,
            env=env,
            ports=ports,
            volume_mounts=mounts,
            # Loading a large AOF takes a while: liveness only starts once Redis answers.
            startup_probe=k8s.core.v1.ProbeArgs(
                exec_=k8s.core.v1.ExecActionArgs(command=ping), period_seconds=5, failure_threshold=60),
            readiness_probe=k8s.core.v1.ProbeArgs(
                exec_=k8s.core.v1.ExecActionArgs(command=ping), period_seconds=5, failure_threshold=3,
                timeout_seconds=3),
            liveness_probe=k8s.core.v1.ProbeArgs(
                tcp_socket=k8s.core.v1.TCPSocketActionArgs(port="redis"), period_seconds=10, failure_threshold=6),
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "100m", "memory": memory_limit(s.redis.maxmemory)},
                limits={"memory": memory_limit(s.redis.maxmemory)},
            ),
            security_context=kube.restricted_container(),
        )
        exporter = kube.exporter_sidecar(
            "redis-exporter", s.images.redis_exporter, port=REDIS_METRICS_PORT, memory_request="32Mi",
            env=[
                k8s.core.v1.EnvVarArgs(name="REDIS_ADDR", value=f"redis://127.0.0.1:{REDIS_PORT}"),
                self._secret_env("REDIS_PASSWORD"),
            ],
        )
        claim = k8s.core.v1.PersistentVolumeClaimArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(name="data", labels=kube.labels(s, "redis", "cache")),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                access_modes=["ReadWriteOnce"],
                storage_class_name=s.redis.storage_class,
                resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": s.redis.storage_size}),
            ),
        )
        return k8s.apps.v1.StatefulSet(
            "redis",
            metadata=kube.metadata(s, "redis", "cache", namespace=ns),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                service_name=self.service_name,
                replicas=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=kube.selector_labels(s, "redis")),
                template=kube.pod_template(
                    s, "redis", "cache", uid=REDIS_UID, fs_group=REDIS_UID, containers=[server, exporter],
                    grace_seconds=30,  # time to fsync the AOF
                    volumes=volumes,
                    annotations={"qwen-serving.io/config-hash": kube.content_hash(conf)},
                ),
                volume_claim_templates=[claim],
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.config, self.secret]),
        )
