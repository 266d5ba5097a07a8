"""Reading Kubernetes objects as the policy engine hands them over (camelCase, numbers possibly floats).

Shared by the rule modules (`workloads.py`, `serving.py`, `dns.py`); imports nothing else of the repository.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pulumi_policy import PolicyConfigSchema

WORKLOADS = {
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
}
JOBS = {"kubernetes:batch/v1:Job", "kubernetes:batch/v1:CronJob"}
GPU = "nvidia.com/gpu"
VLLM_ENTRYPOINTS = ("vllm.entrypoints.openai.api_server", "vllm serve")
RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of",
                      "app.kubernetes.io/managed-by")


def kind(resource_type: str) -> str:
    return resource_type.rsplit(":", 1)[-1]


def pod_template(props: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = props.get("spec") or {}
    if "jobTemplate" in spec:  # CronJob
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return spec.get("template") or {}


def pod_spec(props: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod_template(props).get("spec") or {}


def containers(pod: Mapping[str, Any], *, init: bool = True) -> Iterator[Mapping[str, Any]]:
    if init:
        yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def pod_labels(props: Mapping[str, Any]) -> Mapping[str, Any]:
    return (pod_template(props).get("metadata") or {}).get("labels") or {}


def env_value(container: Mapping[str, Any], name: str) -> str | None:
    for env in container.get("env") or []:
        if env.get("name") == name and "value" in env:
            return str(env["value"])
    return None


def has_env(container: Mapping[str, Any], name: str) -> bool:
    return any(env.get("name") == name for env in container.get("env") or [])


def command_line(container: Mapping[str, Any]) -> list[str]:
    return [str(t) for t in (container.get("command") or [])] + [str(t) for t in (container.get("args") or [])]


def is_vllm(container: Mapping[str, Any]) -> bool:
    line = " ".join(command_line(container))
    return any(entry in line for entry in VLLM_ENTRYPOINTS)


def flag(args: Sequence[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value` (last wins), or None."""
    found = None
    for i, token in enumerate(args):
        if token == f"--{name}" and i + 1 < len(args):
            found = args[i + 1]
        elif token.startswith(f"--{name}="):
            found = token.split("=", 1)[1]
    return found


def switch(args: Sequence[str], name: str) -> bool | None:
    """`--name` -> True, `--no-name` -> False (last wins), absent -> None."""
    state = None
    for token in args:
        if token == f"--{name}":
            state = True
        elif token == f"--no-{name}":
            state = False
    return state


def quantity(value: Any) -> float | None:
    """A Kubernetes count/CPU quantity as a number ('2', 2.0, '500m'); None if absent or not numeric."""
    if value is None:
        return None
    text = str(value)
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def gpus(container: Mapping[str, Any], part: str) -> float | None:
    return quantity(((container.get("resources") or {}).get(part) or {}).get(GPU))


def uses_gpus(pod: Mapping[str, Any]) -> bool:
    return any(gpus(c, "limits") or gpus(c, "requests") for c in containers(pod))


def config_of(args: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The policy's config (from `--policy-pack-config` or the in-process runner) over its defaults."""
    return {**defaults, **dict(args.get_config() or {})}


def schema(defaults: Mapping[str, Any], types: Mapping[str, str]) -> PolicyConfigSchema:
    """A config schema whose defaults are the very values the rule falls back to."""
    return PolicyConfigSchema({k: {"type": types[k], **({} if defaults.get(k) is None else {"default": defaults[k]})}
                               for k in types})
