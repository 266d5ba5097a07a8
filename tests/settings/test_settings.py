"""Layer 1: every stack file parses; broken settings fail with the key named and a fix."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from stackspec.capacity import GB, QWEN25_7B, replica_capacity
from stackspec.settings import SettingsError, StackSettings, parse_settings, settings_from_config
from stackspec.stackfile import STACKS_DIR, read_stack_config, with_placeholders
from tests.stacks import SITE_STACKS

STACKS = SITE_STACKS
KEY_HASH = {"a" * 64: "team-a"}


def sections(stack: str) -> dict[str, Any]:
    config = yaml.safe_load((STACKS_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {k.split(":", 1)[1]: v for k, v in config.items()}


def parse(values: dict[str, Any], hashes: dict[str, str] | None = None) -> StackSettings:
    return parse_settings(values, {"apiKeyHashes": json.dumps(KEY_HASH if hashes is None else hashes)})


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_parses_from_cli_shaped_config(stack: str) -> None:
    raw, _ = read_stack_config(STACKS_DIR / f"Pulumi.{stack}.yaml")
    assert all(isinstance(v, str) for v in raw.values()), "the CLI hands every value over as a string"
    raw["qwen-serving:apiKeyHashes"] = json.dumps(KEY_HASH)
    settings = settings_from_config(with_placeholders(raw))
    assert settings.capacity.fits
    assert settings.api_key_hashes == KEY_HASH


def test_stack_shapes_match_the_environments() -> None:
    dev, staging, prod, dr = (parse(sections(s)) for s in STACKS)
    assert (dev.gpu_pool.total_gpus, dev.inference.tensor_parallel_size) == (1, 1)
    stg = staging.inference
    assert (staging.gpu_pool.total_gpus, stg.replicas, stg.tensor_parallel_size) == (2, 1, 2)
    assert (prod.gpu_pool.total_gpus, len(prod.gpu_pool.hosts), prod.inference.replicas) == (4, 2, 2)
    assert prod.site.role == "primary" and dr.site.role == "standby"
    assert dr.redis.replica_of and not prod.redis.replica_of
    assert dev.inference.max_model_len < prod.inference.max_model_len


def with_change(stack: str, path: str, value: Any) -> dict[str, Any]:
    values = copy.deepcopy(sections(stack))
    *parents, leaf = path.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return values


class _Delete:
    def __repr__(self) -> str:  # a stable test id: pytest-xdist's workers must collect the same names
        return "<deleted>"


DELETE = _Delete()

BROKEN: list[tuple[str, str, Any, str, str]] = [
    # stack, path, value, key that must be named, a word of the fix
    ("prod", "inference.replicas", 3, "qwen-serving:inference.tensorParallelSize", "lower"),
    ("dev", "inference.tensorParallelSize", 2, "qwen-serving:inference.tensorParallelSize", "GPUs"),
    ("prod", "inference.tensorParallelSize", 4, "qwen-serving:inference.tensorParallelSize", "never spans hosts"),
    ("dev", "inference.maxModelLen", 65536, "qwen-serving:model.ropeScaling", "yarn"),
    ("dev", "inference.gpuMemoryUtilization", 0.68, "qwen-serving:inference.maxModelLen", "quantization"),
    ("dev", "inference.gpuMemoryUtilization", 1.5, "qwen-serving:inference.gpuMemoryUtilization", "0.98"),
    ("dev", "inference.replicass", 1, "qwen-serving:inference.replicass", "unknown key"),
    # tool calling and structured outputs (vLLM's flags; the gateway's bounds)
    ("dev", "inference.structuredOutputs", {"backend": "outlines"}, "qwen-serving:inference.structuredOutputs",
     "xgrammar"),
    ("dev", "inference.toolCalling.parser", "mistral", "qwen-serving:inference.toolCalling.parser", "hermes"),
    ("dev", "gateway.maxSchemaDepth", 40, "qwen-serving:gateway.maxSchemaDepth", "less than"),
    ("dev", "gateway.maxTools", -1, "qwen-serving:gateway.maxTools", "greater than"),
    ("dev", "gpuPool.hosts", [], "qwen-serving:gpuPool.hosts", "at least 1"),
    ("prod", "edge.tls", {"enabled": False}, "qwen-serving:edge.tls.enabled", "true"),
    ("prod", "gateway.authEnabled", False, "qwen-serving:gateway.authEnabled", "true"),
    ("prod", "gateway.replicas", 1, "qwen-serving:gateway.replicas", "2 or more"),
    ("prod", "images.vllm", "vllm/vllm-openai:latest", "qwen-serving:images.vllm", "sha256"),
    ("prod-dr", "redis.replicaOf", DELETE, "qwen-serving:redis.replicaOf", "primary"),
    ("prod", "site.role", "primary-ish", "qwen-serving:site.role", "primary"),
    ("dev", "site.name", "Dev_Site", "qwen-serving:site.name", "pattern"),
    ("dev", "edge.nodePort", 80, "qwen-serving:edge.nodePort", "30000"),
    # hardening: Nginx outlives the gateway's own timeout; limits and quotas are bounded
    ("dev", "edge.proxyReadTimeoutSeconds", 600, "qwen-serving:edge.proxyReadTimeoutSeconds", "raise it"),
    ("dev", "edge.rateLimitPerSecond", 0, "qwen-serving:edge.rateLimitPerSecond", "greater than or equal to 1"),
    ("dev", "edge.connectionsPerClient", 65536, "qwen-serving:edge.connectionsPerClient",
     "less than or equal to 65535"),
    ("dev", "gateway.maxSequencesPerRequest", 0, "qwen-serving:gateway.maxSequencesPerRequest", "greater than"),
    ("dev", "gateway.redisBreakerFailureRatio", 1.5, "qwen-serving:gateway.redisBreakerFailureRatio", "less than"),
    ("dev", "gateway.sessionMaxBytesPerIdentity", 10, "qwen-serving:gateway.sessionMaxBytesPerIdentity",
     "greater than"),
    # disaster recovery (README): the replication link, backups
    ("prod", "redis.replication", DELETE, "qwen-serving:redis.replication.peerCidrs", "egress CIDRs"),
    ("prod", "redis.replication.peerCidrs", ["0.0.0.0/0"], "qwen-serving:redis.replication.peerCidrs[0]",
     "only the peer"),
    ("prod", "redis.replication.peerCidrs", ["10.1.2.3/8"], "qwen-serving:redis.replication.peerCidrs[0]",
     "not a CIDR"),
    ("dev", "redis.replication", {"peerCidrs": ["10.0.0.0/24"]}, "qwen-serving:redis.replication",
     "primary or standby"),
    ("prod", "redis.replication.waitForReplicaMs", 0, "qwen-serving:redis.replication.waitForReplicaMs", "1"),
    ("prod", "redis.backup.bucket", "Not_A_Bucket", "qwen-serving:redis.backup.bucket", "pattern"),
    ("prod", "redis.backup.schedule", "hourly", "qwen-serving:redis.backup.schedule", "pattern"),
    ("prod", "redis.backup.schedule", "61 * * * *", "qwen-serving:redis.backup.schedule", "not a 5-field cron"),
]


@pytest.mark.parametrize(
    ("stack", "path", "value", "key", "fix"), BROKEN, ids=[f"{b[0]}:{b[1]}={b[2]}" for b in BROKEN]
)
def test_broken_settings_name_the_key_and_the_fix(stack: str, path: str, value: Any, key: str, fix: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse(with_change(stack, path, value))
    message = str(info.value)
    assert key in message
    assert any(key in line and fix in line for line in message.splitlines()), message


def test_three_replicas_of_tp2_on_four_gpus_names_both_keys() -> None:
    with pytest.raises(SettingsError) as info:
        parse(with_change("prod", "inference.replicas", 3))
    message = str(info.value)
    assert "qwen-serving:inference.replicas" in message
    assert "qwen-serving:inference.tensorParallelSize" in message
    assert "need 6 GPUs" in message and "has 4" in message


def test_auth_without_keys_or_oidc_is_refused_with_the_command_to_fix_it() -> None:
    with pytest.raises(SettingsError) as info:
        parse(sections("prod"), hashes={})
    assert "qwen-serving:apiKeyHashes" in str(info.value)
    assert "pulumi config set --secret" in str(info.value)


def test_a_plain_api_key_instead_of_its_hash_is_refused() -> None:
    with pytest.raises(SettingsError, match="not a sha256 hex digest"):
        parse(sections("prod"), hashes={"sk-my-real-key": "team-a"})


def test_oidc_alone_satisfies_auth() -> None:
    values = with_change("prod", "gateway.oidcIssuer", "https://sso.example.internal/realms/ai")
    values["gateway"] |= {"oidcAudience": "qwen", "oidcJwksUrl": "https://sso.example.internal/certs"}
    assert parse(values, hashes={}).gateway_runtime().oidc_enabled


def test_yarn_rope_scaling_makes_a_long_context_valid() -> None:
    values = with_change("prod", "inference.maxModelLen", 131072)
    values["model"] = {"ropeScaling": {"factor": 4, "originalMaxPositionEmbeddings": 32768}, "quantization": "awq"}
    settings = parse(values)
    assert settings.model.rope_scaling is not None and settings.model.rope_scaling.factor == 4
    values["model"]["ropeScaling"]["factor"] = 2
    with pytest.raises(SettingsError, match=r"model\.ropeScaling\.factor"):
        parse(values)


def test_quantisation_changes_the_weights_the_capacity_model_uses() -> None:
    # One 4090D at 0.7 with fp16 weights: 16.8 - 15.2 - 1.0 GB leaves ~10k tokens, short of 32k.
    values = with_change("dev", "inference.maxModelLen", 32768)
    values["inference"]["gpuMemoryUtilization"] = 0.7
    with pytest.raises(SettingsError, match="does not fit"):
        parse(values)
    values["model"] = {"quantization": "awq"}
    settings = parse(values)
    assert settings.capacity.weight_bytes == QWEN25_7B.weight_bytes["awq"]
    assert settings.capacity.max_concurrent_full_sequences == 5


def test_capacity_model_reproduces_the_design_numbers() -> None:
    # DESIGN.md: KV per token 57,344 B; 2x4090D at 0.9 -> ~28 GB KV ~ 490k tokens; one 4090D -> ~6 GB ~ 110k.
    assert QWEN25_7B.kv_bytes_per_token == 57_344
    two = replica_capacity(QWEN25_7B, quantization="none", gpu_memory_gb=24, gpu_memory_utilization=0.9,
                           tensor_parallel_size=2, max_model_len=32768, reserve_gb_per_gpu=0)
    one = replica_capacity(QWEN25_7B, quantization="none", gpu_memory_gb=24, gpu_memory_utilization=0.9,
                           tensor_parallel_size=1, max_model_len=32768, reserve_gb_per_gpu=0)
    assert round(two.kv_cache_bytes / GB) == 28 and 480_000 < two.kv_tokens < 500_000
    assert round(one.kv_cache_bytes / GB) == 6 and 105_000 < one.kv_tokens < 115_000
    assert two.max_concurrent_full_sequences == two.kv_tokens // 32768
