"""Run the policy pack in-process over an offline plan (what `pulumi preview --policy-pack` would report).

It takes any resources shaped like `PlannedResource` (infra/offline.py's `Captured` is one), so the
policies depend on nothing of the program: `infra.plan` calls this, never the other way round.

`config` is what `pulumi preview --policy-pack-config <file>` reads: `{"all": <level>, "<policy>": <level> |
{"enforcementLevel": <level>, <property>: <value>, ...}}`. A policy whose level is `disabled` does not run;
every violation carries its policy's level, and only `mandatory` ones fail a plan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any, Protocol

from pulumi_policy import (
    EnforcementLevel,
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
    level: str = EnforcementLevel.MANDATORY.value

    @property
    def blocking(self) -> bool:
        return self.level == EnforcementLevel.MANDATORY.value

    def __str__(self) -> str:
        return f"[{self.policy}] ({self.level}) {self.resource}: {self.message}"


def policy_settings(policy: Any, config: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(enforcement level, the policy's config properties) as the CLI would resolve them from `config`."""
    config = config or {}
    level = policy.enforcement_level.value if policy.enforcement_level else EnforcementLevel.ADVISORY.value
    if isinstance(config.get("all"), str):
        level = config["all"]
    own = config.get(policy.name)
    props: dict[str, Any] = {}
    if isinstance(own, str):
        level = own
    elif isinstance(own, Mapping):
        props = {k: v for k, v in own.items() if k != "enforcementLevel"}
        level = str(own.get("enforcementLevel", level))
    return EnforcementLevel(level).value, props


def _options(resource: PlannedResource) -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], resource.parent or None)


def _settle(result: Any) -> None:
    if isawaitable(result):
        asyncio.run(_await(result))


async def _await(result: Any) -> None:
    await result


def evaluate(
    resources: Sequence[PlannedResource],
    policies: list[Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> list[Violation]:
    """Every violation of every enabled policy over the given resources, sorted."""
    violations: list[Violation] = []
    props = {r.urn: r.props for r in resources}
    names = {r.urn: f"{r.type} {r.name}" for r in resources}
    for policy in policies if policies is not None else POLICIES:
        level, own = policy_settings(policy, config)
        if level == EnforcementLevel.DISABLED.value:
            continue
        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                def report(
                    message: str, urn: str | None = None, r: PlannedResource = r, name: str = policy.name,
                    level: str = level,
                ) -> None:
                    violations.append(Violation(name, f"{r.type} {r.name}", message, level))

                args = ResourceValidationArgs(r.type, props[r.urn], r.urn, r.name, _options(r), None, own)
                _settle(policy.validate(args, report))
        elif isinstance(policy, StackValidationPolicy):
            stack = [PolicyResource(r.type, props[r.urn], r.urn, r.name, _options(r), None, None, [], {})
                     for r in resources]

            def report_stack(
                message: str, urn: str | None = None, name: str = policy.name, level: str = level
            ) -> None:
                violations.append(Violation(name, names.get(urn or "", "(stack)"), message, level))

            _settle(policy.validate(StackValidationArgs(stack, own), report_stack))
    return sorted(violations, key=lambda v: (v.policy, v.resource, v.message))
