"""The global stack: Route53 failover records and health checks in front of site A and site B."""

from __future__ import annotations

from typing import Any

import pytest

from infra.offline import run_stack
from infra.plan import main as plan_main
from stackspec.settings import SettingsError

HEALTH = "aws:route53/healthCheck:HealthCheck"
RECORD = "aws:route53/record:Record"
DNS = {
    "zoneId": "Z0123456789ABCDEFGHIJ", "hostname": "chat.example.com", "activeSite": "site-a",
    "sites": [{"name": "site-a", "stack": "acme/qwen-serving/prod"},
              {"name": "site-b", "stack": "acme/qwen-serving/prod-dr"}],
}


def roles(overrides: dict[str, Any] | None = None) -> dict[str, tuple[str, list[str]]]:
    run = run_stack("global", overrides=overrides)
    return {r.inputs["setIdentifier"]: (r.inputs["failoverRoutingPolicies"][0]["type"], r.inputs["records"])
            for r in run.of_type(RECORD)}


def test_active_site_is_primary_and_addresses_come_from_the_site_stacks() -> None:
    run = run_stack("global")
    checks = run.of_type(HEALTH)
    assert len(checks) == 2
    for check in checks:
        assert check.inputs["type"] == "HTTPS" and check.inputs["resourcePath"] == "/healthz"
        assert check.inputs["failureThreshold"] == 3
    records = {r.inputs["setIdentifier"]: r for r in run.of_type(RECORD)}
    assert records["site-a"].inputs["failoverRoutingPolicies"] == [{"type": "PRIMARY"}]
    assert records["site-b"].inputs["failoverRoutingPolicies"] == [{"type": "SECONDARY"}]
    # The addresses are the edges' load balancer IPs declared in stacks/Pulumi.prod(-dr).yaml.
    assert records["site-a"].inputs["records"] == ["203.0.113.10"]
    assert records["site-b"].inputs["records"] == ["198.51.100.10"]
    by_name = {c.name: c for c in checks}
    assert records["site-a"].inputs["healthCheckId"] == "chat-site-a-id" and "chat-site-a" in by_name
    assert all(r.parent == run.one("qwen-serving:dns:DnsFailover", "chat").urn for r in run.of_type(RECORD))


def test_switching_the_active_site_flips_primary_and_secondary() -> None:
    assert roles()["site-a"][0] == "PRIMARY"
    flipped = roles({"qwen-serving:dns": {**DNS, "activeSite": "site-b"}})
    assert flipped == {"site-a": ("SECONDARY", ["203.0.113.10"]), "site-b": ("PRIMARY", ["198.51.100.10"])}


@pytest.mark.parametrize(("dns", "key"), [
    ({**DNS, "activeSite": "site-c"}, "qwen-serving:dns.activeSite"),
    ({**DNS, "requestInterval": 15}, "qwen-serving:dns.requestInterval"),
    ({**DNS, "sites": DNS["sites"][:1]}, "qwen-serving:dns.sites"),
    ({**DNS, "zoneId": "not-a-zone"}, "qwen-serving:dns.zoneId"),
])
def test_bad_dns_settings_name_the_key(dns: dict[str, Any], key: str) -> None:
    with pytest.raises(SettingsError) as info:
        run_stack("global", overrides={"qwen-serving:dns": dns})
    assert key in str(info.value)


def test_site_settings_in_the_global_stack_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"qwen-serving:inference.*only takes qwen-serving:dns"):
        run_stack("global", overrides={"qwen-serving:inference": {"replicas": 1}})


def test_plan_renders_the_global_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_main(["--stack", "global"]) == 0
    out = capsys.readouterr().out
    assert "qwen-serving:dns:DnsFailover" in out and "active site site-a" in out
