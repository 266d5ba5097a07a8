"""The policy pack's config for one stack: what `pulumi preview --policy-pack-config <file>` reads.

It joins the two things the pack cannot know by itself (it imports nothing of ours): the stack's
enforcement levels (`qwen-serving:policies.enforcement`) and the facts the serving rules check against —
the capacity model's inputs (stackspec/capacity.py) and the GPU pool's label, taint and host sizes.
`make plan` writes it to build/plan/<stack>/policy-config.json; CI passes that file to `pulumi preview`.
"""

from __future__ import annotations

from typing import Any

from policies.rules import POLICIES
from policies.runner import Violation, evaluate
from stackspec.settings import PROJECT, SettingsError, StackSettings


def policy_config(settings: StackSettings | None) -> dict[str, Any]:
    """The pack's config for a site stack (None: the global stack, all defaults)."""
    if settings is None:
        return {}
    known = {p.name for p in POLICIES}
    unknown = sorted(set(settings.policies.enforcement) - known)
    if unknown:
        raise SettingsError([(f"{PROJECT}:policies.enforcement.{name}",
                              f"no such policy; the pack has {', '.join(sorted(known))}") for name in unknown])
    shape, pool, inf = settings.model.shape, settings.gpu_pool, settings.inference
    facts: dict[str, dict[str, Any]] = {
        "gpu-hosts-run-only-gpu-pods": {"gpuNodeLabel": pool.node_label, "gpuTaintKey": pool.taint_key},
        "tensor-parallel-equals-gpu-request": {"maxGpusPerHost": max(h.gpus for h in pool.hosts)},
        "vllm-args-fit-the-gpus": {
            "gpuMemoryGb": pool.gpu_memory_gb,
            "reserveGbPerGpu": inf.reserve_gb_per_gpu,
            "kvBytesPerToken": shape.kv_bytes_per_token,
            "weightBytes": dict(shape.weight_bytes),
        },
        "max-model-len-within-the-model": {"nativeMaxPositions": shape.native_max_positions},
    }
    config: dict[str, Any] = {}
    for policy in POLICIES:
        entry = dict(facts.get(policy.name, {}))
        level = settings.policies.enforcement.get(policy.name)
        if level is not None:
            entry["enforcementLevel"] = level
        if entry:
            config[policy.name] = entry
    return config


def evaluate_run(run: Any) -> list[Violation]:
    """The pack over an offline run (infra.offline.OfflineRun) with that stack's config."""
    return evaluate(run.resources, config=policy_config(run.site_settings))
