"""Failover by stack switch, in a safe order, over a thin seam (`Sites`).

    failover TO=site-b:  1. pin DNS to site-b      (global: dns.activeSite)
                         2. promote site-b         (its stack: site.role primary, no redis.replicaOf)
                         3. demote the old primary (its stack: site.role standby, redis.replicaOf = site-b's
                            replication endpoint); applied now when its cluster is reachable, otherwise its
                            config already says standby and `pulumi up` applies it when the cluster is back
    failback:            the same towards the original primary, refused while its replica lags.

Each step is previewed before it is applied; a dry run prints the plan only. The steps are config changes
(`pulumi config set --path`), made by the pure `apply_change` the drill uses too, so what the drill runs is
what the stacks render. The real Pulumi calls live in dr/automation.py (`PulumiSites`); tests and the drill
pass their own `Sites`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from stackspec.dns import DNS_KEY, DnsSettings
from stackspec.settings import PROJECT

GLOBAL = "global"


class FailoverRefused(RuntimeError):
    """The orchestration will not go on; the message says why and what to do."""


@dataclass(frozen=True)
class Change:
    """One `pulumi config set --path <key> <value>` (value None: `pulumi config rm --path <key>`)."""

    stack: str
    key: str  # e.g. qwen-serving:site.role
    value: str | None

    def command(self) -> str:
        if self.value is None:
            return f"pulumi -s {self.stack} config rm --path {self.key}"
        return f"pulumi -s {self.stack} config set --path {self.key} {self.value}"


@dataclass(frozen=True)
class Step:
    what: str
    stack: str
    changes: tuple[Change, ...]
    site: str  # the site this step acts on (GLOBAL for DNS)
    deferrable: bool = False  # applied later when the site is unreachable now


@dataclass(frozen=True)
class ReplicaStatus:
    """A site's Redis as a replica: is its link up, and how many bytes behind its primary is it."""

    role: str  # "master" or "slave"
    link_up: bool
    lag_bytes: int | None


class Sites(Protocol):
    """The seam: what the orchestration needs from the world. PulumiSites (automation.py) is the real one."""

    def configure(self, step: Step) -> None: ...  # `pulumi config set/rm --path` of the step's changes
    def preview(self, step: Step) -> str: ...  # `pulumi preview` of the step's stack: a summary line
    def up(self, step: Step) -> None: ...  # `pulumi up` of the step's stack
    def reachable(self, site: str) -> bool: ...
    def replica_status(self, site: str) -> ReplicaStatus | None: ...
    def dns_active(self) -> str: ...


def apply_change(raw: Mapping[str, Any], change: Change) -> dict[str, Any]:
    """A stack's `{key: value}` config after one `config set/rm --path` (sections are JSON text or objects)."""
    section_key, _, path = change.key.partition(".")
    config = dict(raw)
    section = config.get(section_key, {})
    section = json.loads(section) if isinstance(section, str) else json.loads(json.dumps(section))
    *parents, leaf = path.split(".")
    node = section
    for part in parents:
        node = node.setdefault(part, {})
    if change.value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = change.value
    config[section_key] = json.dumps(section)
    return config


def replication_address(endpoint_ip: str | None, port: int, site: str) -> str:
    if not endpoint_ip:
        raise FailoverRefused(f"site {site} has no redis.replication.loadBalancerIp: its peer could not replicate "
                              "from it; set it in its stack first")
    return f"{endpoint_ip}:{port}"


def plan(dns: DnsSettings, to: str, *, stacks: Mapping[str, str], addresses: Mapping[str, str]) -> list[Step]:
    """The steps that make `to` the active site. `stacks`: site -> stack name; `addresses`: site -> its
    replication endpoint host:port (what the other site's redis.replicaOf must say)."""
    names = [s.name for s in dns.sites]
    if to not in names:
        raise FailoverRefused(f"unknown site {to!r}; the global stack's sites are {names}")
    old = next(n for n in names if n != to)
    site_key, redis_key = f"{PROJECT}:site", f"{PROJECT}:redis"
    return [
        Step(f"pin DNS to {to} (Route53 answers {to} as PRIMARY; {old} no longer takes traffic back when it "
             "turns healthy)", GLOBAL, (Change(GLOBAL, f"{DNS_KEY}.activeSite", to),), GLOBAL),
        Step(f"promote {to}: its Redis becomes the master (REPLICAOF NO ONE by config), its replication "
             "endpoint opens to the peer", stacks[to],
             (Change(stacks[to], f"{site_key}.role", "primary"), Change(stacks[to], f"{redis_key}.replicaOf", None)),
             to),
        Step(f"demote {old}: it comes back as a replica of {to} (never a second master)", stacks[old],
             (Change(stacks[old], f"{site_key}.role", "standby"),
              Change(stacks[old], f"{redis_key}.replicaOf", addresses[to])), old, deferrable=True),
    ]


@dataclass
class Outcome:
    applied: list[Step] = field(default_factory=list)
    deferred: list[Step] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def run(
    steps: list[Step],
    sites: Sites,
    *,
    dry_run: bool = False,
    confirm: Callable[[Step, str], bool] = lambda step, preview: True,
    say: Callable[[str], None] = print,
    failback_from: str | None = None,
) -> Outcome:
    """Preview then apply each step in order. Refuses to promote before DNS is pinned to the target, and (a
    failback) to start while the target's replica lags or its link is down."""
    out = Outcome()

    def note(line: str) -> None:
        out.log.append(line)
        say(line)

    target = steps[0].changes[0].value
    if failback_from is not None:
        status = sites.replica_status(str(target))
        if status is None or status.role != "slave" or not status.link_up or status.lag_bytes != 0:
            raise FailoverRefused(
                f"{target}'s Redis is not an in-sync replica of {failback_from} ({status}); failing back now would "
                "lose the sessions written since. Wait until it has caught up (link up, lag 0) and retry")
    for number, step in enumerate(steps, 1):
        note(f"step {number}/{len(steps)}: {step.what}")
        for change in step.changes:
            note(f"    {change.command()}")
        if dry_run:
            continue
        if step is steps[1] and sites.dns_active() != target:
            raise FailoverRefused(f"DNS is not pinned to {target} yet: promoting it now could leave two masters "
                                  "behind one name; apply step 1 first")
        sites.configure(step)
        if step.deferrable and not sites.reachable(step.site):
            out.deferred.append(step)
            note(f"    {step.site} is unreachable: its config now says standby; run `pulumi up -s {step.stack}` "
                 "when its cluster is back (its Redis then starts as a replica)")
            continue
        preview = sites.preview(step)
        note(f"    preview: {preview}")
        if not confirm(step, preview):
            raise FailoverRefused(f"stopped at step {number} ({step.what}): its config is set but not applied; "
                                  f"`pulumi up -s {step.stack}` applies it, or revert the commands above")
        sites.up(step)
        out.applied.append(step)
    return out
