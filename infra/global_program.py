"""The `global` stack: DNS failover in front of the site stacks (prod = site A, prod-dr = site B)."""

from __future__ import annotations

from functools import partial

import pulumi

from infra.components.dns import DnsFailover, DnsFailoverArgs
from stackspec.dns import DnsSettings

EDGE_ADDRESS_OUTPUT = "edge_address"  # exported by every site stack (infra/program.py)


def _address(value: object, stack: str) -> str:
    if not value:
        raise ValueError(f"stack {stack} exports no {EDGE_ADDRESS_OUTPUT}: set qwen-serving:edge.loadBalancerIp "
                         "there (a public address the health checks can reach) and `pulumi up` it first")
    return str(value)


def declare_global(settings: DnsSettings) -> dict[str, object]:
    addresses: dict[str, pulumi.Input[str]] = {}
    for site in settings.sites:
        ref = pulumi.StackReference(f"site-{site.name}", stack_name=site.stack)
        addresses[site.name] = ref.require_output(EDGE_ADDRESS_OUTPUT).apply(partial(_address, stack=site.stack))
    dns = DnsFailover("chat", DnsFailoverArgs(settings=settings, site_addresses=addresses))
    return {
        "hostname": settings.hostname,
        "active_site": dns.active_site,
        "standby_site": settings.standby_site,
        "health_check_ids": dns.health_check_ids,
    }
