"""Run the policy pack in-process over an offline plan (what `pulumi preview --policy-pack` would report)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra.offline import Captured, unwrap_secrets
from policies.rules import POLICIES


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str
    message: str

    def __str__(self) -> str:
        return f"[{self.policy}] {self.resource}: {self.message}"


def _options(resource: Captured) -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], resource.parent or None)


def _settle(result: Any) -> None:
    if isawaitable(result):
        asyncio.run(_await(result))


async def _await(result: Any) -> None:
    await result


def evaluate(resources: list[Captured], policies: list[Any] | None = None) -> list[Violation]:
    """Every violation of every policy over the given resources, sorted."""
    violations: list[Violation] = []
    props = {r.urn: unwrap_secrets(r.inputs) for r in resources}
    names = {r.urn: f"{r.type} {r.name}" for r in resources}
    for policy in policies if policies is not None else POLICIES:
        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                def report(message: str, urn: str | None = None, r: Captured = r, name: str = policy.name) -> None:
                    violations.append(Violation(name, f"{r.type} {r.name}", message))

                args = ResourceValidationArgs(r.type, props[r.urn], r.urn, r.name, _options(r), None)
                _settle(policy.validate(args, report))
        elif isinstance(policy, StackValidationPolicy):
            stack = [PolicyResource(r.type, props[r.urn], r.urn, r.name, _options(r), None, None, [], {})
                     for r in resources]

            def report_stack(message: str, urn: str | None = None, name: str = policy.name) -> None:
                violations.append(Violation(name, names.get(urn or "", "(stack)"), message))

            _settle(policy.validate(StackValidationArgs(stack), report_stack))
    return sorted(violations, key=lambda v: (v.policy, v.resource, v.message))
