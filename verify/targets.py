"""Which stacks and hosts a `make verify` run targets (from its options and the stacks' settings)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from verify import expect


def selected_sites(config: pytest.Config) -> dict[str, Any]:
    sites = expect.every_site()
    stack = config.getoption("--stack")
    if stack is None:
        return sites
    if stack not in sites:
        raise pytest.UsageError(f"--stack {stack}: not a site stack; site stacks: {', '.join(sorted(sites))}")
    return {stack: sites[stack]}


def host_specs(config: pytest.Config, hosts: list[expect.GpuHost]) -> dict[str, str]:
    """GPU host id -> testinfra spec: `ssh://<name>`, or the --gpu-hosts entry whose host name matches."""
    specs = {h.id: f"ssh://{h.name}" for h in hosts}
    given = [s.strip() for s in str(config.getoption("--gpu-hosts") or "").split(",") if s.strip()]
    for spec in given:
        address = urlsplit(spec if "://" in spec else f"ssh://{spec}").hostname or ""
        matches = [h for h in hosts if address in (h.name, h.name.split(".")[0]) or address.split(".")[0] == h.name]
        if not matches:
            names = sorted({h.name for h in hosts})
            raise pytest.UsageError(f"--gpu-hosts {spec}: {address!r} is none of the stack's gpuPool.hosts {names}")
        for h in matches:
            specs[h.id] = spec
    return specs
