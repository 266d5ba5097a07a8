"""Redis: a StatefulSet with a PVC and AOF, the password from a Secret, redis.conf rendered from settings,
a redis_exporter sidecar for metrics, and the `redis` Service.

On a DR pair (`redis.replication`): the replication user's password in the same Secret, the TLS material
mounted from `redis.replication.tlsSecretName`, and — on the primary only — the `redis-replication`
endpoint: a LoadBalancer Service on the TLS port alone, admitting only the peer's egress CIDRs
(loadBalancerSourceRanges; `externalTrafficPolicy: Local` keeps their source address for the
NetworkPolicy's ipBlock, infra/components/network.py).

With `redis.backup`: the `redis-backup` CronJob (the backup image, `python -m dr.backup snapshot`): an RDB of
the whole server over the replication protocol, to S3-compatible storage under `<prefix>/<site>/`, pruned
beyond `retentionDays`. Its secrets are files: the Redis password (the `redis` Secret's `password` key) and a
shared-credentials file for boto3 (the `redis-backup` Secret, from secret config backupAccessKeyId /
backupSecretAccessKey)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra.components import labels as kube
from infra.components.network import BACKUP, REDIS_METRICS_PORT, REDIS_PORT
from stackspec.images import BACKUP_UID, REDIS_UID
from stackspec.render.redis import (
    CLI_AUTH,
    PASSWORD_FILE,
    REPLICATION_TLS_DIR,
    SECRET_DIR,
    render_exporter_passwords,
    render_redis_conf,
    render_redis_secrets,
)
from stackspec.settings import StackSettings, redis_size_bytes

CONF_DIR = "/etc/redis"
REPLICATION_SERVICE = "redis-replication"
# Marks the one Service the policy pack lets face the outside besides the edge (policies/rules.py).
REPLICATION_ENDPOINT_LABEL = "qwen-serving.io/endpoint"

SECRETS_CONF_KEY = "redis-secrets.conf"
EXPORTER_PASSWORDS_KEY = "exporter-passwords.json"


def memory_limit(maxmemory: str) -> str:
    """maxmemory plus headroom for fragmentation, AOF rewrite buffers and clients (x1.5, at least 256Mi)."""
    size = redis_size_bytes(maxmemory)
    return f"{max(256, -(-size * 3 // 2 // 1024**2))}Mi"


@dataclass
class RedisArgs(kube.TierArgs):
    password: pulumi.Input[str] | None = None  # generated when None
    replication_password: pulumi.Input[str] | None = None  # secret config redisReplicationPassword
    backup_image: pulumi.Input[str] | None = None  # the backup image (Images.backup_ref), with redis.backup
    backup_access_key_id: pulumi.Input[str] | None = None  # secret config backupAccessKeyId
    backup_secret_access_key: pulumi.Input[str] | None = None  # secret config backupSecretAccessKey


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
        # Redis and its exporter read the password from files of this Secret: redis.conf includes the secret
        # lines (requirepass, and on a DR pair the replication user and masterauth), the exporter reads its
        # password file (a JSON map of address to password), the probes `cat` the password file.
        secret_data[SECRETS_CONF_KEY] = pulumi.Output.secret(pulumi.Output.all(password, args.replication_password)
            .apply(lambda pw: render_redis_secrets(s, password=pw[0], replication_password=pw[1])))
        secret_data[EXPORTER_PASSWORDS_KEY] = pulumi.Output.secret(pulumi.Output.from_input(password).apply(
            lambda pw: render_exporter_passwords(port=REDIS_PORT, password=pw)))
        self.secret = k8s.core.v1.Secret(
            "redis-secret",
            metadata=kube.metadata(s, "redis", "cache", namespace=ns),
            type="Opaque",
            string_data=secret_data,
            opts=child,
        )
        conf = render_redis_conf(s, port=REDIS_PORT, bind="0.0.0.0", data_dir="/data",
                                 password_file_include=f"{SECRET_DIR}/{SECRETS_CONF_KEY}")
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
        self.backup: k8s.batch.v1.CronJob | None = self._backup(s, ns, args) if s.redis.backup else None
        b = s.redis.backup
        self.backup_location = None if b is None else {
            "cronjob": BACKUP, "schedule": b.schedule, "endpoint": b.endpoint,
            "objects": f"s3://{b.bucket}/{'/'.join(p for p in (b.prefix.strip('/'), s.site.name) if p)}/"}
        self.register_outputs({"service": self.service_name, "url": self.url, "secret": self.secret_name,
                               "replication_endpoint": REPLICATION_SERVICE if self.replication_service else None,
                               "backup": BACKUP if self.backup else None})

    def _backup(self, s: StackSettings, ns: pulumi.Input[str], args: RedisArgs) -> k8s.batch.v1.CronJob:
        """The scheduled snapshot to object storage (README: disaster recovery, backups and restore)."""
        b = s.redis.backup
        assert b is not None
        if args.backup_image is None or args.backup_access_key_id is None or args.backup_secret_access_key is None:
            raise ValueError("redis.backup needs the backup image and qwen-serving:backupAccessKeyId/"
                             "backupSecretAccessKey (the settings check the keys before any resource)")
        # boto3 reads a shared-credentials file (AWS_SHARED_CREDENTIALS_FILE): the keys never enter the env.
        credentials: pulumi.Input[str] = pulumi.Output.format(
            "[default]\naws_access_key_id = {0}\naws_secret_access_key = {1}\n",
            args.backup_access_key_id, args.backup_secret_access_key)
        secret = k8s.core.v1.Secret(
            f"{BACKUP}-secret",
            metadata=kube.metadata(s, BACKUP, "backup", namespace=ns),
            type="Opaque",
            string_data={"credentials": pulumi.Output.secret(credentials)},
            opts=self.child,
        )
        command = ["snapshot", "--redis-url", self.url, "--password-file", PASSWORD_FILE,
                   "--endpoint", b.endpoint, "--bucket", b.bucket, "--prefix", b.prefix, "--site", s.site.name,
                   "--region", b.region, "--retention-days", str(b.retention_days)]
        # The RDB is written to /tmp before upload: an RDB is smaller than the data set, bounded by maxmemory.
        scratch = memory_limit(s.redis.maxmemory)
        storage, storage_env = kube.object_storage_credentials(BACKUP)
        container = k8s.core.v1.ContainerArgs(
            name="backup",
            image=args.backup_image,
            args=command,
            env=[storage_env, k8s.core.v1.EnvVarArgs(name="TMPDIR", value="/tmp")],
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(name="redis-password", mount_path=SECRET_DIR, read_only=True),
                storage.mount,
                k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
            ],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "50m", "memory": "128Mi"}, limits={"cpu": "500m", "memory": "256Mi"}),
            security_context=kube.restricted_container(),
        )
        volumes = [
            k8s.core.v1.VolumeArgs(name="redis-password", secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=self.secret_name, default_mode=kube.SECRET_FILE_MODE,
                items=[k8s.core.v1.KeyToPathArgs(key=self.password_key, path="password")])),
            storage.volume,
            k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=scratch)),
        ]
        template = kube.pod_template(s, BACKUP, "backup", uid=BACKUP_UID, fs_group=BACKUP_UID,
                                     containers=[container], grace_seconds=30, volumes=volumes,
                                     restart_policy="Never")
        return k8s.batch.v1.CronJob(
            BACKUP,
            metadata=kube.metadata(s, BACKUP, "backup", namespace=ns),
            spec=k8s.batch.v1.CronJobSpecArgs(
                schedule=b.schedule,
                time_zone="Etc/UTC",
                concurrency_policy="Forbid",  # never two snapshots at once (each forks Redis)
                starting_deadline_seconds=600,
                successful_jobs_history_limit=3,
                failed_jobs_history_limit=3,
                job_template=k8s.batch.v1.JobTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=kube.labels(s, BACKUP, "backup")),
                    spec=k8s.batch.v1.JobSpecArgs(
                        backoff_limit=2,
                        active_deadline_seconds=3600,
                        template=template,
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.secret, secret, self.stateful_set]),
        )

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

    def _stateful_set(
        self, s: StackSettings, ns: pulumi.Input[str], conf: str, opts: pulumi.ResourceOptions
    ) -> k8s.apps.v1.StatefulSet:
        ping = ["sh", "-c", f"{CLI_AUTH} redis-cli -h 127.0.0.1 -p {REDIS_PORT} ping | grep -q PONG"]
        rep = s.redis.replication
        # The password and the replication user come from the included secrets file (redis.conf's `include`).
        args = [f"{CONF_DIR}/redis.conf"]
        ports = [k8s.core.v1.ContainerPortArgs(name="redis", container_port=REDIS_PORT)]
        secret_mount = k8s.core.v1.VolumeMountArgs(name="secrets", mount_path=SECRET_DIR, read_only=True)
        mounts = [
            k8s.core.v1.VolumeMountArgs(name="data", mount_path="/data"),
            k8s.core.v1.VolumeMountArgs(name="config", mount_path=CONF_DIR, read_only=True),
            secret_mount,
        ]
        volumes = [
            k8s.core.v1.VolumeArgs(
                name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name="redis-config")),
            k8s.core.v1.VolumeArgs(name="secrets", secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=self.secret_name, default_mode=kube.SECRET_FILE_MODE,
                items=[k8s.core.v1.KeyToPathArgs(key=k, path=k)
                       for k in (self.password_key, SECRETS_CONF_KEY, EXPORTER_PASSWORDS_KEY)])),
        ]
        if rep is not None:
            ports.append(k8s.core.v1.ContainerPortArgs(name="redis-tls", container_port=rep.port))
            mounts.append(k8s.core.v1.VolumeMountArgs(name="replication-tls", mount_path=REPLICATION_TLS_DIR,
                                                      read_only=True))
            volumes.append(k8s.core.v1.VolumeArgs(name="replication-tls", secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=rep.tls_secret_name, default_mode=kube.SECRET_FILE_MODE)))
        server = k8s.core.v1.ContainerArgs(
            name="redis",
            image=s.images.redis,
            command=["redis-server"],
            args=args,
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
            args=[f"--redis.password-file={SECRET_DIR}/{EXPORTER_PASSWORDS_KEY}"],
            env=[k8s.core.v1.EnvVarArgs(name="REDIS_ADDR", value=f"redis://127.0.0.1:{REDIS_PORT}")],
            volume_mounts=[secret_mount],
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
