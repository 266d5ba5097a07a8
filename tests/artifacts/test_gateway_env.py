"""The rendered gateway environment is what the gateway's own settings class accepts and means."""

from __future__ import annotations

import json

import pytest

from app.gateway.settings import GatewaySettings, settings_problems
from infra.offline import SECRET_PLACEHOLDERS
from infra.render.gateway_env import SECRET_ENV_NAMES, render_gateway_env
from tests.artifacts.conftest import STACKS, settings_with, stack_settings


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_env_parses_into_the_gateway_settings(stack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = stack_settings(stack)
    env = render_gateway_env(s, backends_dns="vllm.ns.svc.cluster.local:8000", redis_url="redis://redis:6379/0")
    assert not set(env) & set(SECRET_ENV_NAMES)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEWAY_API_KEY_HASHES", SECRET_PLACEHOLDERS["apiKeyHashes"])  # from the Secret in k8s
    monkeypatch.setenv("GATEWAY_REDIS_PASSWORD", "from-the-secret")
    gw = GatewaySettings()
    assert settings_problems(gw) == []
    assert gw.backends_dns == "vllm.ns.svc.cluster.local:8000" and gw.backend_list == []
    assert gw.model == s.model.served_name
    assert gw.auth_enabled is s.gateway.auth_enabled
    assert gw.rate_limit_rpm == s.gateway.rate_limit.requests_per_minute
    assert gw.rate_limit_concurrent == s.gateway.rate_limit.concurrent_streams
    assert gw.first_token_timeout == s.gateway.first_token_timeout_seconds
    assert gw.total_timeout == s.gateway.total_timeout_seconds
    assert gw.session_ttl_seconds == s.gateway.session_ttl_seconds
    assert gw.port == s.gateway.port
    assert gw.key_hashes == json.loads(SECRET_PLACEHOLDERS["apiKeyHashes"])


def test_oidc_settings_reach_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    oidc = {"issuer": "https://id.example", "audience": "qwen", "jwksUrl": "https://id.example/jwks"}
    s = settings_with("staging", gateway={"replicas": 2, "oidc": oidc, "rateLimit": {"failOpen": False}})
    env = render_gateway_env(s, backends_dns=None, backends=["10.0.0.1:8000", "10.0.0.2:8000"],
                             redis_url="redis://redis:6379/0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    gw = GatewaySettings()
    assert gw.oidc_enabled and gw.oidc_issuer == "https://id.example" and gw.oidc_audience == "qwen"
    assert gw.backend_list == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert gw.rate_limit_fail_open is False


def test_no_backends_is_refused() -> None:
    with pytest.raises(ValueError, match="backends"):
        render_gateway_env(stack_settings("dev"), backends_dns=None, redis_url="redis://x:6379/0")
