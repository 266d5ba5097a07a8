"""Typed stack settings: parsed once from the stack config, validated before any resource exists.

Every key lives under the project namespace (`qwen-serving:<section>`); each section is an object in
the stack file, written in camelCase like the rest of Pulumi. Errors name the full key
(`qwen-serving:inference.replicas`) and say how to fix it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from app.inference.capacity import QWEN25_7B, Capacity, ModelShape, replica_capacity

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
}

# Secret keys: set with `pulumi config set --secret qwen-serving:<key> ...`.
SECRET_KEYS: dict[str, str] = {
    "apiKeyHashes": "JSON object {sha256-hex-of-key: key name}; the gateway never sees plain keys",
    "alertmanagerWebhookUrl": "the webhook URL Alertmanager pages to",
    "alertmanagerSmtpPassword": "the SMTP password for e-mail alerts",
    "logSinkPassword": "the password of the log sink (Elasticsearch or Loki)",
    "grafanaAdminPassword": "Grafana's admin password (kube-prometheus-stack)",
    "redisPassword": "the Redis password; a standby site must use its primary's (generated per site when unset)",
}

DIGEST_RE = re.compile(r"^[\w.\-/:]+@sha256:[0-9a-f]{64}$")
NAME_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


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
    pvc_size: str = "100Gi"
    storage_class: str | None = None


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
    shm_size: str = "8Gi"
    startup_budget_seconds: int = Field(default=600, ge=60)
    termination_grace_seconds: int = Field(default=120, ge=10)
    cache: ModelCache = ModelCache()
    cpu_request: str = "4"
    memory_request: str = "32Gi"


class RateLimit(_Section):
    requests_per_minute: int = Field(default=120, ge=1)
    concurrent_streams: int = Field(default=8, ge=1)
    fail_open: bool = True


class Oidc(_Section):
    issuer: str = Field(pattern=r"^https://")
    audience: str = Field(min_length=1)
    jwks_url: str = Field(pattern=r"^https://")


class GatewaySettings(_Section):
    replicas: int = Field(default=2, ge=1)
    max_replicas: int = Field(default=6, ge=1)
    target_cpu_percent: int = Field(default=70, ge=10, le=100)
    port: int = Field(default=8080, ge=1024, le=65535)
    auth_enabled: bool = True
    oidc: Oidc | None = None
    rate_limit: RateLimit = RateLimit()
    session_ttl_seconds: int = Field(default=3600, ge=60)
    history_token_budget: int = Field(default=6000, ge=256)
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    first_token_timeout_seconds: float = Field(default=60.0, gt=0)
    idle_timeout_seconds: float = Field(default=30.0, gt=0)
    total_timeout_seconds: float = Field(default=600.0, gt=0)
    max_tokens_cap: int = Field(default=4096, ge=1)
    shutdown_grace_seconds: int = Field(default=30, ge=1)
    cpu_request: str = "500m"
    memory_request: str = "512Mi"


class Tls(_Section):
    enabled: bool = False
    secret_name: str = "qwen-serving-tls"


class EdgeSettings(_Section):
    hostname: str = Field(default="localhost", min_length=1)
    replicas: int = Field(default=2, ge=1)
    service_type: Literal["LoadBalancer", "NodePort"] = "NodePort"
    node_port: int | None = Field(default=None, ge=30000, le=32767)
    load_balancer_ip: str | None = None
    tls: Tls = Tls()
    client_max_body_size: str = "1m"
    proxy_read_timeout_seconds: int = Field(default=600, ge=30)


class RedisSettings(_Section):
    storage_size: str = "10Gi"
    storage_class: str | None = None
    maxmemory: str = "1gb"
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    replica_of: str | None = None  # standby site: host:port of the primary's Redis


class ImageSettings(_Section):
    registry: str = Field(default="registry.local:5000/qwen-serving", min_length=1)
    vllm: str = "vllm/vllm-openai:v0.11.0"
    python_base: str = "python:3.11-slim"
    nginx_base: str = "nginx:1.27-alpine"
    # Used as they are (not built): the Redis server and the two metrics sidecars.
    redis: str = "redis:7.4-alpine"
    redis_exporter: str = "oliver006/redis_exporter:v1.74.0"
    nginx_exporter: str = "nginx/nginx-prometheus-exporter:1.4.2"
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
    webhook: bool = True
    email: EmailReceiver | None = None
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"


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
    setup_image: str = "curlimages/curl:8.11.1"  # the Job that installs the ILM policy (Elasticsearch)


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
    storage_size: str = "50Gi"
    storage_class: str | None = None
    scrape_interval: str = Field(default="30s", pattern=r"^\d+[smh]$")
    kube_prometheus_stack_chart_version: str = "77.6.2"
    keda_chart_version: str = "2.17.2"
    fluent_bit_chart_version: str = "0.50.0"
    alerting: AlertingSettings = AlertingSettings()
    logs: LogSettings = LogSettings()
    autoscaling: AutoscalingSettings = AutoscalingSettings()


class StackSettings(_Section):
    site: SiteSettings
    kubernetes: KubernetesSettings = KubernetesSettings()
    gpu_pool: GpuPoolSettings
    model: ModelSettings = ModelSettings()
    inference: InferenceSettings = InferenceSettings()
    gateway: GatewaySettings = GatewaySettings()
    edge: EdgeSettings = EdgeSettings()
    redis: RedisSettings = RedisSettings()
    images: ImageSettings = ImageSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    api_key_hashes: dict[str, str] = Field(default_factory=dict, exclude=True)

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

    @model_validator(mode="after")
    def _cross_checks(self) -> StackSettings:
        problems = cross_field_problems(self)
        if problems:
            raise SettingsError(problems)
        return self


def _replica_slots(s: StackSettings) -> int:
    return sum(h.gpus // s.inference.tensor_parallel_size for h in s.gpu_pool.hosts)


def _key(path: str) -> str:
    return f"{PROJECT}:{path}"


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
    if s.gateway.auth_enabled and not s.api_key_hashes and s.gateway.oidc is None:
        problems.append((
            _key("apiKeyHashes"),
            "auth is on but there are no API keys and no OIDC: set it with `pulumi config set "
            "--secret qwen-serving:apiKeyHashes '{\"<sha256 of key>\": \"<name>\"}'`, or configure "
            "gateway.oidc",
        ))
    for digest, name in s.api_key_hashes.items():
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            problems.append((
                _key("apiKeyHashes"),
                f"entry for '{name}' is not a sha256 hex digest; store "
                "`printf %s <key> | sha256sum`, never the key itself",
            ))
    if s.edge.service_type == "LoadBalancer" and s.edge.node_port is not None:
        problems.append((_key("edge.nodePort"), "only for serviceType NodePort; remove it"))

    if s.site.prod_like:
        problems.extend(_prod_problems(s))
    elif s.redis.replica_of and s.site.role != "standby":
        problems.append((_key("redis.replicaOf"), "only a standby site replicates Redis; remove it"))
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
    for field in ("vllm", "python_base", "nginx_base"):
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


def parse_settings(values: Mapping[str, Any], secrets: Mapping[str, Any] | None = None) -> StackSettings:
    """Parse section objects (already decoded) into StackSettings or raise SettingsError."""
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
    if problems:
        raise SettingsError(problems)
    data["apiKeyHashes"] = hashes or {}
    try:
        return StackSettings.model_validate(data)
    except SettingsError:
        raise
    except ValidationError as err:
        nested = [e for e in err.errors() if isinstance(e.get("ctx", {}).get("error"), SettingsError)]
        if nested:
            raise nested[0]["ctx"]["error"] from None
        raise SettingsError([
            (_loc_to_key(tuple(e["loc"])), _explain(e)) for e in err.errors()
        ]) from None


def _explain(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (misspelt?); remove it or check the README's settings table"
    if error["type"] == "missing":
        return "is required; add it to the stack file"
    return f"{error['msg']} (got {error.get('input')!r})"


def settings_from_config(raw: Mapping[str, Any]) -> StackSettings:
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
    if problems:
        raise SettingsError(problems)
    return parse_settings(values, secrets)
