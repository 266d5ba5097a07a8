"""Rules only an LLM-serving repository can have: vLLM's arguments against its GPUs and its model.

The model and GPU facts arrive as policy config (the capacity model's inputs, `stackspec/capacity.py`),
rendered per stack by `infra/policy_config.py` into `build/plan/<stack>/policy-config.json` for
`pulumi preview --policy-pack policies --policy-pack-config ...`; the in-process runner passes the same.
The arithmetic restates `replica_capacity` (policies import nothing of ours); tests/policies pins the two equal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.kube import (
    GPU,
    WORKLOADS,
    command_line,
    config_of,
    containers,
    env_value,
    flag,
    gpus,
    has_env,
    is_vllm,
    pod_spec,
    schema,
    switch,
)

GB = 1_000_000_000
NO_FACTS = ("no {what} in this policy's config: run `make plan STACK=<stack>` and pass "
            "`--policy-pack-config build/plan/<stack>/policy-config.json`")

TP_DEFAULTS: dict[str, Any] = {"maxGpusPerHost": None}
STARTUP_DEFAULTS: dict[str, Any] = {"minStartupSeconds": 600}
FIT_DEFAULTS: dict[str, Any] = {"gpuMemoryGb": None, "reserveGbPerGpu": None, "kvBytesPerToken": None,
                                "weightBytes": None}
LEN_DEFAULTS: dict[str, Any] = {"nativeMaxPositions": None}
AFFINITY_DEFAULTS: dict[str, Any] = {"routerEnv": ["GATEWAY_BACKENDS_DNS", "GATEWAY_BACKENDS"]}
P2P_DEFAULTS: dict[str, Any] = {"p2pBroken": True}


def _vllm(args: ResourceValidationArgs) -> list[tuple[Mapping[str, Any], Mapping[str, Any], list[str]]]:
    """(pod, container, command line) of each vLLM server in a workload."""
    if args.resource_type not in WORKLOADS:
        return []
    pod = pod_spec(args.props)
    return [(pod, c, command_line(c)) for c in containers(pod, init=False) if is_vllm(c)]


def _int(value: str | None, default: int) -> int:
    try:
        return int(float(value)) if value is not None else default
    except ValueError:
        return default


def tensor_parallel_equals_gpu_request(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cfg = config_of(args, TP_DEFAULTS)
    for pod, c, line in _vllm(args):
        tp = _int(flag(line, "tensor-parallel-size"), 1) * _int(flag(line, "pipeline-parallel-size"), 1)
        want = {"requests": gpus(c, "requests"), "limits": gpus(c, "limits")}
        for part, have in want.items():
            if have != tp:
                report(f"vLLM '{c.get('name')}' runs {tp} GPU rank(s) (--tensor-parallel-size) but its "
                       f"resources.{part}['{GPU}'] is {have}: set both to {tp} (inference.tensorParallelSize)", None)
        others = sum(gpus(o, "limits") or 0 for o in containers(pod) if o is not c)
        if others:
            report(f"other containers in the vLLM pod '{args.name}' take {others:g} GPU(s): only the vLLM "
                   "container may; remove their GPU resources", None)
        if cfg["maxGpusPerHost"] is not None and tp > int(cfg["maxGpusPerHost"]):
            report(f"vLLM '{c.get('name')}' needs {tp} GPUs on one host but the pool's largest host has "
                   f"{cfg['maxGpusPerHost']}: lower inference.tensorParallelSize or add bigger hosts", None)


def vllm_startup_budget(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cfg = config_of(args, STARTUP_DEFAULTS)
    for _, c, _ in _vllm(args):
        probe = c.get("startupProbe")
        if not probe:
            report(f"vLLM '{c.get('name')}' has no startupProbe: loading weights and warming up takes minutes and "
                   "the liveness probe would kill it first; add a startupProbe on /health", None)
            continue
        budget = (float(probe.get("initialDelaySeconds") or 0)
                  + float(probe.get("periodSeconds") or 10) * float(probe.get("failureThreshold") or 3))
        if budget < cfg["minStartupSeconds"]:
            report(f"vLLM '{c.get('name')}' gets {budget:.0f} s to start (startupProbe periodSeconds x "
                   f"failureThreshold) but needs >= {cfg['minStartupSeconds']} s: raise "
                   "inference.startupBudgetSeconds", None)


def replica_kv_tokens(cfg: Mapping[str, Any], *, quantization: str, utilization: float, tp: int) -> int:
    """KV-cache tokens of one replica: what stackspec.capacity.replica_capacity computes, from config facts."""
    usable = int(float(cfg["gpuMemoryGb"]) * GB * utilization) * tp
    weights = int(cfg["weightBytes"][quantization])
    reserve = int(float(cfg["reserveGbPerGpu"]) * GB) * tp
    return max(usable - weights - reserve, 0) // int(cfg["kvBytesPerToken"])


def vllm_args_fit_the_gpus(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cfg = config_of(args, FIT_DEFAULTS)
    for _, c, line in _vllm(args):
        if any(cfg[k] is None for k in FIT_DEFAULTS):
            report(NO_FACTS.format(what="GPU/model capacity facts"), None)
            return
        quantization = flag(line, "quantization") or "none"
        if quantization not in cfg["weightBytes"]:
            report(f"vLLM '{c.get('name')}' uses --quantization {quantization}, which the capacity model does "
                   f"not know ({', '.join(sorted(cfg['weightBytes']))}); use one of those", None)
            continue
        tp = _int(flag(line, "tensor-parallel-size"), 1)
        utilization = float(flag(line, "gpu-memory-utilization") or 0.9)
        max_len = _int(flag(line, "max-model-len"), 0)
        tokens = replica_kv_tokens(cfg, quantization=quantization, utilization=utilization, tp=tp)
        if max_len <= 0 or tokens < max_len:
            report(f"vLLM '{c.get('name')}' cannot hold one sequence of --max-model-len {max_len}: TP {tp} x "
                   f"{cfg['gpuMemoryGb']} GB at --gpu-memory-utilization {utilization} leaves KV cache for "
                   f"{tokens} tokens; lower inference.maxModelLen, raise tensorParallelSize or quantize", None)


def max_model_len_within_the_model(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cfg = config_of(args, LEN_DEFAULTS)
    for _, c, line in _vllm(args):
        if cfg["nativeMaxPositions"] is None:
            report(NO_FACTS.format(what="nativeMaxPositions"), None)
            return
        native = int(cfg["nativeMaxPositions"])
        overrides = flag(line, "hf-overrides")
        rope: Mapping[str, Any] = {}
        if overrides:
            try:
                rope = json.loads(overrides).get("rope_scaling") or {}
            except (ValueError, AttributeError):
                report(f"vLLM '{c.get('name')}' --hf-overrides is not a JSON object: {overrides!r}", None)
        factor = float(rope.get("factor") or 1) if rope.get("rope_type") == "yarn" else 1.0
        allowed = int(native * factor)
        max_len = _int(flag(line, "max-model-len"), native)
        if max_len > allowed:
            how = ("raise model.ropeScaling.factor" if factor > 1 else
                   "set model.ropeScaling (YaRN, factor = maxModelLen / native positions)")
            report(f"vLLM '{c.get('name')}' --max-model-len {max_len} exceeds the {allowed} positions the model "
                   f"allows ({native} native x rope factor {factor:g}); vLLM refuses to start: lower "
                   f"inference.maxModelLen or {how}", None)
        if rope and int(rope.get("original_max_position_embeddings") or native) != native:
            report(f"vLLM '{c.get('name')}' sets rope_scaling.original_max_position_embeddings "
                   f"{rope.get('original_max_position_embeddings')} but the model has {native}: fix "
                   "model.ropeScaling.originalMaxPositionEmbeddings", None)


def prefix_caching_with_session_affinity(args: StackValidationArgs, report: ReportViolation) -> None:
    cfg = config_of(args, AFFINITY_DEFAULTS)
    routers = [r for r in args.resources if r.resource_type in WORKLOADS
               and any(has_env(c, e) for c in containers(pod_spec(r.props)) for e in cfg["routerEnv"])]
    if not routers:
        return
    for r in args.resources:
        if r.resource_type not in WORKLOADS:
            continue
        for c in containers(pod_spec(r.props), init=False):
            if is_vllm(c) and switch(command_line(c), "enable-prefix-caching") is not True:
                report(f"vLLM '{r.name}' runs without --enable-prefix-caching while the gateway ('{routers[0].name}')"
                       " routes each session to the same replica: the affinity buys nothing; set "
                       "inference.enablePrefixCaching true", r.urn)


def tensor_parallel_on_consumer_gpus(args: ResourceValidationArgs, report: ReportViolation) -> None:
    cfg = config_of(args, P2P_DEFAULTS)
    for pod, c, line in _vllm(args):
        if _int(flag(line, "tensor-parallel-size"), 1) <= 1:
            continue
        if cfg["p2pBroken"] and env_value(c, "NCCL_P2P_DISABLE") != "1":
            report(f"vLLM '{c.get('name')}' runs tensor parallel on GPUs whose peer-to-peer hangs NCCL (RTX "
                   "4090-class): set env NCCL_P2P_DISABLE=1", None)
        memory_volumes = {v.get("name") for v in pod.get("volumes") or []
                          if (v.get("emptyDir") or {}).get("medium") == "Memory"}
        if not any(m.get("mountPath") == "/dev/shm" and m.get("name") in memory_volumes
                   for m in c.get("volumeMounts") or []):
            report(f"vLLM '{c.get('name')}' runs tensor parallel without a memory-backed /dev/shm (the runtime's "
                   "64 MB default breaks NCCL): mount an emptyDir with medium Memory at /dev/shm", None)


MANDATORY = EnforcementLevel.MANDATORY

SERVING_POLICIES: list[Policy] = [
    ResourceValidationPolicy("tensor-parallel-equals-gpu-request", "vLLM requests and limits exactly its "
                             "tensor-parallel GPUs, on one host", tensor_parallel_equals_gpu_request, MANDATORY,
                             config_schema=schema(TP_DEFAULTS, {"maxGpusPerHost": "integer"})),
    ResourceValidationPolicy("vllm-startup-budget", "vLLM's startupProbe allows >= 10 minutes to load",
                             vllm_startup_budget, MANDATORY,
                             config_schema=schema(STARTUP_DEFAULTS, {"minStartupSeconds": "number"})),
    ResourceValidationPolicy("vllm-args-fit-the-gpus", "vLLM's TP, memory utilisation and max length leave KV "
                             "cache for a full sequence (capacity model)", vllm_args_fit_the_gpus, MANDATORY,
                             config_schema=schema(FIT_DEFAULTS, {"gpuMemoryGb": "number",
                                                                 "reserveGbPerGpu": "number",
                                                                 "kvBytesPerToken": "integer",
                                                                 "weightBytes": "object"})),
    ResourceValidationPolicy("max-model-len-within-the-model", "--max-model-len within the model's positions "
                             "x rope scaling", max_model_len_within_the_model, MANDATORY,
                             config_schema=schema(LEN_DEFAULTS, {"nativeMaxPositions": "integer"})),
    StackValidationPolicy("prefix-caching-with-session-affinity", "vLLM caches prefixes where the gateway "
                          "routes sessions by affinity", prefix_caching_with_session_affinity, MANDATORY,
                          config_schema=schema(AFFINITY_DEFAULTS, {"routerEnv": "array"})),
    ResourceValidationPolicy("tensor-parallel-on-consumer-gpus", "Tensor parallel on 4090s: NCCL_P2P_DISABLE=1 "
                             "and a memory-backed /dev/shm", tensor_parallel_on_consumer_gpus, MANDATORY,
                             config_schema=schema(P2P_DEFAULTS, {"p2pBroken": "boolean"})),
]
