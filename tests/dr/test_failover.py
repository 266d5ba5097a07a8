"""The failover orchestration through its seam: order, dry run, and its refusals (dr/failover.py).

`RecordingSites` stands for the Automation API and kubectl (dr/automation.py), which cannot run here; the
config changes themselves are applied with the same `apply_change` and parsed by the real settings model,
so each step's result is checked as the stacks would render it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from dr.failover import GLOBAL, FailoverRefused, ReplicaStatus, Step, apply_change, plan, run
from stackspec.dns import global_settings_from_config, site_stack_name
from stackspec.render.redis import render_redis_conf
from stackspec.settings import settings_from_config
from stackspec.stackfile import read_stack_config, stack_file, with_placeholders

ADDRESSES = {"site-a": "203.0.113.20:6380", "site-b": "198.51.100.20:6380"}


@dataclass
class RecordingSites:
    """Records every call; the stacks' config is kept and changed as `pulumi config set --path` would."""

    configs: dict[str, dict[str, Any]]
    reachable_sites: set[str] = field(default_factory=lambda: {"site-a", "site-b"})
    status: ReplicaStatus | None = None
    pin_dns_on_up: bool = True
    calls: list[tuple[str, str]] = field(default_factory=list)

    def configure(self, step: Step) -> None:
        self.calls.append(("configure", step.stack))
        for change in step.changes:
            self.configs[change.stack] = apply_change(self.configs[change.stack], change)

    def preview(self, step: Step) -> str:
        self.calls.append(("preview", step.stack))
        return "~ 1 to update"

    def up(self, step: Step) -> None:
        self.calls.append(("up", step.stack))

    def reachable(self, site: str) -> bool:
        return site in self.reachable_sites

    def replica_status(self, site: str) -> ReplicaStatus | None:
        return self.status

    def dns_active(self) -> str:
        raw = self.configs[GLOBAL]
        if not self.pin_dns_on_up:
            raw = read_stack_config(stack_file("global"))[0]
        return global_settings_from_config(raw, check_sites=False).active_site


def world() -> tuple[RecordingSites, list[Step]]:
    raw_global = read_stack_config(stack_file("global"))[0]
    dns = global_settings_from_config(raw_global, check_sites=False)
    configs: dict[str, dict[str, Any]] = {GLOBAL: dict(raw_global)}
    for e in dns.sites:
        configs[site_stack_name(e)] = with_placeholders(read_stack_config(stack_file(site_stack_name(e)))[0])
    steps = plan(dns, "site-b", stacks={e.name: site_stack_name(e) for e in dns.sites}, addresses=ADDRESSES)
    return RecordingSites(configs), steps


def test_failover_pins_dns_then_promotes_then_demotes_each_previewed_before_up() -> None:
    sites, steps = world()
    outcome = run(steps, sites, say=lambda line: None)
    assert sites.calls == [
        ("configure", GLOBAL), ("preview", GLOBAL), ("up", GLOBAL),
        ("configure", "prod-dr"), ("preview", "prod-dr"), ("up", "prod-dr"),
        ("configure", "prod"), ("preview", "prod"), ("up", "prod"),
    ]
    assert [s.stack for s in outcome.applied] == [GLOBAL, "prod-dr", "prod"] and not outcome.deferred
    # What the stacks now render: B a primary with the endpoint, A a replica of B over TLS.
    b = settings_from_config(sites.configs["prod-dr"], check_secrets=False)
    a = settings_from_config(sites.configs["prod"], check_secrets=False)
    assert (b.site.role, b.redis.replica_of, b.replication_endpoint) == ("primary", None, True)
    assert (a.site.role, a.redis.replica_of, a.replication_endpoint) == ("standby", ADDRESSES["site-b"], False)
    assert "replicaof 198.51.100.20 6380" in render_redis_conf(a).splitlines()
    assert "replicaof" not in render_redis_conf(b)
    assert global_settings_from_config(sites.configs[GLOBAL], check_sites=False).active_site == "site-b"


def test_dry_run_prints_the_plan_and_touches_nothing() -> None:
    sites, steps = world()
    lines: list[str] = []
    run(steps, sites, dry_run=True, say=lines.append)
    assert sites.calls == []
    text = "\n".join(lines)
    assert text.index("pin DNS to site-b") < text.index("promote site-b") < text.index("demote site-a")
    assert "pulumi -s global config set --path qwen-serving:dns.activeSite site-b" in text
    assert "pulumi -s prod-dr config rm --path qwen-serving:redis.replicaOf" in text
    assert f"pulumi -s prod config set --path qwen-serving:redis.replicaOf {ADDRESSES['site-b']}" in text


def test_refuses_to_promote_before_dns_is_pinned() -> None:
    sites, steps = world()
    sites.pin_dns_on_up = False  # the DNS update did not take
    with pytest.raises(FailoverRefused, match="DNS is not pinned"):
        run(steps, sites, say=lambda line: None)
    assert ("up", "prod-dr") not in sites.calls and ("configure", "prod-dr") not in sites.calls


def test_an_unreachable_old_primary_is_configured_as_standby_and_its_up_deferred() -> None:
    sites, steps = world()
    sites.reachable_sites = {"site-b"}
    outcome = run(steps, sites, say=lambda line: None)
    assert [s.stack for s in outcome.deferred] == ["prod"] and ("up", "prod") not in sites.calls
    assert settings_from_config(sites.configs["prod"], check_secrets=False).site.role == "standby"


@pytest.mark.parametrize("status", [
    None,  # unreachable
    ReplicaStatus("slave", True, 4096),  # lagging
    ReplicaStatus("slave", False, 0),  # link down
    ReplicaStatus("master", False, None),  # not a replica at all (a second master)
])
def test_failback_is_refused_unless_the_target_is_an_in_sync_replica(status: ReplicaStatus | None) -> None:
    sites, steps = world()
    sites.status = status
    with pytest.raises(FailoverRefused, match="in-sync replica"):
        run(steps, sites, failback_from="site-a", say=lambda line: None)
    assert sites.calls == []


def test_failback_goes_ahead_once_caught_up() -> None:
    sites, steps = world()
    sites.status = ReplicaStatus("slave", True, 0)
    assert len(run(steps, sites, failback_from="site-a", say=lambda line: None).applied) == 3


def test_declining_a_step_stops_before_its_up() -> None:
    sites, steps = world()
    with pytest.raises(FailoverRefused, match="stopped at step 2"):
        run(steps, sites, confirm=lambda step, preview: step.stack == GLOBAL, say=lambda line: None)
    assert ("up", "prod-dr") not in sites.calls


def test_unknown_target_is_refused() -> None:
    _, _ = world()
    dns = global_settings_from_config(read_stack_config(stack_file("global"))[0], check_sites=False)
    with pytest.raises(FailoverRefused, match="unknown site"):
        plan(dns, "site-c", stacks={}, addresses=ADDRESSES)
