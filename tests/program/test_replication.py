"""The cross-site replication link under the mocks: an endpoint only on a primary with a peer, admitting only
the peer's CIDRs on Redis's TLS port, a replication-only ACL user, and a standby that follows over TLS."""

from __future__ import annotations

from typing import Any

import pytest

from stackspec.render.redis import REPLICATION_ACL
from tests.program.conftest import CONFIG_MAP, SECRET, SERVICE, STACKS, STATEFUL_SET, obj, pod_spec, stack_run

ENDPOINT = "redis-replication-service"


def _container(stack: str) -> dict[str, Any]:
    spec = pod_spec(stack_run(stack), STATEFUL_SET, "redis")
    return next(c for c in spec["containers"] if c["name"] == "redis")


@pytest.mark.parametrize("stack", STACKS)
def test_the_endpoint_exists_only_on_a_primary_with_a_peer(stack: str) -> None:
    run = stack_run(stack)
    s = run.settings
    names = {r.name for r in run.of_type(SERVICE)}
    assert (ENDPOINT in names) == (s.site.role == "primary" and s.redis.replication is not None)


def test_the_endpoint_admits_only_the_peer_on_the_tls_port() -> None:
    run = stack_run("prod")
    rep = run.settings.redis.replication
    assert rep is not None
    service = obj(run, SERVICE, ENDPOINT)
    spec = service["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["loadBalancerSourceRanges"] == rep.peer_cidrs
    assert spec["externalTrafficPolicy"] == "Local"  # the peer's address reaches the NetworkPolicy
    assert spec["loadBalancerIP"] == rep.load_balancer_ip
    assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(rep.port, "redis-tls")]
    assert spec["selector"]["app.kubernetes.io/name"] == "redis"
    conf = obj(run, CONFIG_MAP, "redis-config")["data"]["redis.conf"]
    for line in (f"tls-port {rep.port}", "tls-auth-clients yes", "tls-replication yes"):
        assert line in conf.splitlines()


@pytest.mark.parametrize("stack", ["prod", "prod-dr"])
def test_a_replication_only_user_with_its_own_password_and_tls_from_the_secret(stack: str) -> None:
    run = stack_run(stack)
    rep = run.settings.redis.replication
    assert rep is not None
    server = _container(stack)
    assert server["args"] == ["/etc/redis/redis.conf"] and "env" not in server  # the secrets are in a file
    secret = obj(run, SECRET, "redis-secret")
    data = secret["stringData"]
    assert set(data) == {"password", "replication-password", "redis-secrets.conf", "exporter-passwords.json"}
    assert data["password"] != data["replication-password"]
    # The included file: the replication user and masterauth carry the replication password, never the main one.
    lines = data["redis-secrets.conf"].splitlines()
    assert lines == [f'requirepass "{data["password"]}"',
                     " ".join(["user", rep.user, "reset", "on", f'>{data["replication-password"]}', *REPLICATION_ACL]),
                     f'masterauth "{data["replication-password"]}"']
    volumes = {v["name"]: v for v in pod_spec(run, STATEFUL_SET, "redis")["volumes"]}
    assert volumes["replication-tls"]["secret"]["secretName"] == rep.tls_secret_name
    assert {"name": "redis-tls", "containerPort": rep.port} in server["ports"]


def test_the_standby_follows_the_primary_over_tls_as_the_replication_user() -> None:
    run = stack_run("prod-dr")
    s = run.settings
    assert s.redis.replication is not None and s.redis.replica_of is not None
    conf = obj(run, CONFIG_MAP, "redis-config")["data"]["redis.conf"].splitlines()
    host, _, port = s.redis.replica_of.rpartition(":")
    assert f"replicaof {host} {port}" in conf
    assert f"masteruser {s.redis.replication.user}" in conf
    assert "tls-replication yes" in conf
    primary_conf = obj(stack_run("prod"), CONFIG_MAP, "redis-config")["data"]["redis.conf"]
    assert "replicaof" not in primary_conf and "masteruser" not in primary_conf
