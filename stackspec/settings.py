"""Typed stack settings: parsed once from the stack config, validated before any resource exists.

Every key lives under the project namespace (`qwen-serving:<section>`); each section is an object in
the stack file, written in camelCase like the rest of Pulumi. Errors name the full key
(`qwen-serving:inference.replicas`) and say how to fix it; parsing collects every problem it can find
(field errors, then cross-tier checks, the gateway's own checks and the required secrets) in one error.

The `gateway` section is the gateway's own `GatewayTuning` (app/gateway/settings.py) plus the Deployment's
fields; `StackSettings.gateway_runtime()` builds the gateway's `GatewaySettings` from the whole stack, and
that instance is what the gateway's environment is rendered from (stackspec/render/gateway_env.py).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel

from app.gateway.settings import IN_FLIGHT_PER_CORE, GatewaySettingsProblems, GatewayTuning, process_count
from app.gateway.settings import GatewaySettings as GatewayRuntime
from stackspec.capacity import QWEN25_7B, Capacity, ModelShape, replica_capacity
from stackspec.versions import VLLM_IMAGE, vllm_image_problem

PROJECT = "qwen-serving"

# Section key in the stack file -> attribute of StackSettings.
SECTIONS: dict[str, str] = {
    "site": "site",
    "kubernetes": "kubernetes",
    "gpuPool": "gpu_pool",
    "model": "model",
    "inference": "inference",
    "gateway": "gateway",
    "edge": "edge",
    "redis": "redis",
    "images": "images",
    "monitoring": "monitoring",
    "policies": "policies",
}

# Secret keys: set with `pulumi config set --secret qwen-serving:<key> ...`.
SECRET_KEYS: dict[str, str] = {
    "apiKeyHashes": "JSON object {sha256-hex-of-key: key name}; the gateway never sees plain keys",
    "alertmanagerWebhookUrl": "the webhook URL Alertmanager pages to",
    "alertmanagerSmtpPassword": "the SMTP password for e-mail alerts",
    "logSinkPassword": "the password of the log sink (Elasticsearch or Loki)",
    "grafanaAdminPassword": "Grafana's admin password (kube-prometheus-stack)",
    "redisPassword": "the Redis password; a standby site must use its primary's (generated per site when unset)",
    "redisReplicationPassword": "the cross-site replication user's password (redis.replication.user); the same on "
                                "both sites",
    "backupAccessKeyId": "the object storage access key of the backup Job (redis.backup)",
    "backupSecretAccessKey": "the object storage secret key of the backup Job (redis.backup)",
}

DIGEST_RE = re.compile(r"^[\w.\-/:]+@sha256:[0-9a-f]{64}$")
NAME_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Sizes and durations are typed at parse time, in the syntax of the program that reads them.
KubeQuantity = Annotated[str, Field(pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")]  # 10Gi, 500m
RedisSize = Annotated[str, Field(pattern=r"^\d+([kKmMgG][bB]?)?$")]  # redis.conf: 64mb, 1gb
NginxSize = Annotated[str, Field(pattern=r"^\d+[kKmMgG]?$")]  # nginx: 1m, 512k
CpuQuantity = Annotated[str, Field(pattern=r"^\d+(\.\d+)?m?$")]  # 500m, 2: what cpu_cores() reads
Duration = Annotated[str, Field(pattern=r"^\d+(ms|s|m|h|d|w|y)$")]  # Prometheus/Alertmanager: 30s, 4h

_NGINX_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_REDIS_UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def nginx_size_bytes(size: str) -> int:
    """nginx's size syntax (1m = 1 MiB) in bytes."""
    match = re.fullmatch(r"(\d+)([kmg]?)", size.lower())
    if not match:
        raise ValueError(f"{size!r} is not an nginx size (e.g. 1m, 512k)")
    return int(match.group(1)) * _NGINX_UNITS[match.group(2)]


def redis_size_bytes(size: str) -> int:
    """redis.conf's size syntax (1gb = 1 GiB, 1g = 10^9) in bytes."""
    match = re.fullmatch(r"(\d+)([kmg]b?)?", size.lower())
    if not match:
        raise ValueError(f"{size!r} is not a redis size (e.g. 64mb, 1gb)")
    return int(match.group(1)) * _REDIS_UNITS[match.group(2) or ""]


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores: "500m" = 0.5, "2" = 2."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", quantity)
    if not match:
        raise ValueError(f"{quantity!r} is not a CPU quantity (e.g. 500m, 2)")
    return float(match.group(1)) / (1000 if match.group(2) else 1)


class SettingsError(ValueError):
    """Invalid stack settings. `problems` is a list of (key, message-with-fix)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"  {key}: {message}" for key, message in problems]
        super().__init__("invalid stack settings:\n" + "\n".join(lines))


class _Section(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SiteSettings(_Section):
    name: str = Field(pattern=NAME_RE, max_length=40)
    region: str = Field(min_length=1)
    role: Literal["dev", "staging", "primary", "standby"]

    @property
    def prod_like(self) -> bool:
        return self.role in ("primary", "standby")


class KubernetesSettings(_Section):
    version: str = Field(default="1.33.0", pattern=r"^\d+\.\d+\.\d+$")
    namespace: str = Field(default="qwen-serving", pattern=NAME_RE, max_length=63)
    context: str | None = None

    @property
    def gpu_system_namespace(self) -> str:
        """The NVIDIA device plugin's and DCGM exporter's namespace (host paths and privileges: not the app's)."""
        return f"{self.namespace}-gpu"


class GpuHost(_Section):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    gpus: int = Field(ge=1, le=16)


class GpuPoolSettings(_Section):
    gpu_model: str = "rtx-4090d"
    gpu_memory_gb: float = Field(default=24.0, gt=0)
    hosts: list[GpuHost] = Field(min_length=1)
    node_label: str = "qwen-serving.io/gpu-pool"
    taint_key: str = "nvidia.com/gpu"
    device_plugin_chart_version: str = "0.17.4"
    dcgm_exporter_chart_version: str = "4.1.1"
    # The NVIDIA driver every GPU host must run at least (`make verify` checks it): the vLLM image's CUDA 12.8
    # needs the R570 branch.
    driver_min_version: str = Field(default="570.26", pattern=r"^\d+(\.\d+)*$")

    @property
    def total_gpus(self) -> int:
        return sum(h.gpus for h in self.hosts)

    @property
    def max_gpus_per_host(self) -> int:
        return max(h.gpus for h in self.hosts)


class RopeScaling(_Section):
    rope_type: Literal["yarn"] = "yarn"
    factor: float = Field(gt=1)
    original_max_position_embeddings: int = Field(gt=0)


class ModelSettings(_Section):
    name: str = "Qwen/Qwen2.5-7B-Instruct"
    served_name: str = Field(default="qwen2.5-7b-instruct", pattern=r"^[A-Za-z0-9._\-/]+$")
    revision: str | None = None
    quantization: Literal["awq", "gptq", "fp8"] | None = None
    rope_scaling: RopeScaling | None = None

    @property
    def shape(self) -> ModelShape:
        return QWEN25_7B


class ModelCache(_Section):
    kind: Literal["hostPath", "pvc"] = "hostPath"
    host_path: str = "/mnt/nvme/models"
    pvc_size: KubeQuantity = "100Gi"
    storage_class: str | None = None
    min_free_gb: float = Field(default=20.0, ge=0)  # free space the cache must keep (`make verify`, GPU hosts)


class ToolCalling(_Section):
    """OpenAI `tools` / `tool_choice`: vLLM parses the model's tool calls out of its text. Qwen2.5's own chat
    template carries the Hermes format, so `hermes` (no custom template). Off, vLLM answers any named or
    `required` tool_choice with 400 ("requires --tool-call-parser")."""

    enabled: bool = True
    parser: Literal["hermes"] = "hermes"  # the one this model family uses; widen with a model that needs another
    # vLLM's --tool-strict-level: `auto` constrains the call envelope for named/`required` choices and a tool's
    # arguments only where it says `strict: true` (OpenAI's semantics); `parameter` pins every tool's arguments.
    strict_level: Literal["auto", "function", "parameter"] = "auto"


class StructuredOutputs(_Section):
    """Guided decoding (`response_format` json_object / json_schema, named and `required` tool_choice)."""

    backend: Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"] = "xgrammar"
    # Compact JSON only: without it a guided answer may spend its max_tokens on whitespace between tokens
    # (measured on the CPU build: `\r\t\n` padding). Supported by the xgrammar and guidance backends only.
    disable_any_whitespace: bool = True

    @model_validator(mode="after")
    def _whitespace_needs_a_backend_that_does_it(self) -> StructuredOutputs:
        if self.disable_any_whitespace and self.backend not in ("xgrammar", "guidance"):
            raise ValueError(f"disableAnyWhitespace works with the xgrammar or guidance backend only, not "
                             f"{self.backend!r}; set backend: xgrammar or disableAnyWhitespace: false")
        return self

    def vllm_config(self) -> dict[str, object]:
        """vLLM's `--structured-outputs-config` (its StructuredOutputsConfig field names)."""
        return {"backend": self.backend, "disable_any_whitespace": self.disable_any_whitespace}


class InferenceSettings(_Section):
    replicas: int = Field(default=1, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int = Field(default=8192, ge=256)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.1, le=0.98)
    reserve_gb_per_gpu: float = Field(default=1.0, ge=0)
    max_num_seqs: int = Field(default=64, ge=1)
    enable_prefix_caching: bool = True
    dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    port: int = Field(default=8000, ge=1024, le=65535)
    shm_size: KubeQuantity = "8Gi"
    startup_budget_seconds: int = Field(default=600, ge=60)
    termination_grace_seconds: int = Field(default=120, ge=10)
    cache: ModelCache = ModelCache()
    tool_calling: ToolCalling = ToolCalling()
    structured_outputs: StructuredOutputs = StructuredOutputs()
    cpu_request: KubeQuantity = "4"
    memory_request: KubeQuantity = "32Gi"


# A terminating gateway pod keeps serving this long while it leaves the Service's endpoints (its preStop),
# and gets this long after its grace to exit before the kubelet kills it (infra/components/gateway.py).
GATEWAY_PRE_STOP_SECONDS = 10
GATEWAY_EXIT_MARGIN_SECONDS = 10


class GatewaySection(GatewayTuning):
    """The stack's `gateway` section: the gateway's own tunables (GatewayTuning: the same names, camelCase,
    the same bounds, one definition) plus what the Deployment and its autoscaler need."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    replicas: int = Field(default=2, ge=1)
    max_replicas: int = Field(default=6, ge=1)
    target_cpu_percent: int = Field(default=70, ge=10, le=100)
    cpu_request: CpuQuantity = "500m"
    memory_request: KubeQuantity = "512Mi"

    def tuning(self) -> dict[str, Any]:
        """The GatewayTuning fields, by the gateway's field names (the shutdown grace as derived)."""
        values = {name: getattr(self, name) for name in GatewayTuning.model_fields}
        return values | {"shutdown_grace_seconds": self.shutdown_grace}

    @property
    def shutdown_grace(self) -> float:
        """How long in-flight requests may run after SIGTERM's drain: `shutdownGraceSeconds` when the stack
        sets it, else `totalTimeout` (the longest a request may take, so a rollout cuts none). A request
        still unanswered when it ends gets a 503 with Retry-After (app/gateway/drain.py)."""
        if "shutdown_grace_seconds" in self.model_fields_set:
            return self.shutdown_grace_seconds
        return self.total_timeout

    @property
    def termination_grace_seconds(self) -> int:
        """The pod's terminationGracePeriodSeconds: the preStop pause, the drain, the grace, then a margin
        for the process to exit before the kubelet's SIGKILL."""
        return GATEWAY_PRE_STOP_SECONDS + math.ceil(self.shutdown_drain_seconds + self.shutdown_grace) + \
            GATEWAY_EXIT_MARGIN_SECONDS

    def describe_shutdown(self) -> str:
        """The shutdown budget, as `make plan` states it."""
        grace = (f"{self.shutdown_grace:g} s (gateway.shutdownGraceSeconds)"
                 if "shutdown_grace_seconds" in self.model_fields_set
                 else f"{self.shutdown_grace:g} s (= gateway.totalTimeout)")
        return (f"gateway shutdown: preStop {GATEWAY_PRE_STOP_SECONDS} s + drain {self.shutdown_drain_seconds:g} s "
                f"+ grace {grace} + {GATEWAY_EXIT_MARGIN_SECONDS} s = terminationGracePeriodSeconds "
                f"{self.termination_grace_seconds}; a request unanswered at the grace's end gets a 503 "
                "(Retry-After)")


class Tls(_Section):
    enabled: bool = False
    secret_name: str = "qwen-serving-tls"


class SsoSettings(_Section):
    """The chat page's single sign-on: an OIDC public client (authorization code + PKCE, no secret). The
    issuer and the audience are the gateway's (gateway.oidcIssuer / oidcAudience), so the page signs in where
    the gateway verifies. Register `https://<edge.hostname>/` as the client's redirect URI at the provider."""
    client_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/-]+$")
    scopes: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:/-]+$")], ...] = ("openid", "profile", "email")


class EdgeSettings(_Section):
    hostname: str = Field(default="localhost", min_length=1)
    replicas: int = Field(default=2, ge=1)
    service_type: Literal["LoadBalancer", "NodePort"] = "NodePort"
    node_port: int | None = Field(default=None, ge=30000, le=32767)
    load_balancer_ip: str | None = None
    tls: Tls = Tls()
    # Single sign-on on the chat page (README: single sign-on); unset = API keys only.
    sso: SsoSettings | None = None
    # One limit for the edge and the gateway: nginx's client_max_body_size and the gateway's max_body_bytes.
    client_max_body_size: NginxSize = "1m"
    # Nginx's read/send timeouts towards the gateway; unset = the gateway's totalTimeout + 30 s. It must
    # exceed the gateway's total timeout, or Nginx cuts a stream before the gateway's own error event.
    proxy_read_timeout_seconds: int | None = Field(default=None, ge=30)
    # Per client address, on the API (/v1/): Nginx's limit_req (rate, burst) and limit_conn. A first line
    # against floods before any request reaches a gateway; the per-identity limits stay the gateway's.
    rate_limit_per_second: int = Field(default=20, ge=1)
    rate_limit_burst: int = Field(default=40, ge=0)
    # (nginx refuses a limit_conn above 65535 at start: the edge would not come up)
    connections_per_client: int = Field(default=64, ge=1, le=65535)

    @property
    def client_max_body_bytes(self) -> int:
        return nginx_size_bytes(self.client_max_body_size)


def _peer_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        raise ValueError(f"{value!r} is not a CIDR ({err}); write e.g. 198.51.100.0/28") from None
    if net.prefixlen == 0:
        raise ValueError(f"{value!r} admits everyone; list only the peer site's egress CIDRs")
    return str(net)


PeerCidr = Annotated[str, AfterValidator(_peer_cidr)]


class RedisReplication(_Section):
    """The cross-site replication link (README: disaster recovery). Both sites of a DR pair carry it: while a
    site is primary it exposes a TLS-only endpoint that admits `peerCidrs` alone (a LoadBalancer Service with
    loadBalancerSourceRanges and a NetworkPolicy ipBlock); while it is a standby its Redis follows the peer's
    endpoint (`redis.replicaOf`) over TLS as `user`, a replication-only ACL user."""

    peer_cidrs: list[PeerCidr] = Field(min_length=1)  # the PEER site's egress CIDRs
    port: int = Field(default=6380, ge=1024, le=65535)  # Redis tls-port; the endpoint's port
    load_balancer_ip: str | None = None  # the endpoint's address (the peer's replicaOf points at it)
    tls_secret_name: str = Field(default="redis-replication-tls", pattern=NAME_RE)  # tls.crt, tls.key, ca.crt
    user: str = Field(default="replicator", pattern=r"^[a-z][a-z0-9_-]{2,31}$")
    lag_alert_seconds: int = Field(default=30, ge=1)  # alert when the replica is this far behind
    # RPO ~ 0: each session write waits for one replica's acknowledgement (WAIT 1 <ms>); None = asynchronous.
    wait_for_replica_ms: int | None = Field(default=None, ge=1, le=10_000)


# A fixed start, so a schedule's longest gap (and so the rules rendered from it) is the same on every run.
_CRON_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_CRON_HORIZON_SECONDS = 366 * 86400  # a year of runs: every month length and weekday seen
_CRON_MAX_RUNS = 10_000  # a frequent schedule repeats long before a year: its pattern is seen by then


def _cron_schedule(value: str) -> str:
    try:
        CronSim(value, _CRON_EPOCH)
    except CronSimError as err:
        raise ValueError(f"{value!r} is not a 5-field cron schedule ({err}); write e.g. '17 */6 * * *'") from None
    return value


@functools.cache
def cron_longest_gap_seconds(schedule: str) -> int:
    """The longest time between two consecutive runs of a cron schedule (UTC), over a year of runs."""
    runs = CronSim(schedule, _CRON_EPOCH)
    previous, longest = next(runs), 0
    for count, run in enumerate(runs):
        longest = max(longest, int((run - previous).total_seconds()))
        previous = run
        if count >= _CRON_MAX_RUNS or (run - _CRON_EPOCH).total_seconds() > _CRON_HORIZON_SECONDS:
            break
    return longest


BACKUP_CRONJOB = "redis-backup"  # the Redis tier's CronJob (infra/components/redis.py); the backup alerts watch it
# The model manifest's CronJob (infra/components/model_manifest.py): the one pod without GPUs that the policy
# pack lets onto a GPU host (gpu-hosts-run-only-gpu-pods), to read the model cache there, read-only.
MODEL_MANIFEST_CRONJOB = "model-manifest"


class RedisBackup(_Section):
    """Scheduled Redis snapshots and the model manifest to S3-compatible storage; the keys are secret config
    (backupAccessKeyId, backupSecretAccessKey)."""

    endpoint: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
    prefix: str = Field(default="qwen-serving", pattern=r"^[A-Za-z0-9._\-/]*$")
    region: str = "us-east-1"
    schedule: Annotated[str, AfterValidator(_cron_schedule)] = Field(
        default="17 */6 * * *", pattern=r"^(\S+\s+){4}\S+$")  # cron, 5 fields, UTC
    retention_days: int = Field(default=14, ge=1)

    @property
    def longest_gap_seconds(self) -> int:
        """The schedule's longest interval between runs: what "2x the schedule" in the backup alert means."""
        return cron_longest_gap_seconds(self.schedule)


class RedisSettings(_Section):
    storage_size: KubeQuantity = "10Gi"
    storage_class: str | None = None
    maxmemory: RedisSize = "1gb"
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    replica_of: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.\-]+:\d{1,5}$")  # standby: primary's host:port
    replication: RedisReplication | None = None
    backup: RedisBackup | None = None

    @property
    def replica_of_port(self) -> int | None:
        return int(self.replica_of.rpartition(":")[2]) if self.replica_of else None

    @property
    def maxmemory_bytes(self) -> int:
        return redis_size_bytes(self.maxmemory)


class ImageSettings(_Section):
    registry: str = Field(default="registry.local:5000/qwen-serving", min_length=1)
    vllm: str = VLLM_IMAGE  # the tag must be the pinned version (stackspec/versions.py)
    python_base: str = "python:3.11-slim"
    nginx_base: str = "nginx:1.27-alpine"
    # Used as they are (not built): the Redis server and the two metrics sidecars.
    redis: str = "redis:7.4-alpine"
    redis_exporter: str = "oliver006/redis_exporter:v1.74.0"
    nginx_exporter: str = "nginx/nginx-prometheus-exporter:1.4.2"
    log_setup: str = "curlimages/curl:8.11.1"  # the Job that installs the log retention policy (Elasticsearch)
    push: bool = False


class EmailReceiver(_Section):
    """Non-secret parts of the e-mail receiver; the SMTP password is secret config."""

    to: list[str] = Field(min_length=1)
    sender: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    smarthost: str = Field(pattern=r"^[^:\s]+:\d+$")  # host:port
    username: str | None = None
    require_tls: bool = True


class AlertingSettings(_Section):
    """Alert thresholds and Alertmanager routing; the webhook URL is secret config."""

    availability_target: float = Field(default=0.999, gt=0.9, lt=1)
    ttft_p95_seconds: float = Field(default=1.5, gt=0)
    kv_cache_usage_ratio: float = Field(default=0.9, gt=0, le=1)
    gpu_utilization_percent: float = Field(default=90, gt=0, le=100)
    waiting_requests: int = Field(default=10, ge=1)
    request_rate_increase_percent: float = Field(default=200, gt=0)
    min_baseline_rps: float = Field(default=0.5, ge=0)  # below this an hour ago, a jump is not a surge
    health_check_failures: int = Field(default=3, ge=1)
    # Share of API requests the gateways refuse as overloaded (503) for 10 minutes: autoscaling is not keeping up.
    overload_shed_percent: float = Field(default=1, gt=0, le=100)
    webhook: bool = True
    email: EmailReceiver | None = None
    group_wait: Duration = "30s"
    group_interval: Duration = "5m"
    repeat_interval: Duration = "4h"


class LogSettings(_Section):
    """Where Fluent Bit ships container logs; the sink's password is secret config."""

    enabled: bool = True
    sink: Literal["elasticsearch", "loki"] = "elasticsearch"
    host: str = "elasticsearch.logging.svc"
    port: int = Field(default=9200, ge=1, le=65535)
    tls: bool = True
    user: str = "fluent-bit"
    index: str = Field(default="qwen-serving-logs", pattern=NAME_RE)
    retention_days: int = Field(default=30, ge=1)


class AutoscalingSettings(_Section):
    """KEDA scales vLLM on queued requests; maxReplicas is capped by the pool (GPUs / TP)."""

    enabled: bool = True
    waiting_per_replica: int = Field(default=5, ge=1)
    polling_interval_seconds: int = Field(default=15, ge=5)
    cooldown_seconds: int = Field(default=600, ge=60)


class MonitoringSettings(_Section):
    enabled: bool = True
    namespace: str = Field(default="monitoring", pattern=NAME_RE, max_length=63)
    retention: str = Field(default="15d", pattern=r"^\d+[smhdwy]$")
    storage_size: KubeQuantity = "50Gi"
    storage_class: str | None = None
    scrape_interval: str = Field(default="30s", pattern=r"^\d+[smh]$")
    kube_prometheus_stack_chart_version: str = "77.6.2"
    keda_chart_version: str = "2.17.2"
    fluent_bit_chart_version: str = "0.50.0"
    alerting: AlertingSettings = AlertingSettings()
    logs: LogSettings = LogSettings()
    autoscaling: AutoscalingSettings = AutoscalingSettings()


EnforcementLevelName = Literal["advisory", "mandatory", "remediate", "disabled"]


class PolicySettings(_Section):
    """The guard rails' enforcement per stack: policy name -> level (every policy is mandatory otherwise).

    infra/policy_config.py checks the names against the pack and renders `--policy-pack-config` from this.
    """

    enforcement: dict[str, EnforcementLevelName] = Field(default_factory=dict)


class StackSettings(_Section):
    site: SiteSettings
    kubernetes: KubernetesSettings = KubernetesSettings()
    gpu_pool: GpuPoolSettings
    model: ModelSettings = ModelSettings()
    inference: InferenceSettings = InferenceSettings()
    gateway: GatewaySection = GatewaySection()
    edge: EdgeSettings = EdgeSettings()
    redis: RedisSettings = RedisSettings()
    images: ImageSettings = ImageSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    policies: PolicySettings = PolicySettings()
    api_key_hashes: dict[str, str] = Field(default_factory=dict, exclude=True)
    _runtime: GatewayRuntime | None = PrivateAttr(default=None)

    @property
    def capacity(self) -> Capacity:
        return replica_capacity(
            self.model.shape,
            quantization=self.model.quantization or "none",
            gpu_memory_gb=self.gpu_pool.gpu_memory_gb,
            gpu_memory_utilization=self.inference.gpu_memory_utilization,
            tensor_parallel_size=self.inference.tensor_parallel_size,
            max_model_len=self.inference.max_model_len,
            reserve_gb_per_gpu=self.inference.reserve_gb_per_gpu,
        )

    @property
    def hosts_that_fit_a_replica(self) -> int:
        return sum(1 for h in self.gpu_pool.hosts if h.gpus >= self.inference.tensor_parallel_size)

    @property
    def edge_read_timeout_seconds(self) -> int:
        """Nginx's proxy read/send timeout: set, or the gateway's total timeout + 30 s."""
        if self.edge.proxy_read_timeout_seconds is not None:
            return self.edge.proxy_read_timeout_seconds
        return int(self.gateway.total_timeout) + 30

    @property
    def keda_scales_vllm(self) -> bool:
        """KEDA owns vLLM's replica count: autoscaling is on and so is monitoring (KEDA and the Prometheus
        its trigger queries are that tier's). Otherwise `inference.replicas` is the count."""
        return self.monitoring.enabled and self.monitoring.autoscaling.enabled

    @property
    def hpa_scales_gateway(self) -> bool:
        """An HPA on CPU owns the gateway's replica count (between `gateway.replicas` and `maxReplicas`).
        It needs only the cluster's metrics API, not the monitoring tier: monitoring off keeps it."""
        return self.monitoring.autoscaling.enabled

    @property
    def gateway_backends_dns(self) -> str:
        """The headless vLLM Service the gateway resolves in the cluster (infra/components/inference.py)."""
        return f"vllm.{self.kubernetes.namespace}.svc.cluster.local:{self.inference.port}"

    @property
    def gateway_redis_url(self) -> str:
        return "redis://redis:6379/0"  # the Redis tier's Service (infra/components/redis.py)

    def gateway_wiring(
        self, *, backends_dns: str | None, backends: Sequence[str] = (), redis_url: str
    ) -> dict[str, tuple[str, Any]]:
        """The gateway fields that come from the rest of the stack: field -> (the key it comes from, value)."""
        return {
            "backends": (_key("inference"), ",".join(backends)),
            "backends_dns": (_key("inference"), backends_dns or ""),
            "model": (_key("model.servedName"), self.model.served_name),
            "redis_url": (_key("redis"), redis_url),
            "api_key_hashes": (_key("apiKeyHashes"), SecretStr(json.dumps(self.api_key_hashes, sort_keys=True))),
            "max_body_bytes": (_key("edge.clientMaxBodySize"), self.edge.client_max_body_bytes),
            # The most gateways the autoscaler may run: during a Redis outage each enforces its share of the
            # limits locally, and dividing by the fewest would let a scaled-out fleet admit several times rpm.
            "rate_limit_replicas": (_key("gateway.maxReplicas"), self.gateway.max_replicas),
            "session_replica_wait_ms": (_key("redis.replication.waitForReplicaMs"), self.session_replica_wait_ms),
            # What one gateway process may carry at once (unless gateway.maxInFlight says) follows its CPU request.
            "cpu_cores": (_key("gateway.cpuRequest"), cpu_cores(self.gateway.cpu_request)),
            # Processes per pod, resolved (one per core of the request unless gateway.processes says): the
            # Deployment's environment states the number that runs.
            "processes": (_key("gateway.processes"), self.gateway_processes),
            # What the router remembers per backend: the KV cache one replica holds (the capacity model),
            # unless the stack sets gateway.routing.cacheTokens itself.
            "routing": (_key("gateway.routing"), self.gateway.routing.model_copy(update={
                "cache_tokens": self.gateway.routing.cache_tokens or max(self.capacity.kv_tokens, 1)})),
        }

    @property
    def gateway_processes(self) -> int:
        """Gateway processes per pod: `gateway.processes`, or one per core of `gateway.cpuRequest`, rounded up."""
        return process_count(self.gateway.processes, cpu_cores(self.gateway.cpu_request))

    def describe_gateway_processes(self) -> str:
        """What each gateway pod runs and how the limits are shared out, as `make plan` states it."""
        gw, runtime = self.gateway, self.gateway_runtime()
        source = ("gateway.processes" if gw.processes
                  else f"one per core of gateway.cpuRequest {gw.cpu_request}, rounded up")
        pod_bound = (f"gateway.maxInFlight {gw.max_in_flight}" if gw.max_in_flight
                     else f"{IN_FLIGHT_PER_CORE} x {runtime.cpu_cores:g} cores")
        return (f"gateway processes per pod: {runtime.process_count} ({source}); each admits "
                f"{runtime.in_flight_limit} generation requests in flight (the pod's {pod_bound}, shared out); "
                f"with Redis unavailable each enforces 1/{runtime.local_limit_divisor} of the rate limits "
                f"(gateway.maxReplicas {gw.max_replicas} x {runtime.process_count} processes)")

    @property
    def session_replica_wait_ms(self) -> int:
        rep = self.redis.replication
        return (rep.wait_for_replica_ms or 0) if rep else 0

    @property
    def replication_endpoint(self) -> bool:
        """This site exposes the cross-site replication endpoint: a primary with a peer."""
        return self.site.role == "primary" and self.redis.replication is not None

    def gateway_runtime(
        self, *, backends_dns: str | None = None, backends: Sequence[str] = (), redis_url: str | None = None
    ) -> GatewayRuntime:
        """The gateway's own settings for this stack (defaults: the cluster's wiring). Raises SettingsError
        naming the stack keys when the gateway would refuse them."""
        if backends_dns is None and not backends:
            if self._runtime is not None and redis_url is None:
                return self._runtime
            backends_dns = self.gateway_backends_dns
        runtime, problems = build_gateway_runtime(
            self, backends_dns=backends_dns, backends=backends, redis_url=redis_url or self.gateway_redis_url)
        if runtime is None:
            raise SettingsError(problems)
        return runtime

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> StackSettings:
        if info.context and info.context.get("defer_checks"):
            return self  # parse_settings runs them itself, together with the secrets
        problems = cross_field_problems(self)
        if problems:
            raise SettingsError(problems)
        return self


def _gateway_key(field: str, wiring: Mapping[str, tuple[str, Any]]) -> str:
    if field in wiring:
        return wiring[field][0]
    if field in GatewaySection.model_fields:
        return _key(f"gateway.{to_camel(field)}")
    return _key("gateway")


def build_gateway_runtime(
    s: StackSettings, *, backends_dns: str | None, backends: Sequence[str], redis_url: str
) -> tuple[GatewayRuntime | None, list[tuple[str, str]]]:
    """Build the gateway's GatewaySettings from the stack; every value is given, so nothing is read from
    this process's environment. Returns the instance, or None and the problems by stack key."""
    wiring = s.gateway_wiring(backends_dns=backends_dns, backends=backends, redis_url=redis_url)
    values = {name: field.get_default(call_default_factory=True) for name, field in GatewayRuntime.model_fields.items()}
    values |= s.gateway.tuning() | {name: value for name, (_, value) in wiring.items()}
    try:
        return GatewayRuntime(**values), []
    except ValidationError as err:
        problems: list[tuple[str, str]] = []
        for e in err.errors():
            nested = e.get("ctx", {}).get("error")
            if isinstance(nested, GatewaySettingsProblems):
                for fields, message in nested.problems:
                    keys = list(dict.fromkeys(_gateway_key(f, wiring) for f in fields))
                    hint = _API_KEYS_HINT if "api_key_hashes" in fields else ""
                    problems.append((" / ".join(keys), f"the gateway would refuse to start: {message}{hint}"))
            else:
                field = str(e["loc"][0]) if e["loc"] else ""
                problems.append((_gateway_key(field, wiring), f"{e['msg']} (got {e.get('input')!r})"))
        return None, problems


_API_KEYS_HINT = (
    f" (in the stack: `pulumi config set --secret {PROJECT}:apiKeyHashes '{{\"<sha256 of key>\": \"<name>\"}}'`, "
    "or gateway.oidcIssuer/oidcAudience/oidcJwksUrl)"
)


def required_secrets(s: StackSettings) -> dict[str, str]:
    """Secret config this stack needs, by what it enables: key -> how to set it or do without it."""
    mon = s.monitoring
    needed: dict[str, str] = {}
    if mon.enabled:
        needed["grafanaAdminPassword"] = ""
        if mon.alerting.webhook:
            needed["alertmanagerWebhookUrl"] = ", or set monitoring.alerting.webhook to false"
        if mon.alerting.email is not None:
            needed["alertmanagerSmtpPassword"] = ", or remove monitoring.alerting.email"
        if mon.logs.enabled:
            needed["logSinkPassword"] = ", or set monitoring.logs.enabled to false"
    if s.redis.replication is not None:
        needed["redisReplicationPassword"] = " (the same on both sites; see the README's DR section)"
    if s.redis.backup is not None:
        needed["backupAccessKeyId"] = ", or remove redis.backup"
        needed["backupSecretAccessKey"] = ", or remove redis.backup"
    if s.site.role == "standby":
        needed["redisPassword"] = (" (the primary's: a standby's Redis replicates with it; see the README's DR "
                                   "section)")
    return needed


def secret_problems(s: StackSettings, present: set[str]) -> list[tuple[str, str]]:
    return [
        (_key(key), f"is not set: `pulumi config set --secret {_key(key)} ...`{fix}")
        for key, fix in required_secrets(s).items() if key not in present
    ]


def _replica_slots(s: StackSettings) -> int:
    return sum(h.gpus // s.inference.tensor_parallel_size for h in s.gpu_pool.hosts)


def _key(path: str) -> str:
    return f"{PROJECT}:{path}"


def _sso_problems(s: StackSettings) -> list[tuple[str, str]]:
    """The page signs in at the gateway's issuer: SSO without the gateway's OIDC is a page that can sign in but
    whose tokens every request would be refused with."""
    sso, gw = s.edge.sso, s.gateway
    if sso is None:
        return []
    problems: list[tuple[str, str]] = []
    if not gw.oidc_issuer:
        problems.append((_key("gateway.oidcIssuer"), f"{_key('edge.sso.clientId')} is set, but the gateway verifies "
                         "no OIDC tokens: set gateway.oidcIssuer/oidcAudience/oidcJwksUrl to the provider the page "
                         "signs in with, or remove edge.sso"))
    elif not re.fullmatch(r"https://[A-Za-z0-9.\-]+(:\d{1,5})?(/[A-Za-z0-9._~/\-]*)?", gw.oidc_issuer) and not \
            re.fullmatch(r"http://(127\.0\.0\.1|localhost)(:\d{1,5})?(/[A-Za-z0-9._~/\-]*)?", gw.oidc_issuer):
        problems.append((_key("gateway.oidcIssuer"), f"{gw.oidc_issuer!r}: the page's sign-in needs an https:// issuer "
                         "URL (http only on 127.0.0.1/localhost), without query, quotes or spaces; fix the value"))
    if "openid" not in sso.scopes:
        problems.append((_key("edge.sso.scopes"), "must include 'openid' (the page signs in with OpenID Connect)"))
    return problems


def cross_field_problems(s: StackSettings) -> list[tuple[str, str]]:
    """Rules that span sections. Each problem names the key to change and how."""
    problems: list[tuple[str, str]] = []
    inf, pool = s.inference, s.gpu_pool
    tp, replicas = inf.tensor_parallel_size, inf.replicas

    if replicas * tp > pool.total_gpus:
        problems.append((
            _key("inference.replicas") + " / " + _key("inference.tensorParallelSize"),
            f"{replicas} replicas x TP {tp} need {replicas * tp} GPUs but "
            f"{_key('gpuPool.hosts')} has {pool.total_gpus}; lower replicas or TP, or add hosts",
        ))
    if tp > pool.max_gpus_per_host:
        problems.append((
            _key("inference.tensorParallelSize"),
            f"TP {tp} exceeds the largest host ({pool.max_gpus_per_host} GPUs); tensor parallelism "
            "never spans hosts: lower it or add a host with more GPUs",
        ))
    elif replicas * tp <= pool.total_gpus and replicas > _replica_slots(s):
        problems.append((
            _key("inference.replicas"),
            f"the hosts have room for {_replica_slots(s)} TP-{tp} replicas (TP never spans hosts), "
            f"not {replicas}; lower replicas or add hosts",
        ))

    native = s.model.shape.native_max_positions
    rope = s.model.rope_scaling
    if inf.max_model_len > native:
        if rope is None:
            problems.append((
                _key("model.ropeScaling"),
                f"{_key('inference.maxModelLen')} {inf.max_model_len} exceeds the model's native "
                f"{native} positions: set ropeScaling {{ropeType: yarn, factor: "
                f"{-(-inf.max_model_len // native)}, originalMaxPositionEmbeddings: {native}}} "
                f"or lower maxModelLen to {native}",
            ))
        elif rope.factor * rope.original_max_position_embeddings < inf.max_model_len:
            problems.append((
                _key("model.ropeScaling.factor"),
                f"factor {rope.factor} x {rope.original_max_position_embeddings} positions < "
                f"maxModelLen {inf.max_model_len}; raise the factor",
            ))

    cap = s.capacity
    if not cap.fits:
        problems.append((
            _key("inference.maxModelLen"),
            f"the model does not fit one replica: {cap.describe()}; lower maxModelLen, raise "
            "tensorParallelSize or gpuMemoryUtilization, or set model.quantization (awq/gptq)",
        ))

    if s.gateway.max_replicas < s.gateway.replicas:
        problems.append((
            _key("gateway.maxReplicas"),
            f"{s.gateway.max_replicas} is below gateway.replicas {s.gateway.replicas}; raise it",
        ))
    # The gateway's own checks (auth with no keys, sha256 keys, timeouts, OIDC, body limit), on the instance
    # the cluster would run: written once, in app/gateway/settings.py.
    runtime, gateway_problems = build_gateway_runtime(
        s, backends_dns=s.gateway_backends_dns, backends=(), redis_url=s.gateway_redis_url)
    problems.extend(gateway_problems)
    if runtime is not None:
        s._runtime = runtime
    if s.gateway.history_token_budget >= inf.max_model_len:
        problems.append((
            _key("gateway.historyTokenBudget"),
            f"{s.gateway.history_token_budget} leaves no room for the answer in "
            f"{_key('inference.maxModelLen')} {inf.max_model_len}; lower it",
        ))
    vllm_problem = vllm_image_problem(s.images.vllm)
    if vllm_problem:
        problems.append((_key("images.vllm"), vllm_problem))
    read_timeout = s.edge.proxy_read_timeout_seconds
    if read_timeout is not None and read_timeout <= s.gateway.total_timeout:
        problems.append((
            _key("edge.proxyReadTimeoutSeconds"),
            f"{read_timeout} s does not exceed {_key('gateway.totalTimeout')} {s.gateway.total_timeout:g} s: Nginx "
            "would cut a stream before the gateway ends it with its error event; raise it (or remove it: the "
            "default is totalTimeout + 30)",
        ))
    problems.extend(_sso_problems(s))
    if s.edge.service_type == "LoadBalancer" and s.edge.node_port is not None:
        problems.append((_key("edge.nodePort"), "only for serviceType NodePort; remove it"))

    if s.site.prod_like:
        problems.extend(_prod_problems(s))
    elif s.redis.replica_of and s.site.role != "standby":
        problems.append((_key("redis.replicaOf"), "only a standby site replicates Redis; remove it"))
    if s.redis.replication is not None and not s.site.prod_like:
        problems.append((_key("redis.replication"), "only the sites of a DR pair (role primary or standby) "
                         "replicate across sites; remove it"))
    return problems


def _prod_problems(s: StackSettings) -> list[tuple[str, str]]:
    role = s.site.role
    problems: list[tuple[str, str]] = []
    if not s.edge.tls.enabled:
        problems.append((_key("edge.tls.enabled"), f"a {role} site must serve TLS; set it to true"))
    if not s.gateway.auth_enabled:
        problems.append((_key("gateway.authEnabled"), f"a {role} site must require auth; set it to true"))
    if s.gateway.replicas < 2:
        problems.append((_key("gateway.replicas"), f"a {role} site needs >= 2 for availability; set 2 or more"))
    if s.edge.replicas < 2:
        problems.append((_key("edge.replicas"), f"a {role} site needs >= 2 for availability; set 2 or more"))
    if s.inference.replicas > s.hosts_that_fit_a_replica:
        problems.append((
            _key("inference.replicas"),
            f"{s.inference.replicas} replicas cannot each get their own host ({s.hosts_that_fit_a_replica} "
            f"hosts have {s.inference.tensor_parallel_size} GPUs); a {role} site spreads replicas over "
            "distinct hosts: lower replicas or add hosts",
        ))
    for field in ("vllm", "python_base", "nginx_base", "redis", "redis_exporter", "nginx_exporter", "log_setup"):
        ref = getattr(s.images, field)
        if not DIGEST_RE.match(ref):
            problems.append((
                _key(f"images.{to_camel(field)}"),
                f"'{ref}' is not pinned by digest; a {role} site needs '<image>@sha256:<64 hex>'",
            ))
    if role == "standby" and not s.redis.replica_of:
        problems.append((
            _key("redis.replicaOf"),
            "a standby site replicates the primary's Redis; set it to '<primary redis host>:6379'",
        ))
    if role == "primary" and s.redis.replica_of:
        problems.append((_key("redis.replicaOf"), "the primary owns its Redis; remove it"))
    rep = s.redis.replication
    if rep is None:
        problems.append((
            _key("redis.replication.peerCidrs"),
            f"a {role} site is half of a DR pair: set the peer site's egress CIDRs (its Redis replicates over a "
            "TLS endpoint that admits only them)",
        ))
    return problems


def _loc_to_key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]"
        else:
            parts.append(str(item))
    if parts and parts[0] in SECTIONS.values():
        section = {v: k for k, v in SECTIONS.items()}[parts[0]]
        parts[0] = section
    return _key(".".join(parts))


def parse_settings(
    values: Mapping[str, Any], secrets: Mapping[str, Any] | None = None, *, check_secrets: bool = False
) -> StackSettings:
    """Parse section objects (already decoded) into StackSettings or raise SettingsError with every problem.

    With `check_secrets`, `secrets` is all the secret config there is, and each secret the stack's
    features need must be in it (the Pulumi program passes its whole config; the local stack does not).
    """
    secrets = dict(secrets or {})
    data: dict[str, Any] = {k: v for k, v in values.items() if k in SECTIONS}
    unknown = sorted(set(values) - set(SECTIONS) - set(SECRET_KEYS))
    problems = [
        (_key(k), f"unknown key; the sections are {', '.join(SECTIONS)} (secrets: {', '.join(SECRET_KEYS)})")
        for k in unknown
    ]
    hashes = secrets.get("apiKeyHashes")
    if isinstance(hashes, str):
        try:
            hashes = json.loads(hashes)
        except json.JSONDecodeError:
            problems.append((_key("apiKeyHashes"), "is not JSON; give an object {sha256: name}"))
            hashes = None
    if hashes is not None and not isinstance(hashes, dict):
        problems.append((_key("apiKeyHashes"), "must be a JSON object {sha256: name}"))
        hashes = None
    data["apiKeyHashes"] = hashes or {}
    try:
        settings = StackSettings.model_validate(data, context={"defer_checks": True})
    except ValidationError as err:
        raise SettingsError(problems + [(_loc_to_key(tuple(e["loc"])), _explain(e)) for e in err.errors()]) from None
    problems += cross_field_problems(settings)
    if check_secrets:
        problems += secret_problems(settings, {k for k, v in secrets.items() if v not in (None, "")})
    if problems:
        raise SettingsError(problems)
    return settings


def _explain(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (misspelt?); remove it or check the README's settings table"
    if error["type"] == "missing":
        return "is required; add it to the stack file"
    return f"{error['msg']} (got {error.get('input')!r})"


def settings_from_config(raw: Mapping[str, Any], *, check_secrets: bool = True) -> StackSettings:
    """Parse the stack's whole config as the engine hands it over: `{"qwen-serving:<key>": str}`.

    Objects arrive as JSON text (that is how the CLI passes them); other namespaces are ignored.
    """
    prefix = f"{PROJECT}:"
    values: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for full_key, value in raw.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix):]
        if key in SECRET_KEYS:
            secrets[key] = value
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                problems.append((full_key, "is not a JSON object; write the section as a YAML mapping"))
                continue
        values[key] = value
    try:
        settings = parse_settings(values, secrets, check_secrets=check_secrets)
    except SettingsError as err:
        raise SettingsError(problems + err.problems) from None
    if problems:
        raise SettingsError(problems)
    return settings
