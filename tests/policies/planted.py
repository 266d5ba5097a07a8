"""Planted misconfigurations of real stacks for the rules in policies/workloads.py, serving.py and dns.py.

Each case changes one resource of a real offline run (prod, or global for DNS) and names the policy that
must fire (and only it) and a piece of text the violation must carry: the setting or field to change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
STATEFULSET = "kubernetes:apps/v1:StatefulSet"
JOB = "kubernetes:batch/v1:Job"
CRONJOB = "kubernetes:batch/v1:CronJob"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"
RECORD = "aws:route53/record:Record"

Change = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Plant:
    policy: str
    stack: str
    type: str
    name: str
    change: Change
    names_fix: str  # the violation's message must say what to change

    @property
    def id(self) -> str:
        return f"{self.policy}:{self.name}"


def pod(inputs: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload, a Job or a CronJob (its jobTemplate's)."""
    owner = inputs["spec"]["jobTemplate"]["spec"] if "jobTemplate" in inputs["spec"] else inputs["spec"]
    spec: dict[str, Any] = owner["template"]["spec"]
    return spec


def first(inputs: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = pod(inputs)["containers"][0]
    return c


def set_arg(flag: str, value: str | None) -> Change:
    """Replace (value) or drop (None) a `--flag value` pair, or a bare switch when value is ''."""
    def change(inputs: dict[str, Any]) -> None:
        args: list[str] = first(inputs)["args"]
        if flag in args:
            i = args.index(flag)
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            del args[i:i + (2 if has_value else 1)]
        if value is not None:
            args.extend([flag, value] if value else [flag])
    return change


def chain(*changes: Change) -> Change:
    def change(inputs: dict[str, Any]) -> None:
        for c in changes:
            c(inputs)
    return change


def gpu_request(n: str) -> Change:
    def change(inputs: dict[str, Any]) -> None:
        first(inputs)["resources"]["requests"]["nvidia.com/gpu"] = n
        first(inputs)["resources"]["limits"]["nvidia.com/gpu"] = n
    return change


def tolerate_gpus(inputs: dict[str, Any]) -> None:
    pod(inputs)["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def drop_instance_label(inputs: dict[str, Any]) -> None:
    del inputs["metadata"]["labels"]["app.kubernetes.io/instance"]


def no_secrets_include(inputs: dict[str, Any]) -> None:
    inputs["data"] = {k: "\n".join(line for line in v.splitlines() if not line.startswith("include"))
                      for k, v in inputs["data"].items()}


def requirepass_on_the_command_line(inputs: dict[str, Any]) -> None:
    first(inputs)["args"] = [*first(inputs)["args"], "--requirepass", "hunter2"]


def append_off(inputs: dict[str, Any]) -> None:
    inputs["data"] = {k: v.replace("appendonly yes", "appendonly no") for k, v in inputs["data"].items()}


def unbounded_job(inputs: dict[str, Any]) -> None:
    first(inputs)["resources"]["limits"].pop("cpu", None)


def unlimited_retries(inputs: dict[str, Any]) -> None:
    inputs["spec"]["jobTemplate"]["spec"].pop("backoffLimit", None)


def mount_token(inputs: dict[str, Any]) -> None:
    pod(inputs).pop("automountServiceAccountToken", None)


def short_startup(inputs: dict[str, Any]) -> None:
    first(inputs)["startupProbe"]["failureThreshold"] = 12  # 12 x 10 s = 2 minutes


def nccl_p2p_on(inputs: dict[str, Any]) -> None:
    first(inputs)["env"] = [e for e in first(inputs)["env"] if e["name"] != "NCCL_P2P_DISABLE"]


def wrong_rope_original(inputs: dict[str, Any]) -> None:
    yarn = {"rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "yarn"}}
    set_arg("--hf-overrides", json.dumps(yarn))(inputs)


def both_primary(inputs: dict[str, Any]) -> None:
    inputs["failoverRoutingPolicies"] = [{"type": "PRIMARY"}]


def no_health_check(inputs: dict[str, Any]) -> None:
    inputs.pop("healthCheckId", None)


PLANTED_MORE: list[Plant] = [
    Plant("gpu-hosts-run-only-gpu-pods", "prod", DEPLOYMENT, "gateway", tolerate_gpus, "remove the toleration"),
    Plant("workloads-declare-recommended-labels", "prod", STATEFULSET, "redis", drop_instance_label,
          "app.kubernetes.io/instance"),
    Plant("redis-requires-a-password", "prod", CONFIGMAP, "redis-config", no_secrets_include,
          "password_file_include"),
    Plant("redis-requires-a-password", "prod", STATEFULSET, "redis", requirepass_on_the_command_line,
          "on the command line"),
    Plant("redis-persists-its-data", "prod", CONFIGMAP, "redis-config", append_off, "appendonly yes"),
    Plant("jobs-are-bounded", "prod", JOB, "log-retention-setup", unbounded_job, "limits.cpu"),
    Plant("service-account-tokens-only-where-needed", "prod", DEPLOYMENT, "gateway", mount_token,
          "automountServiceAccountToken false"),
    # TP 2 in the args, one GPU requested: the second rank has nowhere to go.
    Plant("tensor-parallel-equals-gpu-request", "prod", DEPLOYMENT, "vllm", gpu_request("1"),
          "inference.tensorParallelSize"),
    Plant("vllm-startup-budget", "prod", DEPLOYMENT, "vllm", short_startup, "inference.startupBudgetSeconds"),
    # 0.35 x 24 GB x 2 = 16.8 GB: the fp16 weights (15.2) and the reserve leave no KV cache.
    Plant("vllm-args-fit-the-gpus", "prod", DEPLOYMENT, "vllm", set_arg("--gpu-memory-utilization", "0.35"),
          "inference.maxModelLen"),
    # rope scaling whose original positions disagree with the model's own.
    Plant("max-model-len-within-the-model", "prod", DEPLOYMENT, "vllm", wrong_rope_original,
          "model.ropeScaling.originalMaxPositionEmbeddings"),
    Plant("prefix-caching-with-session-affinity", "prod", DEPLOYMENT, "vllm",
          chain(set_arg("--enable-prefix-caching", None), set_arg("--no-enable-prefix-caching", "")),
          "inference.enablePrefixCaching"),
    Plant("tensor-parallel-on-consumer-gpus", "prod", DEPLOYMENT, "vllm", nccl_p2p_on, "NCCL_P2P_DISABLE=1"),
    Plant("route53-failover-pairs-have-health-checks", "global", RECORD, "chat-site-b", no_health_check,
          "healthCheckId"),
]

# Further plants for rules with more than one way to be wrong (each must fire, named policy only).
MORE_WAYS: list[Plant] = [
    # the backup CronJob: its Job's limits and retries are read through the jobTemplate
    Plant("jobs-are-bounded", "prod", CRONJOB, "redis-backup", unbounded_job, "limits.cpu"),
    Plant("jobs-are-bounded", "prod", CRONJOB, "redis-backup", unlimited_retries, "backoffLimit"),
    Plant("service-account-tokens-only-where-needed", "prod", CRONJOB, "redis-backup", mount_token,
          "automountServiceAccountToken false"),
    Plant("max-model-len-within-the-model", "prod", DEPLOYMENT, "vllm", set_arg("--max-model-len", "65536"),
          "model.ropeScaling"),
    Plant("vllm-args-fit-the-gpus", "prod", DEPLOYMENT, "vllm",
          chain(set_arg("--tensor-parallel-size", "1"), gpu_request("1"),
                set_arg("--gpu-memory-utilization", "0.75")), "raise tensorParallelSize"),
    Plant("route53-failover-pairs-have-health-checks", "global", RECORD, "chat-site-b", both_primary,
          "exactly one PRIMARY and one SECONDARY"),
]
