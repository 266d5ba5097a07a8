"""Layer 4, continued: the platform, serving and DNS rules fire on planted misconfigurations of real stacks
and say what to change; enforcement levels are tuned per stack; the serving rule's arithmetic is the
capacity model's."""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import replace
from functools import cache

import pytest

from infra.offline import Captured, OfflineRun, run_stack
from infra.policy_config import policy_config
from policies.runner import evaluate
from policies.serving import FIT_DEFAULTS, replica_kv_tokens
from stackspec.capacity import QWEN25_7B, replica_capacity
from stackspec.settings import SettingsError
from tests.policies.planted import MORE_WAYS, PLANTED_MORE, Plant
from tests.policies.test_policies import PLANTED
from tests.stacks import stack_sections

# A fix is named: a setting (a.b), a field, or a verb telling what to do.
NAMES_A_FIX = re.compile(r"\b(set|remove|pin|add|read|lower|raise|give|use|mount|pass|build|render|list|fix)\b")


@cache
def run(stack: str) -> OfflineRun:
    return run_stack(stack)


def planted(case: Plant) -> list[Captured]:
    resources = []
    for r in run(case.stack).resources:
        if r.type == case.type and r.name == case.name:
            inputs = copy.deepcopy(r.inputs)
            case.change(inputs)
            r = replace(r, inputs=inputs)
        resources.append(r)
    return resources


@pytest.mark.parametrize("case", PLANTED_MORE + MORE_WAYS, ids=lambda c: c.id)
def test_planted_misconfiguration_fires_and_names_the_fix(case: Plant) -> None:
    run(case.stack).one(case.type, case.name)  # the resource exists, so the plant really lands
    violations = evaluate(planted(case), config=policy_config(run(case.stack).site_settings))
    assert violations and {v.policy for v in violations} == {case.policy}, violations
    assert all(case.names_fix in v.message for v in violations), violations
    assert all(v.blocking for v in violations)


@pytest.mark.parametrize("policy", sorted({p[0] for p in PLANTED}))
def test_the_first_rules_name_a_fix_too(policy: str) -> None:
    from tests.policies.test_policies import plant

    for name, type_, res, change in [(p[0], p[1], p[2], p[3]) for p in PLANTED if p[0] == policy]:
        violations = evaluate(plant(type_, res, change), config=policy_config(run("prod").settings))
        assert violations and all(NAMES_A_FIX.search(v.message) for v in violations), (name, violations)


def test_enforcement_is_tuned_per_stack() -> None:
    case = next(c for c in PLANTED_MORE if c.policy == "vllm-startup-budget")
    sections = stack_sections("prod")
    for level, expect in (("advisory", ["advisory"]), ("disabled", []), ("mandatory", ["mandatory"])):
        tuned = run_stack("prod", overrides={"qwen-serving:policies": {"enforcement": {case.policy: level}}})
        assert tuned.settings.policies.enforcement == {case.policy: level}
        violations = evaluate(planted(case), config=policy_config(tuned.settings))
        assert [v.level for v in violations] == expect, violations
    assert "policies" not in sections  # the committed stack runs every rule mandatory


def test_an_unknown_policy_name_is_a_settings_error_naming_the_key() -> None:
    tuned = run_stack("dev", overrides={"qwen-serving:policies": {"enforcement": {"no-such-rule": "advisory"}}})
    with pytest.raises(SettingsError, match=r"qwen-serving:policies\.enforcement\.no-such-rule: no such policy"):
        policy_config(tuned.settings)


def test_serving_facts_come_from_the_capacity_model() -> None:
    facts = policy_config(run("prod").settings)["vllm-args-fit-the-gpus"]
    assert set(facts) == set(FIT_DEFAULTS)
    for quant, tp, util, gb in itertools.product(("none", "awq", "fp8"), (1, 2, 4), (0.5, 0.85, 0.9, 0.95),
                                                 (24.0, 48.0, 80.0)):
        cfg = {**facts, "gpuMemoryGb": gb}
        cap = replica_capacity(QWEN25_7B, quantization=quant, gpu_memory_gb=gb, gpu_memory_utilization=util,
                               tensor_parallel_size=tp, max_model_len=8192,
                               reserve_gb_per_gpu=facts["reserveGbPerGpu"])
        assert replica_kv_tokens(cfg, quantization=quant, utilization=util, tp=tp) == cap.kv_tokens
