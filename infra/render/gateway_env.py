"""Settings -> the gateway's environment (non-secret values only; names match app/gateway/settings.py).

Secrets reach the pod from the Kubernetes Secret by secretKeyRef, never through this dict:
GATEWAY_API_KEY_HASHES and GATEWAY_REDIS_PASSWORD.
"""

from __future__ import annotations

from collections.abc import Sequence

from infra.settings import StackSettings

SECRET_ENV_NAMES: tuple[str, ...] = ("GATEWAY_API_KEY_HASHES", "GATEWAY_REDIS_PASSWORD")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def render_gateway_env(
    settings: StackSettings, *, backends_dns: str | None, backends: Sequence[str] = (), redis_url: str
) -> dict[str, str]:
    if not backends_dns and not backends:
        raise ValueError("render_gateway_env: give backends_dns (the headless Service) or a backends list")
    gw = settings.gateway
    oidc = gw.oidc
    env = {
        "GATEWAY_BACKENDS": ",".join(backends),
        "GATEWAY_BACKENDS_DNS": backends_dns or "",
        "GATEWAY_MODEL": settings.model.served_name,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_AUTH_ENABLED": _bool(gw.auth_enabled),
        "GATEWAY_OIDC_ISSUER": oidc.issuer if oidc else "",
        "GATEWAY_OIDC_AUDIENCE": oidc.audience if oidc else "",
        "GATEWAY_OIDC_JWKS_URL": oidc.jwks_url if oidc else "",
        "GATEWAY_RATE_LIMIT_RPM": str(gw.rate_limit.requests_per_minute),
        "GATEWAY_RATE_LIMIT_CONCURRENT": str(gw.rate_limit.concurrent_streams),
        "GATEWAY_RATE_LIMIT_FAIL_OPEN": _bool(gw.rate_limit.fail_open),
        "GATEWAY_SESSION_TTL_SECONDS": str(gw.session_ttl_seconds),
        "GATEWAY_HISTORY_TOKEN_BUDGET": str(gw.history_token_budget),
        "GATEWAY_CONNECT_TIMEOUT": _num(gw.connect_timeout_seconds),
        "GATEWAY_FIRST_TOKEN_TIMEOUT": _num(gw.first_token_timeout_seconds),
        "GATEWAY_IDLE_TIMEOUT": _num(gw.idle_timeout_seconds),
        "GATEWAY_TOTAL_TIMEOUT": _num(gw.total_timeout_seconds),
        "GATEWAY_MAX_TOKENS_CAP": str(gw.max_tokens_cap),
        "GATEWAY_SHUTDOWN_GRACE_SECONDS": str(gw.shutdown_grace_seconds),
        "GATEWAY_PORT": str(gw.port),
    }
    return env
