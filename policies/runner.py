"""Run the policy pack in-process over an offline plan (what `pulumi preview --policy-pack` would report).

It takes any resources shaped like `PlannedResource` (infra/offline.py's `Captured` is one), so the
policies depend on nothing of the program: `infra.plan` calls this, never the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any, Protocol

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.rules import POLICIES


class PlannedResource(Protocol):
    """One resource of a plan: what the engine would hand the analyzer."""

    @property
    def type(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def urn(self) -> str: ...
    @property
    def parent(self) -> str: ...
    @property
    def props(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str
    message: str

    def __str__(self) -> str:
        return f"[{self.policy}] {self.resource}: {self.message}"


def _options(resource: PlannedResource) -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], resource.parent or None)


def _settle(result: Any) -> None:
    if isawaitable(result):
        asyncio.run(_await(result))


async def _await(result: Any) -> None:
    await result


def evaluate(resources: Sequence[PlannedResource], policies: list[Any] | None = None) -> list[Violation]:
    """Every violation of every policy over the given resources, sorted."""
    violations: list[Violation] = []
    props = {r.urn: r.props for r in resources}
    names = {r.urn: f"{r.type} {r.name}" for r in resources}
    for policy in policies if policies is not None else POLICIES:
        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                def report(
                    message: str, urn: str | None = None, r: PlannedResource = r, name: str = policy.name
                ) -> None:
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
