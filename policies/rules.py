"""Guard rails every stack must pass, as CrossGuard policies over Kubernetes resources.

Props arrive as the engine sends them: camelCase keys, numbers possibly floats. Each rule says what is
wrong and how to fix it. `policies/__main__.py` wraps `POLICIES` in a PolicyPack for the CLI;
`policies/runner.py` runs the same objects in-process over an offline plan.

More rules live in their own modules and are collected here: `workloads.py` (GPU hosts, labels, Redis, Jobs,
tokens), `serving.py` (vLLM against its GPUs and model), `dns.py` (Route53 failover). Every rule's
enforcement level can be tuned per stack (`qwen-serving:policies`, see infra/policy_config.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
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

from policies.dns import DNS_POLICIES
from policies.kube import JOBS, WORKLOADS, pod_spec
from policies.serving import SERVING_POLICIES
from policies.workloads import WORKLOAD_POLICIES

GPU = "nvidia.com/gpu"
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN$|API_KEY|APIKEY|CREDENTIAL)", re.IGNORECASE)


def _containers(pod: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def _workload(args: ResourceValidationArgs) -> Mapping[str, Any] | None:
    """The pod of a workload or a Job/CronJob (they run our images and secrets too); None for anything else."""
    return pod_spec(args.props) if args.resource_type in WORKLOADS | JOBS else None


def images_have_a_fixed_version(args: ResourceValidationArgs, report: ReportViolation) -> None:
    pod = _workload(args)
    for c in _containers(pod or {}):
        image = str(c.get("image", ""))
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" in image:
            continue
        if ":" not in last or last.endswith(":latest"):
            report(f"container '{c.get('name')}' uses '{image}': pin a version tag or, better, a digest", None)


def containers_have_requests_and_limits(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type in JOBS:  # jobs-are-bounded (policies/workloads.py) asks more of them
        return
    pod = _workload(args)
    for c in _containers(pod or {}):
        res = c.get("resources") or {}
        requests, limits = res.get("requests") or {}, res.get("limits") or {}
        missing = [k for k, have in (("requests.cpu", requests.get("cpu")), ("requests.memory", requests.get("memory")),
                                     ("limits.memory", limits.get("memory"))) if not have]
        if missing:
            report(f"container '{c.get('name')}' lacks {', '.join(missing)}: the scheduler and the OOM killer "
                   "need them; set resources in the component", None)


def workloads_have_probes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in WORKLOADS:  # a Job's pod runs to completion: nothing to route or restart
        return
    for c in pod_spec(args.props).get("containers") or []:
        missing = [p for p in ("readinessProbe", "livenessProbe") if not c.get(p)]
        if missing:
            report(f"container '{c.get('name')}' has no {' or '.join(missing)}: traffic and restarts would "
                   "ignore its health; add it in the component", None)


def gpus_only_on_the_gpu_pool(args: ResourceValidationArgs, report: ReportViolation) -> None:
    pod = _workload(args)
    if pod is None:
        return
    for c in _containers(pod):
        res = c.get("resources") or {}
        want = (res.get("limits") or {}).get(GPU)
        if want is None and (res.get("requests") or {}).get(GPU) is None:
            continue
        if want is None:
            report(f"container '{c.get('name')}' requests {GPU} without a limit: extended resources need limits", None)
        tolerates = any(t.get("key") == GPU for t in pod.get("tolerations") or [])
        selects = bool(pod.get("nodeSelector")) or bool((pod.get("affinity") or {}).get("nodeAffinity"))
        if not (tolerates and selects):
            report(f"container '{c.get('name')}' uses GPUs but the pod does not both select the GPU pool and "
                   f"tolerate the '{GPU}' taint; add both (gpuPool.nodeLabel, gpuPool.taintKey)", None)


def no_plain_secrets_in_env(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Secrets reach a pod as files of a mounted Secret: an environment variable leaks into child processes,
    crash dumps and `kubectl describe` (checkov CKV_K8S_35), whether a plain value or a secretKeyRef."""
    pod = _workload(args)
    for c in _containers(pod or {}):
        for env in c.get("env") or []:
            name = str(env.get("name", ""))
            if ((env.get("valueFrom") or {}).get("secretKeyRef")):
                report(f"container '{c.get('name')}' reads {name} from a Secret through the environment: mount "
                       "the Secret as a read-only volume and read the file", None)
            # `*_FILE` names a path to a mounted secret (AWS_SHARED_CREDENTIALS_FILE): the way it should be done
            elif SECRETISH.search(name) and not name.endswith("_FILE") and "value" in env:
                report(f"container '{c.get('name')}' sets {name} as a plain value: mount a Secret as a read-only "
                       "volume and read the file", None)


def runs_as_non_root(args: ResourceValidationArgs, report: ReportViolation) -> None:
    pod = _workload(args)
    if pod is None:  # every tier, vLLM included, runs as non-root: no exception
        return
    pod_nonroot = (pod.get("securityContext") or {}).get("runAsNonRoot") is True
    for c in _containers(pod):
        ctx = c.get("securityContext") or {}
        if not (pod_nonroot or ctx.get("runAsNonRoot") is True):
            report(f"container '{c.get('name')}' may run as root: set securityContext.runAsNonRoot", None)
        if ctx.get("allowPrivilegeEscalation") is not False:
            report(f"container '{c.get('name')}' allows privilege escalation: set allowPrivilegeEscalation false",
                   None)


def only_the_edge_is_exposed(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != "kubernetes:core/v1:Service":
        return
    spec = args.props.get("spec") or {}
    if spec.get("type") in ("LoadBalancer", "NodePort"):
        selector = spec.get("selector") or {}
        if _is_replication_endpoint(args.props):
            return  # judged by redis-replication-endpoint-is-fenced
        if selector.get("app.kubernetes.io/name") != "edge":
            report(f"Service '{args.name}' is {spec.get('type')}: only the edge (Nginx, TLS) may face clients; "
                   "use ClusterIP",
                   None)


def _labels_match(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def every_workload_has_a_pdb(args: StackValidationArgs, report: ReportViolation) -> None:
    pdbs = [r for r in args.resources if r.resource_type == "kubernetes:policy/v1:PodDisruptionBudget"]
    for r in args.resources:
        if r.resource_type not in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"):
            continue
        labels = ((r.props.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
        if not any(_labels_match((p.props.get("spec") or {}).get("selector") or {}, labels) for p in pdbs):
            report(f"{r.resource_type.rsplit(':', 1)[-1]} '{r.name}' has no PodDisruptionBudget: node drains "
                   "could take every replica at once; add one whose selector matches its pod labels", r.urn)


def namespaces_deny_by_default(args: StackValidationArgs, report: ReportViolation) -> None:
    namespaces = {str(((r.props.get("metadata") or {}).get("name")) or r.name)
                  for r in args.resources if r.resource_type == "kubernetes:core/v1:Namespace"}
    denied = set()
    for r in args.resources:
        if r.resource_type != "kubernetes:networking.k8s.io/v1:NetworkPolicy":
            continue
        spec = r.props.get("spec") or {}
        selects_all = not (spec.get("podSelector") or {}).get("matchLabels") and not (
            spec.get("podSelector") or {}).get("matchExpressions")
        if selects_all and "Ingress" in (spec.get("policyTypes") or []) and not spec.get("ingress"):
            denied.add(str((r.props.get("metadata") or {}).get("namespace", "")))
    for ns in sorted(namespaces - denied):
        report(f"namespace '{ns}' has no default-deny NetworkPolicy: add one (empty podSelector, policyTypes "
               "Ingress, no ingress rules)", None)


# --- the one other exposure: the cross-site Redis replication endpoint (README: disaster recovery) ----------
REPLICATION_ENDPOINT = ("qwen-serving.io/endpoint", "redis-replication")


def _is_replication_endpoint(props: Mapping[str, Any]) -> bool:
    labels = (props.get("metadata") or {}).get("labels") or {}
    selector = (props.get("spec") or {}).get("selector") or {}
    key, value = REPLICATION_ENDPOINT
    return labels.get(key) == value and selector.get("app.kubernetes.io/name") == "redis"


def _redis_conf(resources: list[Any]) -> str:
    for r in resources:
        if r.resource_type == "kubernetes:core/v1:ConfigMap" and "redis.conf" in (r.props.get("data") or {}):
            return str(r.props["data"]["redis.conf"])
    return ""


def redis_replication_endpoint_is_fenced(args: StackValidationArgs, report: ReportViolation) -> None:
    """The replication endpoint may face the outside only as: a LoadBalancer on Redis's TLS port alone (mutual
    TLS: tls-auth-clients yes), admitting named source ranges (never everyone), with the source address kept
    (externalTrafficPolicy Local) for a NetworkPolicy ipBlock on that port."""
    conf = _redis_conf(args.resources)
    tls_port = re.search(r"^tls-port (\d+)$", conf, re.MULTILINE)
    for r in args.resources:
        if r.resource_type != "kubernetes:core/v1:Service" or not _is_replication_endpoint(r.props):
            continue
        spec, name = r.props.get("spec") or {}, r.name
        ranges = spec.get("loadBalancerSourceRanges") or []
        if not ranges:
            report(f"Service '{name}' exposes Redis replication to everyone: set loadBalancerSourceRanges to the "
                   "peer's egress CIDRs (redis.replication.peerCidrs)", r.urn)
        for cidr in ranges:
            if str(cidr).endswith("/0"):
                report(f"Service '{name}' admits {cidr}: list only the peer's egress CIDRs", r.urn)
        ports = [int(p.get("port", 0)) for p in spec.get("ports") or []]
        if tls_port is None or "tls-auth-clients yes" not in conf:
            report(f"Service '{name}' exposes Redis but redis.conf has no mutual TLS (tls-port, tls-auth-clients "
                   "yes): set redis.replication so the link is encrypted", r.urn)
        elif ports != [int(tls_port.group(1))]:
            report(f"Service '{name}' exposes ports {ports}: only Redis's TLS port {tls_port.group(1)} may face the "
                   "peer; remove the others", r.urn)
        if spec.get("externalTrafficPolicy") != "Local":
            report(f"Service '{name}' hides the peer's address (externalTrafficPolicy is not Local, so the "
                   "NetworkPolicy's ipBlock could not tell the peer from anyone): set it to Local", r.urn)
        blocks = [peer["ipBlock"]["cidr"]
                  for p in args.resources if p.resource_type == "kubernetes:networking.k8s.io/v1:NetworkPolicy"
                  for rule in (p.props.get("spec") or {}).get("ingress") or []
                  if any(int(x.get("port", 0)) in ports for x in rule.get("ports") or [])
                  for peer in rule.get("from") or [] if "ipBlock" in peer]
        if sorted(blocks) != sorted(ranges):
            report(f"Service '{name}': the NetworkPolicy ipBlocks on its port {sorted(blocks)} are not its source "
                   f"ranges {sorted(ranges)}; set both to the peer's CIDRs (redis.replication.peerCidrs)", r.urn)


MANDATORY = EnforcementLevel.MANDATORY

POLICIES: list[Policy] = [
    *WORKLOAD_POLICIES,
    *SERVING_POLICIES,
    *DNS_POLICIES,
    ResourceValidationPolicy("images-have-a-fixed-version", "Container images are pinned (tag or digest), "
                             "never latest", images_have_a_fixed_version, MANDATORY),
    ResourceValidationPolicy("containers-have-requests-and-limits", "CPU/memory requests and a memory limit",
                             containers_have_requests_and_limits, MANDATORY),
    ResourceValidationPolicy("workloads-have-probes", "Readiness and liveness probes on every container",
                             workloads_have_probes, MANDATORY),
    ResourceValidationPolicy("gpus-only-on-the-gpu-pool", "GPU pods select and tolerate the GPU pool",
                             gpus_only_on_the_gpu_pool, MANDATORY),
    ResourceValidationPolicy("no-plain-secrets-in-env", "No secret in any env var: Secrets are mounted files",
                             no_plain_secrets_in_env, MANDATORY),
    ResourceValidationPolicy("runs-as-non-root", "Every container runs as non-root without escalation",
                             runs_as_non_root, MANDATORY),
    ResourceValidationPolicy("only-the-edge-is-exposed", "Only the edge Service is LoadBalancer/NodePort",
                             only_the_edge_is_exposed, MANDATORY),
    StackValidationPolicy("every-workload-has-a-pdb", "Each Deployment/StatefulSet has a PodDisruptionBudget",
                          every_workload_has_a_pdb, MANDATORY),
    StackValidationPolicy("namespaces-deny-by-default", "Each namespace has a default-deny NetworkPolicy",
                          namespaces_deny_by_default, MANDATORY),
    StackValidationPolicy("redis-replication-endpoint-is-fenced", "The cross-site Redis replication endpoint: "
                          "TLS port only, the peer's CIDRs only", redis_replication_endpoint_is_fenced, MANDATORY),
]
