"""DNS failover guard rails (the `global` stack): Route53 failover pairs that can actually fail over."""

from __future__ import annotations

from collections import defaultdict

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)

RECORD = "aws:route53/record:Record"


def route53_failover_pairs_have_health_checks(args: StackValidationArgs, report: ReportViolation) -> None:
    names: dict[tuple[str, str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for r in args.resources:
        if r.resource_type != RECORD:
            continue
        policies = r.props.get("failoverRoutingPolicies") or []
        if not policies:
            continue
        key = (str(r.props.get("zoneId")), str(r.props.get("name")), str(r.props.get("type")))
        role = str((policies[0] or {}).get("type", ""))
        names[key].append((role, r.name, r.urn))
        if not r.props.get("healthCheckId"):
            report(f"failover record '{r.name}' ({role}) has no health check: Route53 would never fail over "
                   "from it (or to a dead site); give it healthCheckId", r.urn)
    for (_, name, type_), records in sorted(names.items()):
        roles = sorted(role for role, _, _ in records)
        if roles != ["PRIMARY", "SECONDARY"]:
            report(f"failover {type_} records for '{name}' are {roles}: exactly one PRIMARY and one SECONDARY "
                   "(dns.activeSite picks the primary)", records[0][2])


DNS_POLICIES: list[Policy] = [
    StackValidationPolicy("route53-failover-pairs-have-health-checks", "Each failover name has one PRIMARY and "
                          "one SECONDARY record, each with a health check",
                          route53_failover_pairs_have_health_checks, EnforcementLevel.MANDATORY),
]
