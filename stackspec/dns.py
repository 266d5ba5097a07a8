"""Settings of the `global` stack: DNS failover between the sites (Route53 failover records + health checks).

The active site is a setting: failing over on purpose is `pulumi config set --path
qwen-serving:dns.activeSite site-b` and `pulumi up -s global`. Route53 also fails over by itself when the
active site's health check fails.

The global stack and the site stacks it references must agree: each site's `edge.hostname` is the
public name (Route53's record and the health check's SNI), its edge has a load-balancer address and serves
TLS when the health check is HTTPS. `global_settings_from_config` reads the referenced site stack files
(stacks/Pulumi.<stack>.yaml) and checks that too, before any resource.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, model_validator

from stackspec.settings import (
    NAME_RE,
    PROJECT,
    SettingsError,
    StackSettings,
    _loc_to_key,
    _Section,
    settings_from_config,
)
from stackspec.stackfile import read_stack_config, stack_file, with_placeholders

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


def site_stack_name(endpoint: SiteEndpoint) -> str:
    """`org/project/stack` -> `stack` (the file stacks/Pulumi.<stack>.yaml)."""
    return endpoint.stack.rsplit("/", 1)[-1]


def agreement_problems(dns: DnsSettings, sites: Mapping[str, StackSettings]) -> list[tuple[str, str]]:
    """What the global stack and its site stacks (site name -> parsed settings) disagree on."""
    problems: list[tuple[str, str]] = []
    for endpoint in dns.sites:
        s = sites.get(endpoint.name)
        if s is None:
            continue
        stack = site_stack_name(endpoint)
        where = f"{PROJECT}:edge.hostname (stack {stack})"
        if s.edge.hostname != dns.hostname:
            problems.append((
                f"{DNS_KEY}.hostname / {where}",
                f"the global stack serves '{dns.hostname}' but site {endpoint.name}'s edge answers to "
                f"'{s.edge.hostname}' (its server_name and TLS certificate); make them the same name",
            ))
        if s.site.name != endpoint.name:
            problems.append((
                f"{DNS_KEY}.sites / {PROJECT}:site.name (stack {stack})",
                f"the global stack calls it '{endpoint.name}' but the stack's site.name is '{s.site.name}'; "
                "use one name",
            ))
        if not s.edge.load_balancer_ip:
            problems.append((
                f"{PROJECT}:edge.loadBalancerIp (stack {stack})",
                "Route53 health-checks and answers with the edge's public address: set it (and serviceType "
                "LoadBalancer)",
            ))
        if dns.health_check_port == 443 and not s.edge.tls.enabled:
            problems.append((
                f"{PROJECT}:edge.tls.enabled (stack {stack})",
                f"the health check speaks HTTPS on {dns.health_check_port}; enable TLS on the edge",
            ))
    return problems


def read_site_stacks(dns: DnsSettings) -> tuple[dict[str, StackSettings], list[tuple[str, str]]]:
    """Parse each site stack file the global stack references (secrets as placeholders: only the
    non-secret settings are compared)."""
    sites: dict[str, StackSettings] = {}
    problems: list[tuple[str, str]] = []
    for endpoint in dns.sites:
        stack = site_stack_name(endpoint)
        path = stack_file(stack)
        if not path.is_file():
            problems.append((f"{DNS_KEY}.sites", f"site {endpoint.name} references stack '{endpoint.stack}' but there "
                             f"is no {path.name} in stacks/; the global stack is checked against its sites' files"))
            continue
        raw, _ = read_stack_config(path)
        try:
            sites[endpoint.name] = settings_from_config(with_placeholders(raw), check_secrets=False)
        except SettingsError as err:
            problems.append((f"{DNS_KEY}.sites", f"site stack {stack} is invalid ({len(err.problems)} problems): "
                             f"run `make plan STACK={stack}`"))
    return sites, problems


def is_global_config(raw: Mapping[str, Any]) -> bool:
    return DNS_KEY in raw


def global_settings_from_config(raw: Mapping[str, Any], *, check_sites: bool = True) -> DnsSettings:
    """The global stack's settings; with `check_sites`, also its agreement with the site stack files."""
    dns = _parse_dns(raw)
    if check_sites:
        sites, problems = read_site_stacks(dns)
        problems += agreement_problems(dns, sites)
        if problems:
            raise SettingsError(problems)
    return dns


def _parse_dns(raw: Mapping[str, Any]) -> DnsSettings:
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
