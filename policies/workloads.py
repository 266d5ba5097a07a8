"""Platform guard rails for any workload: GPU hosts kept for GPU pods, recommended labels, Redis that keeps
its data behind a password, bounded Jobs, service-account tokens only where a pod talks to the API server.

Collected by `policies/rules.py`; every rule says what is wrong and what to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.kube import (
    GPU,
    JOBS,
    RECOMMENDED_LABELS,
    WORKLOADS,
    command_line,
    config_of,
    containers,
    kind,
    pod_labels,
    pod_spec,
    schema,
    uses_gpus,
)

GPU_POOL_DEFAULTS: dict[str, Any] = {"gpuNodeLabel": "qwen-serving.io/gpu-pool", "gpuTaintKey": GPU}
TOKEN_DEFAULTS: dict[str, Any] = {"allowedApps": []}


# The one named exception: the model manifest CronJob (stackspec.settings.MODEL_MANIFEST_CRONJOB; the pack
# keeps no import of ours) reads the model cache on a GPU host. Admitted as a Job or CronJob only, with every
# hostPath or claim mounted read-only and CPU and memory bounded (jobs-are-bounded): it only reads files.
MODEL_MANIFEST = "model-manifest"


def _is_the_model_manifest_job(args: ResourceValidationArgs, pod: Mapping[str, Any]) -> bool:
    if args.resource_type not in JOBS or pod_labels(args.props).get("app.kubernetes.io/name") != MODEL_MANIFEST:
        return False
    stored = {v.get("name") for v in pod.get("volumes") or [] if "hostPath" in v or "persistentVolumeClaim" in v}
    mounts = [m for c in containers(pod) for m in c.get("volumeMounts") or [] if m.get("name") in stored]
    return all(m.get("readOnly") is True for m in mounts)


def gpu_hosts_run_only_gpu_pods(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in WORKLOADS | JOBS:
        return
    cfg = config_of(args, GPU_POOL_DEFAULTS)
    pod = pod_spec(args.props)
    if uses_gpus(pod) or _is_the_model_manifest_job(args, pod):
        return
    taint = cfg["gpuTaintKey"]
    for t in pod.get("tolerations") or []:
        if t.get("key") == taint or (not t.get("key") and t.get("operator") == "Exists"):
            report(f"{kind(args.resource_type)} '{args.name}' requests no {GPU} but tolerates the '{taint}' taint: "
                   "it could take a GPU host's CPU and memory from vLLM; remove the toleration", None)
    if cfg["gpuNodeLabel"] in (pod.get("nodeSelector") or {}):
        report(f"{kind(args.resource_type)} '{args.name}' requests no {GPU} but selects the GPU pool "
               f"('{cfg['gpuNodeLabel']}'): remove that nodeSelector", None)


def workloads_declare_recommended_labels(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in WORKLOADS | JOBS | {"kubernetes:core/v1:Service"}:
        return
    where: list[tuple[str, Mapping[str, Any]]] = [("metadata.labels",
                                                   (args.props.get("metadata") or {}).get("labels") or {})]
    if args.resource_type != "kubernetes:core/v1:Service":
        where.append(("the pod template's labels", pod_labels(args.props)))
    for place, labels in where:
        missing = [k for k in RECOMMENDED_LABELS if not labels.get(k)]
        if missing:
            report(f"{kind(args.resource_type)} '{args.name}' lacks {', '.join(missing)} in {place}: dashboards, "
                   "alerts and `kubectl -l` select on them; build labels with infra/components/labels.py", None)


def _redis_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in containers(pod) if (command_line(c) or [""])[0] == "redis-server"]


def _mounted_config_maps(pod: Mapping[str, Any], mounts: Mapping[str, str]) -> list[str]:
    return [str((v.get("configMap") or {}).get("name")) for v in pod.get("volumes") or []
            if v.get("configMap") and v.get("name") in mounts]


def _secret_mount_paths(pod: Mapping[str, Any], mounts: Mapping[str, str]) -> list[str]:
    """Where the container mounts a Secret (a secret volume, or a projected one of Secrets only)."""
    def is_secret(v: Mapping[str, Any]) -> bool:
        sources = (v.get("projected") or {}).get("sources") or []
        return bool(v.get("secret")) or (bool(sources) and all(s.get("secret") for s in sources))
    return [mounts[str(v.get("name"))] for v in pod.get("volumes") or [] if v.get("name") in mounts and is_secret(v)]


def _redis_workloads(args: StackValidationArgs
                     ) -> Iterator[tuple[PolicyResource, Mapping[str, Any], Mapping[str, Any]]]:
    """Every redis-server container of the stack, with its workload and pod spec."""
    for r in args.resources:
        if r.resource_type in WORKLOADS:
            pod = pod_spec(r.props)
            for c in _redis_containers(pod):
                yield r, pod, c


def redis_requires_a_password(args: StackValidationArgs, report: ReportViolation) -> None:
    """redis.conf includes its secret lines (requirepass) from a file of a mounted Secret; never argv."""
    config_maps = _config_maps(args)
    for r, pod, c in _redis_workloads(args):
        if "--requirepass" in command_line(c):
            report(f"redis-server in '{r.name}' takes its password on the command line (visible in the pod "
                   "spec and `ps`): put requirepass in a file of the redis Secret that redis.conf includes", r.urn)
        mounts = {str(m.get("name")): str(m.get("mountPath")) for m in c.get("volumeMounts") or []}
        text = "\n".join(str(value) for name in _mounted_config_maps(pod, mounts)
                         for value in config_maps.get(name, {}).values())
        includes = re.findall(r'^\s*include\s+"?([^"\s]+)"?\s*$', text, re.MULTILINE)
        secret_dirs = _secret_mount_paths(pod, mounts)
        if not any(path.startswith(d.rstrip("/") + "/") for path in includes for d in secret_dirs):
            report(f"redis-server in '{r.name}' includes no secrets file from a mounted Secret: sessions and "
                   "rate limits would be open to any pod; render redis.conf with password_file_include under "
                   "the redis Secret's mount (infra/components/redis.py)", r.urn)


def _config_maps(args: StackValidationArgs) -> dict[str, Mapping[str, Any]]:
    return {str((r.props.get("metadata") or {}).get("name") or r.name): r.props.get("data") or {}
            for r in args.resources if r.resource_type == "kubernetes:core/v1:ConfigMap"}


def redis_persists_its_data(args: StackValidationArgs, report: ReportViolation) -> None:
    config_maps = _config_maps(args)
    for r, pod, c in _redis_workloads(args):
        claims = {str((t.get("metadata") or {}).get("name"))
                  for t in (r.props.get("spec") or {}).get("volumeClaimTemplates") or []}
        claims |= {str(v.get("name")) for v in pod.get("volumes") or [] if v.get("persistentVolumeClaim")}
        mounts = {str(m.get("name")): str(m.get("mountPath")) for m in c.get("volumeMounts") or []}
        if not claims & set(mounts):
            report(f"redis-server in '{r.name}' has no persistent volume mounted: a restart loses every "
                   "session; mount a volumeClaimTemplate at its data directory (redis.storageSize)", r.urn)
        text = "\n".join(str(value) for name in _mounted_config_maps(pod, mounts)
                         for value in config_maps.get(name, {}).values())
        if not re.search(r"^\s*appendonly\s+yes\s*$", text, re.MULTILINE):
            report(f"redis-server in '{r.name}' runs without 'appendonly yes' in its mounted redis.conf: "
                   "acknowledged session turns could be lost on restart; render it with "
                   "stackspec/render/redis.py", r.urn)


def jobs_are_bounded(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in JOBS:
        return
    for c in containers(pod_spec(args.props)):
        res = c.get("resources") or {}
        missing = [f"{part}.{key}" for part in ("requests", "limits") for key in ("cpu", "memory")
                   if not (res.get(part) or {}).get(key)]
        if missing:
            report(f"Job container '{c.get('name')}' lacks {', '.join(missing)}: a one-off task has no latency to "
                   "protect, so bound it completely", None)
    spec = args.props.get("spec") or {}
    if "jobTemplate" in spec:  # a CronJob: the Job it makes carries the limit
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    if spec.get("backoffLimit") is None:
        report(f"Job '{args.name}' has no backoffLimit: set one so a failing task stops retrying", None)


def service_account_tokens_only_where_needed(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in WORKLOADS | JOBS:
        return
    cfg = config_of(args, TOKEN_DEFAULTS)
    app = str(pod_labels(args.props).get("app.kubernetes.io/name", ""))
    if app in cfg["allowedApps"]:
        return
    if pod_spec(args.props).get("automountServiceAccountToken") is not False:
        report(f"{kind(args.resource_type)} '{args.name}' mounts a service-account token it does not use: set "
               "automountServiceAccountToken false (or list the app in this policy's allowedApps)", None)


MANDATORY = EnforcementLevel.MANDATORY

WORKLOAD_POLICIES: list[Policy] = [
    ResourceValidationPolicy("gpu-hosts-run-only-gpu-pods", "Pods without GPUs neither tolerate the GPU taint nor "
                             "select the GPU pool", gpu_hosts_run_only_gpu_pods, MANDATORY,
                             config_schema=schema(GPU_POOL_DEFAULTS, {"gpuNodeLabel": "string",
                                                                      "gpuTaintKey": "string"})),
    ResourceValidationPolicy("workloads-declare-recommended-labels", "Workloads, Jobs and Services carry the "
                             "app.kubernetes.io/* labels", workloads_declare_recommended_labels, MANDATORY),
    StackValidationPolicy("redis-requires-a-password", "redis.conf includes requirepass from a mounted Secret",
                          redis_requires_a_password, MANDATORY),
    StackValidationPolicy("redis-persists-its-data", "redis-server has a persistent volume and appendonly yes",
                          redis_persists_its_data, MANDATORY),
    ResourceValidationPolicy("jobs-are-bounded", "Jobs set CPU/memory requests and limits and a backoffLimit",
                             jobs_are_bounded, MANDATORY),
    ResourceValidationPolicy("service-account-tokens-only-where-needed", "Pods do not mount an API token they "
                             "do not use", service_account_tokens_only_where_needed, MANDATORY,
                             config_schema=schema(TOKEN_DEFAULTS, {"allowedApps": "array"})),
]
