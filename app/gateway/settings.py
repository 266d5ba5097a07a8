"""Gateway settings: environment variables with the `GATEWAY_` prefix. This class is the contract.

`GatewayTuning` holds what an operator tunes per deployment: a stack file's `gateway` section carries
exactly these fields (camelCase), with these bounds. `GatewaySettings` adds the wiring that comes from the
other tiers (backends, Redis URL, the served model name, the body limit the edge enforces, secrets). The
settings contract (stackspec/) builds a `GatewaySettings` from each stack at `make plan`, so every check
below runs before any resource exists, and renders the environment from that instance field by field.

Secrets (`GATEWAY_REDIS_PASSWORD`, `GATEWAY_API_KEY_HASHES`) are files named like the variables in the
secrets directory (`GATEWAY_SECRETS_DIR`, default /var/run/secrets/gateway: the Kubernetes Secret's read-only
mount), read by pydantic-settings' `secrets_dir` source; an environment variable of the same name still wins
(pydantic-settings ranks the environment above the secrets directory), for local overrides. They are
`SecretStr` so they never show up in reprs or logs. This module imports nothing else of the repository.
"""

from __future__ import annotations

import json
import math
import os
import re
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict

HOST_PORT_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# What one core of gateway carries before its event loop lags (`make bench`'s paced streams: 1,000 on one core
# ran at 30-50 % of direct, i.e. ~300-500 at full pace); the default in-flight bound per core of CPU request.
IN_FLIGHT_PER_CORE = 400
# Where the Deployment mounts the gateway's Secrets (infra/components/gateway.py); GATEWAY_SECRETS_DIR moves it.
DEFAULT_SECRETS_DIR = "/var/run/secrets/gateway"


class GatewaySettingsError(ValueError):
    """Invalid gateway environment; the message names the variable and the fix."""


class GatewaySettingsProblems(ValueError):
    """The cross-field problems of one GatewaySettings: (fields involved, message naming the fix)."""

    def __init__(self, problems: list[tuple[tuple[str, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


class RoutingTuning(BaseModel):
    """How a request picks its backend (a stack's `gateway.routing`; the environment's GATEWAY_ROUTING, JSON).

    `prefix`: to the backend most likely to hold the prompt's prefix in its KV cache, among those whose load is
    within `load_factor` of the mean (backends/prefix_aware.py). `session`: the behaviour before it — a session
    sticks to its rendezvous backend, anything else goes to the fewest requests in flight (session_affinity.py).
    `round_robin`: a baseline for the routing benchmark.
    """

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="forbid")

    policy: Literal["prefix", "session", "round_robin"] = "prefix"
    # Consistent hashing with bounded loads (Mirrokni et al.): a backend is a candidate while its load plus
    # this request stays within ceil(load_factor x the mean load including it).
    load_factor: float = Field(default=1.25, ge=1.0, le=10.0)
    # The prompt is hashed in blocks of about this many tokens (4 characters a token: the gateway has no
    # tokenizer); a block's hash chains all before it, so equal hashes mean an equal prefix.
    block_tokens: int = Field(default=32, ge=4, le=4096)
    # Tokens of a backend's KV cache the gateway remembers per backend (an LRU of block hashes); 0 = the stack's
    # capacity model fills it in (KV cache per replica), or 100,000 when the gateway runs on its own.
    cache_tokens: int = Field(default=0, ge=0, le=100_000_000)
    # Load is counted in what costs the GPU: each request in flight is 1, and each this many prompt tokens
    # it has queued for prefill (not yet cached, first token not yet out) is 1 more.
    prefill_tokens_per_load: int = Field(default=1024, ge=1, le=1_000_000)


class GatewayTuning(BaseModel):
    """What a deployment tunes (a stack file's `gateway` section): timeouts, limits, auth, sessions."""

    model_config = ConfigDict(frozen=True)

    dns_interval_seconds: float = Field(default=5.0, gt=0)
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    redis_retry_seconds: float = Field(default=2.0, gt=0)  # how long the breaker stays open
    # The breaker opens on an error rate, not one slow call: at least `min_failures` failed calls within
    # the last `window_seconds`, and at least `failure_ratio` of that window's calls.
    redis_breaker_window_seconds: float = Field(default=10.0, gt=0, le=600)
    redis_breaker_min_failures: int = Field(default=3, ge=1, le=1000)
    redis_breaker_failure_ratio: float = Field(default=0.5, gt=0, le=1)

    auth_enabled: bool = True
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks_url: str = ""
    oidc_jwks_cache_seconds: float = Field(default=300.0, gt=0)
    oidc_jwks_min_refresh_seconds: float = Field(default=5.0, ge=0)

    rate_limit_rpm: int = Field(default=120, ge=1)  # requests per window (per minute by default)
    rate_limit_window_seconds: float = Field(default=60.0, gt=0, le=3600)  # the sliding window
    rate_limit_concurrent: int = Field(default=8, ge=1)
    # Redis unreachable (or a read-only standby): true = admit under this process's own limits (the rpm
    # and concurrency divided by the gateway replicas), false = refuse with 503. Never unlimited.
    rate_limit_fail_open: bool = True

    session_ttl_seconds: int = Field(default=3600, ge=1)
    history_token_budget: int = Field(default=6000, ge=1)
    # Per identity: live sessions, and the bytes their stored messages take (a turn is refused with 429
    # once the identity is at its quota; one key cannot fill Redis for everyone).
    session_max_per_identity: int = Field(default=100, ge=1, le=100_000)
    session_max_bytes_per_identity: int = Field(default=16 * 1024 * 1024, ge=1024)

    connect_timeout: float = Field(default=2.0, gt=0)
    first_token_timeout: float = Field(default=60.0, gt=0)
    idle_timeout: float = Field(default=30.0, gt=0)
    total_timeout: float = Field(default=600.0, gt=0)
    retry_attempts: int = Field(default=3, ge=1, le=10)  # tries per request, over distinct backends
    routing: RoutingTuning = RoutingTuning()

    health_interval_seconds: float = Field(default=2.0, gt=0)
    health_timeout_seconds: float = Field(default=2.0, gt=0)
    eject_after_failures: int = Field(default=3, ge=1)  # passive ejection on consecutive 5xx/timeouts

    max_tokens_cap: int = Field(default=4096, ge=1)  # max_tokens is always sent, at most this
    # n (or best_of) x prompts: the sequences one request makes vLLM generate; each holds a concurrency slot.
    max_sequences_per_request: int = Field(default=16, ge=1, le=256)
    max_messages: int = Field(default=256, ge=1)
    max_content_chars: int = Field(default=200_000, ge=1)  # total characters of the input
    # Tool calling and structured outputs: each schema (a tool's `parameters`, response_format's `schema`) is
    # compiled into a grammar by vLLM per request, and every tool is written into the prompt. OpenAI allows
    # 128 tools. Bytes are of the compact JSON; depth counts nested objects and arrays (the body itself may
    # nest 32 levels, the schema sits 5 deep in it).
    max_tools: int = Field(default=128, ge=0, le=1024)
    max_schema_bytes: int = Field(default=65_536, ge=256)
    max_tools_bytes: int = Field(default=262_144, ge=256)
    max_schema_depth: int = Field(default=16, ge=2, le=26)

    # Gateway processes per pod (0: one per core of the pod's CPU request, rounded up). One event loop uses
    # one core; the processes share one listening socket (supervisor.py), each drains itself on SIGTERM.
    processes: int = Field(default=0, ge=0, le=64)
    # Overload, refused before the work (admission.py): at most `max_in_flight` generation requests in flight
    # per gateway pod (0: IN_FLIGHT_PER_CORE x the pod's CPU request), shared out among its processes, and
    # none admitted while an event loop runs later than `overload_loop_lag_seconds`; refused = 503
    # `overloaded` with Retry-After.
    max_in_flight: int = Field(default=0, ge=0, le=100_000)
    overload_loop_lag_seconds: float = Field(default=0.5, gt=0, le=60)
    overload_retry_after_seconds: int = Field(default=1, ge=1, le=600)
    # Each Redis pool (sessions', limits'): its connections, and how long a call queues for one when all are
    # busy. A call that waited that long is refused as overload (limits: 503), never taken for Redis down.
    redis_pool_size: int = Field(default=200, ge=1, le=10_000)
    redis_pool_wait_seconds: float = Field(default=1.0, gt=0, le=60)

    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    shutdown_drain_seconds: float = Field(default=2.0, ge=0)  # readiness false before we stop listening
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "INFO"


class GatewaySettings(GatewayTuning, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    # Backends: a static comma-separated host:port list, or the headless Service's host:port.
    backends: str = ""
    backends_dns: str = ""
    model: str = ""  # the served model name; empty = accept what the backends report
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    # The rate limits' Redis: empty = the sessions' (redis_url) through a pool and breaker of their own, so a
    # session write storm or its failures never switch the limits off; set it to give limits their own
    # instance (or logical database).
    rate_limit_redis_url: str = ""
    rate_limit_replicas: int = Field(default=1, ge=1)  # gateway replicas: the local fallback's divisor
    api_key_hashes: SecretStr = SecretStr("{}")
    max_body_bytes: int = Field(default=1_048_576, ge=1024)  # the edge's clientMaxBodySize, in bytes
    # After each session write, WAIT for one replica's acknowledgement up to this long (0: asynchronous).
    session_replica_wait_ms: int = Field(default=0, ge=0, le=10_000)
    host: str = "0.0.0.0"
    cpu_cores: float = Field(default=1.0, gt=0, le=1024)  # the pod's CPU request (gateway.cpuRequest), in cores
    # Tests only (never rendered true from a stack): POST /_test/stall blocks the event loop, to show that a
    # stalled loop changes no verdict about a backend.
    test_hooks: bool = False

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        problems = field_problems(self)
        if problems:
            raise GatewaySettingsProblems(problems)
        return self

    @cached_property
    def backend_list(self) -> list[str]:
        return [b.strip() for b in self.backends.split(",") if b.strip()]

    @cached_property
    def key_hashes(self) -> dict[str, str]:
        return dict(json.loads(self.api_key_hashes.get_secret_value() or "{}"))

    @property
    def process_count(self) -> int:
        return process_count(self.processes, self.cpu_cores)

    @property
    def in_flight_limit(self) -> int:
        """Generation requests one process serves at once: the pod's bound (max_in_flight, or derived from the
        CPU request) shared out among its processes, rounded up."""
        pod = self.max_in_flight or max(1, round(IN_FLIGHT_PER_CORE * self.cpu_cores))
        return max(1, math.ceil(pod / self.process_count))

    @property
    def local_limit_divisor(self) -> int:
        """What the local fallback divides the shared limits by: every process of every replica enforces its
        share on its own while Redis is unavailable."""
        return self.rate_limit_replicas * self.process_count

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_jwks_url)


def cores_rounded_up(cores: float) -> int:
    """Whole cores a CPU request spans (0.5 -> 1, 2 -> 2, 2.5 -> 3): how many event loops it can keep busy."""
    return max(1, math.ceil(round(cores, 3)))


def process_count(processes: int, cores: float) -> int:
    """Gateway processes in a pod: `processes`, or one per core of its CPU request (rounded up)."""
    return processes or cores_rounded_up(cores)


def settings_problems(s: GatewaySettings) -> list[str]:
    return [message for _, message in field_problems(s)]


def field_problems(s: GatewaySettings) -> list[tuple[tuple[str, ...], str]]:
    """Checks that span fields, each with the fields it involves (the stack model names their keys)."""
    problems: list[tuple[tuple[str, ...], str]] = []
    if not s.backend_list and not s.backends_dns:
        problems.append((("backends", "backends_dns"),
                         "GATEWAY_BACKENDS or GATEWAY_BACKENDS_DNS must be set (host:port[,host:port...])"))
    for entry in s.backend_list:
        if not HOST_PORT_RE.match(entry):
            problems.append((("backends",), f"GATEWAY_BACKENDS entry {entry!r} is not host:port"))
    if s.backends_dns and not HOST_PORT_RE.match(s.backends_dns):
        problems.append((("backends_dns",),
                         f"GATEWAY_BACKENDS_DNS {s.backends_dns!r} is not host:port of the headless Service"))
    try:
        hashes = json.loads(s.api_key_hashes.get_secret_value() or "{}")
    except json.JSONDecodeError:
        problems.append((("api_key_hashes",),
                         "GATEWAY_API_KEY_HASHES is not JSON; give {\"<sha256 hex of key>\": \"<name>\"}"))
        hashes = {}
    if not isinstance(hashes, dict):
        problems.append((("api_key_hashes",), "GATEWAY_API_KEY_HASHES must be a JSON object {sha256-hex: name}"))
        hashes = {}
    for digest in hashes:
        if not SHA256_RE.match(str(digest)):
            problems.append((
                ("api_key_hashes",),
                "GATEWAY_API_KEY_HASHES has a key that is not a sha256 hex digest; store "
                "`printf %s <key> | sha256sum`, never the key itself",
            ))
            break
    oidc = [s.oidc_issuer, s.oidc_audience, s.oidc_jwks_url]
    if any(oidc) and not all(oidc):
        problems.append((("oidc_issuer", "oidc_audience", "oidc_jwks_url"),
                         "GATEWAY_OIDC_ISSUER, GATEWAY_OIDC_AUDIENCE and GATEWAY_OIDC_JWKS_URL go together; set all"))
    if s.auth_enabled and not hashes and not s.oidc_jwks_url:
        problems.append((
            ("api_key_hashes", "auth_enabled"),
            "GATEWAY_AUTH_ENABLED is true but there are no GATEWAY_API_KEY_HASHES and no OIDC; "
            "add keys, configure OIDC, or set GATEWAY_AUTH_ENABLED=false (local development only)",
        ))
    if s.processes > cores_rounded_up(s.cpu_cores):
        problems.append((("processes", "cpu_cores"),
                         f"GATEWAY_PROCESSES {s.processes} is more than the {cores_rounded_up(s.cpu_cores)} core(s) "
                         f"of the CPU request ({s.cpu_cores:g}): each process would get less than a core; raise "
                         "the CPU request or lower the processes (0: one per core)"))
    if s.first_token_timeout > s.total_timeout:
        problems.append((("first_token_timeout", "total_timeout"),
                         "GATEWAY_FIRST_TOKEN_TIMEOUT exceeds GATEWAY_TOTAL_TIMEOUT; lower it"))
    return problems


def secret_variables() -> list[str]:
    """The variables that are secrets (the SecretStr fields): files of the secrets directory in a pod."""
    return sorted(f"GATEWAY_{name.upper()}" for name, field in GatewaySettings.model_fields.items()
                  if "SecretStr" in str(field.annotation))


def secrets_dir() -> str | None:
    """The secrets directory, when it exists (pydantic-settings warns about a missing one: none locally)."""
    path = os.environ.get("GATEWAY_SECRETS_DIR") or DEFAULT_SECRETS_DIR
    return path if os.path.isdir(path) else None


def load_settings() -> GatewaySettings:
    """Settings from the environment and the secrets directory, or a GatewaySettingsError naming each bad
    variable."""
    try:
        return GatewaySettings(_secrets_dir=secrets_dir())
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            name = f"GATEWAY_{loc.upper()}" if loc else "gateway settings"
            msg = str(e["msg"]).removeprefix("Value error, ")
            lines.append(msg if not loc else f"{name}: {msg}")
        raise GatewaySettingsError("invalid gateway settings:\n  " + "\n  ".join(lines)) from None
