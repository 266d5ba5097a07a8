"""The NetworkPolicies, evaluated: which pod may open which port on which pod (Kubernetes semantics:
a connection needs an egress allow on the source side and an ingress allow on the destination side)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from infra.offline import OfflineRun
from tests.program.conftest import NETPOL, STACKS, obj, stack_run

OUTSIDE: dict[str, Any] = {"namespace": None, "labels": {}}  # a client outside the cluster


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    wanted = (selector or {}).get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def _peer_matches(peer: dict[str, Any], other: dict[str, Any], own_namespace: str) -> bool:
    if "ipBlock" in peer:  # an address outside the cluster (no "ip": anywhere on the internet)
        ip = other.get("ip", "192.0.2.1")
        return other["namespace"] is None and ipaddress.ip_address(ip) in ipaddress.ip_network(peer["ipBlock"]["cidr"])
    namespace = other["namespace"]
    if namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}):
            return False
    elif namespace != own_namespace:
        return False
    return _matches(peer.get("podSelector"), other["labels"])


def _allowed(policies: list[dict[str, Any]], pod: dict[str, Any], other: dict[str, Any], port: int,
             direction: str) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies
                 if direction in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], pod["labels"])]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            peers = rule.get(peers_key)
            if not peers or any(_peer_matches(peer, other, pod["namespace"]) for peer in peers):
                return True
    return False


def can_connect(run: OfflineRun, source: dict[str, Any], dest: dict[str, Any], port: int) -> bool:
    ns = run.settings.kubernetes.namespace
    policies = [obj(run, NETPOL, r.name) for r in run.of_type(NETPOL)]
    ours = [p for p in policies if p["metadata"]["namespace"] == ns]
    egress_ok = source["namespace"] != ns or _allowed(ours, source, dest, port, "Egress")
    ingress_ok = dest["namespace"] != ns or _allowed(ours, dest, source, port, "Ingress")
    return egress_ok and ingress_ok


def pod(run: OfflineRun, name: str) -> dict[str, Any]:
    return {"namespace": run.settings.kubernetes.namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": run.settings.site.name}}


@pytest.mark.parametrize("stack", STACKS)
def test_only_the_data_path_and_metrics_scrapes_are_open(stack: str) -> None:
    run = stack_run(stack)
    s = run.settings
    edge, gateway, vllm, redis = (pod(run, n) for n in ("edge", "gateway", "vllm", "redis"))
    prometheus = {"namespace": s.monitoring.namespace, "labels": {"app.kubernetes.io/name": "prometheus"}}
    gw, inf = s.gateway.port, s.inference.port
    allowed = [
        (OUTSIDE, edge, 8080), (OUTSIDE, edge, 8443),
        (edge, gateway, gw), (gateway, vllm, inf), (gateway, redis, 6379),
        (prometheus, vllm, inf), (prometheus, gateway, gw), (prometheus, edge, 9113), (prometheus, redis, 9121),
    ]
    denied = [
        (OUTSIDE, gateway, gw), (OUTSIDE, vllm, inf), (OUTSIDE, redis, 6379),
        (edge, vllm, inf), (edge, redis, 6379), (vllm, redis, 6379), (vllm, gateway, gw), (redis, gateway, gw),
        (gateway, edge, 8080), (prometheus, redis, 6379), (OUTSIDE, edge, 9113),
    ]
    for source, dest, port in allowed:
        assert can_connect(run, source, dest, port), (source["labels"], dest["labels"], port)
    for source, dest, port in denied:
        assert not can_connect(run, source, dest, port), (source["labels"], dest["labels"], port)


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_is_isolated_both_ways_and_may_resolve_dns(stack: str) -> None:
    run = stack_run(stack)
    deny = obj(run, NETPOL, "netpol-default-deny")["spec"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny
    kube_dns = {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}}
    ns_policies = [obj(run, NETPOL, r.name) for r in run.of_type(NETPOL)]
    for name in ("edge", "gateway", "vllm", "redis"):
        assert _allowed(ns_policies, pod(run, name), kube_dns, 53, "Egress"), name


def test_only_the_standby_redis_may_reach_the_primary() -> None:
    primary, standby = stack_run("prod"), stack_run("prod-dr")
    rep = primary.settings.redis.replication
    assert rep is not None
    remote: dict[str, Any] = {"namespace": None, "labels": {}}
    assert not can_connect(primary, pod(primary, "redis"), remote, 6379)
    assert can_connect(standby, pod(standby, "redis"), remote, rep.port)


def test_the_replication_endpoint_admits_only_the_peer_cidrs_on_the_tls_port() -> None:
    primary, standby = stack_run("prod"), stack_run("prod-dr")
    rep = primary.settings.redis.replication
    assert rep is not None
    inside_peer = str(next(ipaddress.ip_network(rep.peer_cidrs[0]).hosts()))
    peer: dict[str, Any] = {"namespace": None, "labels": {}, "ip": inside_peer}
    stranger: dict[str, Any] = {"namespace": None, "labels": {}, "ip": "192.0.2.77"}
    assert can_connect(primary, peer, pod(primary, "redis"), rep.port)
    assert not can_connect(primary, stranger, pod(primary, "redis"), rep.port)
    assert not can_connect(primary, peer, pod(primary, "redis"), 6379)  # never the plain port
    # A standby is not a primary: no endpoint, no ingress from outside.
    assert not can_connect(standby, peer, pod(standby, "redis"), rep.port)
