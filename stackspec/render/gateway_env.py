"""Settings -> the gateway's environment, derived mechanically from the gateway's own settings instance.

`StackSettings.gateway_runtime()` builds app/gateway/settings.py's `GatewaySettings` from the stack (every
gateway check runs there, at parse time); this module writes each of its fields as `GATEWAY_<FIELD>`.
There is no table of names: a field added to the gateway reaches its environment by itself.

Secret fields (SecretStr: GATEWAY_API_KEY_HASHES, GATEWAY_REDIS_PASSWORD) reach the pod from the Kubernetes
Secret by secretKeyRef, never through this dict.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, SecretStr

from app.gateway.settings import GatewaySettings
from stackspec.settings import StackSettings

ENV_PREFIX = str(GatewaySettings.model_config.get("env_prefix", ""))


def _is_secret(name: str) -> bool:
    annotation = GatewaySettings.model_fields[name].annotation
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


SECRET_FIELDS: tuple[str, ...] = tuple(name for name in GatewaySettings.model_fields if _is_secret(name))
SECRET_ENV_NAMES: tuple[str, ...] = tuple(f"{ENV_PREFIX}{name.upper()}" for name in SECRET_FIELDS)


def env_value(value: object) -> str:
    """One field in the syntax pydantic-settings reads back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):  # a group of fields (e.g. GATEWAY_ROUTING): pydantic-settings reads JSON
        return value.model_dump_json()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def gateway_env(runtime: GatewaySettings) -> dict[str, str]:
    """Every non-secret field of a gateway settings instance, as its environment variable."""
    return {
        f"{ENV_PREFIX}{name.upper()}": env_value(getattr(runtime, name))
        for name in GatewaySettings.model_fields
        if name not in SECRET_FIELDS
    }


def render_gateway_env(
    settings: StackSettings, *, backends_dns: str | None, backends: Sequence[str] = (), redis_url: str
) -> dict[str, str]:
    if not backends_dns and not backends:
        raise ValueError("render_gateway_env: give backends_dns (the headless Service) or a backends list")
    return gateway_env(settings.gateway_runtime(backends_dns=backends_dns, backends=backends, redis_url=redis_url))
