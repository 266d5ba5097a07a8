"""Settings of the `global` stack: DNS failover between the sites (Route53 failover records + health checks).

The active site is a setting: failing over on purpose is `pulumi config set --path
qwen-serving:dns.activeSite site-b` and `pulumi up -s global`. Route53 also fails over by itself when the
active site's health check fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, model_validator

from infra.settings import NAME_RE, PROJECT, SettingsError, _loc_to_key, _Section

DNS_KEY = f"{PROJECT}:dns"


class SiteEndpoint(_Section):
    name: str = Field(pattern=NAME_RE)
    stack: str = Field(pattern=r"^[\w.\-]+(/[\w.\-]+){0,2}$")  # the site's stack, for a StackReference


class DnsSettings(_Section):
    zone_id: str = Field(pattern=r"^Z[A-Z0-9]{5,32}$")
    hostname: str = Field(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}$")
    ttl: int = Field(default=30, ge=5, le=300)
    active_site: str
    sites: list[SiteEndpoint] = Field(min_length=2, max_length=2)
    health_check_path: str = Field(default="/healthz", pattern=r"^/")
    health_check_port: int = Field(default=443, ge=1, le=65535)
    failure_threshold: int = Field(default=3, ge=1, le=10)
    request_interval: int = Field(default=10)

    @model_validator(mode="after")
    def _check(self) -> DnsSettings:
        names = [s.name for s in self.sites]
        problems = []
        if self.active_site not in names:
            problems.append((f"{DNS_KEY}.activeSite",
                             f"'{self.active_site}' is not one of the sites {names}; set it to one of them"))
        if len(set(names)) != len(names):
            problems.append((f"{DNS_KEY}.sites", f"site names must differ, got {names}"))
        if self.request_interval not in (10, 30):
            problems.append((f"{DNS_KEY}.requestInterval", "Route53 accepts 10 or 30 seconds"))
        if problems:
            raise SettingsError(problems)
        return self

    @property
    def standby_site(self) -> str:
        return next(s.name for s in self.sites if s.name != self.active_site)


def is_global_config(raw: Mapping[str, Any]) -> bool:
    return DNS_KEY in raw


def global_settings_from_config(raw: Mapping[str, Any]) -> DnsSettings:
    value = raw.get(DNS_KEY)
    if value is None:
        raise SettingsError([(DNS_KEY, "is required for the global stack; see stacks/Pulumi.global.yaml")])
    others = sorted(k for k in raw if k.startswith(f"{PROJECT}:") and k != DNS_KEY)
    if others:
        raise SettingsError([(k, "the global stack only takes qwen-serving:dns; move it to a site stack")
                             for k in others])
    try:
        data = json.loads(value) if isinstance(value, str) else value
        return DnsSettings.model_validate(data)
    except json.JSONDecodeError:
        raise SettingsError([(DNS_KEY, "is not a JSON object; write it as a YAML mapping")]) from None
    except ValidationError as err:
        nested = [e for e in err.errors() if isinstance(e.get("ctx", {}).get("error"), SettingsError)]
        if nested:
            raise nested[0]["ctx"]["error"] from None
        raise SettingsError([
            (_loc_to_key(("dns", *e["loc"])), f"{e['msg']} (got {e.get('input')!r})") for e in err.errors()
        ]) from None
