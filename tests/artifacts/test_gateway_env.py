"""The rendered gateway environment is what the gateway's own settings class accepts and means.

There is no hand mapping left: the stack builds the gateway's GatewaySettings (stackspec/settings.py) and
the environment is that instance's fields. Parsed back by the gateway, it is the same instance.
"""

from __future__ import annotations

import json

import pytest

from app.gateway.settings import GatewaySettings, GatewayTuning, settings_problems
from stackspec.render.gateway_env import SECRET_ENV_NAMES, render_gateway_env
from stackspec.stackfile import SECRET_PLACEHOLDERS
from tests.artifacts.conftest import STACKS, settings_with, stack_settings


def _load(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    for key in GatewaySettings.model_fields:
        monkeypatch.delenv(f"GATEWAY_{key.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return GatewaySettings()


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_env_parses_into_the_gateway_settings(stack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = stack_settings(stack)
    env = render_gateway_env(s, backends_dns="vllm.ns.svc.cluster.local:8000", redis_url="redis://redis:6379/0")
    assert not set(env) & set(SECRET_ENV_NAMES)
    secrets = {"GATEWAY_API_KEY_HASHES": SECRET_PLACEHOLDERS["apiKeyHashes"],  # from the Secret in k8s
               "GATEWAY_REDIS_PASSWORD": "from-the-secret"}
    gw = _load(env | secrets, monkeypatch)
    assert settings_problems(gw) == []
    assert gw.backends_dns == "vllm.ns.svc.cluster.local:8000" and gw.backend_list == []
    assert gw.model == s.model.served_name
    assert gw.max_body_bytes == s.edge.client_max_body_bytes  # one limit for the edge and the gateway
    # Every tunable the stack sets arrives as it was checked at plan time.
    # (The shutdown grace as derived: totalTimeout unless the stack sets shutdownGraceSeconds.)
    tuning = s.gateway.tuning()
    for name, value in tuning.items():
        if name not in ("routing", "processes"):
            assert getattr(gw, name) == value, name
    # Processes per pod as resolved: the setting, or one per core of the CPU request.
    assert gw.processes == gw.process_count == s.gateway_processes == (s.gateway.processes or 1)  # 500m: one
    assert set(tuning) == set(GatewayTuning.model_fields)
    assert gw.shutdown_grace_seconds == s.gateway.shutdown_grace
    # Routing as the stack sets it, remembering per backend the KV cache the capacity model gives a replica.
    assert gw.routing == s.gateway.routing.model_copy(update={"cache_tokens": s.capacity.kv_tokens})
    assert gw.routing.cache_tokens > 10_000
    assert gw.key_hashes == json.loads(SECRET_PLACEHOLDERS["apiKeyHashes"])


@pytest.mark.parametrize("stack", STACKS)
def test_every_gateway_field_is_rendered_or_secret(stack: str) -> None:
    env = render_gateway_env(stack_settings(stack), backends_dns="v:1", redis_url="redis://r:6379/0")
    names = {f"GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(env) | set(SECRET_ENV_NAMES) == names


def test_oidc_settings_reach_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    oidc = {"oidcIssuer": "https://id.example", "oidcAudience": "qwen", "oidcJwksUrl": "https://id.example/jwks"}
    s = settings_with("staging", gateway={"replicas": 2, **oidc, "rateLimitFailOpen": False})
    env = render_gateway_env(s, backends_dns=None, backends=["10.0.0.1:8000", "10.0.0.2:8000"],
                             redis_url="redis://redis:6379/0")
    gw = _load(env, monkeypatch)
    assert gw.oidc_enabled and gw.oidc_issuer == "https://id.example" and gw.oidc_audience == "qwen"
    assert gw.backend_list == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert gw.rate_limit_fail_open is False


def test_the_local_limit_fallback_divides_by_the_most_gateways_that_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """With Redis down each gateway limits on its own: rpm / the autoscaler's maximum, so that however far
    the fleet has scaled out, together they never admit more than the limit."""
    s = settings_with("staging", gateway={"replicas": 2, "maxReplicas": 5})
    env = render_gateway_env(s, backends_dns="v:1", redis_url="redis://r:6379/0")
    gw = _load(env | {"GATEWAY_API_KEY_HASHES": SECRET_PLACEHOLDERS["apiKeyHashes"]}, monkeypatch)
    assert gw.rate_limit_replicas == 5


def test_no_backends_is_refused() -> None:
    with pytest.raises(ValueError, match="backends"):
        render_gateway_env(stack_settings("dev"), backends_dns=None, redis_url="redis://x:6379/0")
