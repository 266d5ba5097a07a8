"""The Redis backup CronJob under the mocks: only where `redis.backup` is set, on the stack's schedule, running
`python -m dr.backup snapshot` from the backup image with the stack's storage settings, its secrets as files
from Kubernetes Secrets (never values in the manifest or the environment), and a NetworkPolicy that lets it
reach Redis and the object storage only."""

from __future__ import annotations

from typing import Any

import pytest

from dr.backup import parser
from infra.components.network import backup_endpoint_port
from stackspec.stackfile import SECRET_PLACEHOLDERS
from tests.program.conftest import IMAGE, NETPOL, SECRET, STACKS, obj, stack_run
from tests.program.test_network_policies import can_connect, pod

CRONJOB = "kubernetes:batch/v1:CronJob"


def _job_pod(stack: str) -> dict[str, Any]:
    spec: dict[str, Any] = obj(stack_run(stack), CRONJOB, "redis-backup")["spec"]["jobTemplate"]["spec"]
    return spec["template"]["spec"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_cronjob_exists_only_where_backups_are_set(stack: str) -> None:
    run = stack_run(stack)
    has_backup = run.settings.redis.backup is not None
    assert bool(run.of_type(CRONJOB)) == has_backup
    assert ("redis-backup-secret" in {r.name for r in run.of_type(SECRET)}) == has_backup
    assert ("backup-image" in {r.name for r in run.of_type(IMAGE)}) == has_backup
    assert ("netpol-redis-backup" in {r.name for r in run.of_type(NETPOL)}) == has_backup
    assert {"prod", "prod-dr"} <= {s for s in STACKS if stack_run(s).settings.redis.backup}


@pytest.mark.parametrize("stack", ["prod", "prod-dr"])
def test_the_cronjob_runs_the_snapshot_on_the_stack_schedule_with_its_storage_settings(stack: str) -> None:
    run = stack_run(stack)
    b = run.settings.redis.backup
    assert b is not None
    cron = obj(run, CRONJOB, "redis-backup")
    assert cron["spec"]["schedule"] == b.schedule and cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 0 and job["activeDeadlineSeconds"] > 0
    spec = _job_pod(stack)
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert "/backup@sha256:" in container["image"] or "/backup:" in container["image"]
    args = parser().parse_args(container["args"])  # the program's own parser takes them
    assert (args.command, args.endpoint, args.bucket, args.prefix, args.site, args.region, args.retention_days) == (
        "snapshot", b.endpoint, b.bucket, b.prefix, run.settings.site.name, b.region, b.retention_days)
    assert args.redis_url == run.settings.gateway_redis_url  # the Redis tier's Service


@pytest.mark.parametrize("stack", ["prod", "prod-dr"])
def test_the_secrets_are_files_from_kubernetes_secrets(stack: str) -> None:
    run = stack_run(stack)
    spec = _job_pod(stack)
    (container,) = spec["containers"]
    # nothing secret in the environment: only paths
    assert {e["name"]: e["value"] for e in container["env"]} == {
        "AWS_SHARED_CREDENTIALS_FILE": "/var/run/secrets/object-storage/credentials", "TMPDIR": "/tmp"}
    placeholders = {SECRET_PLACEHOLDERS["backupAccessKeyId"], SECRET_PLACEHOLDERS["backupSecretAccessKey"],
                    SECRET_PLACEHOLDERS["redisPassword"]}
    assert not any(p in str(container) for p in placeholders)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["redis-password"]["secret"]["secretName"] == "redis"
    assert volumes["redis-password"]["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert volumes["object-storage"]["secret"]["secretName"] == "redis-backup"
    assert mounts["redis-password"]["readOnly"] and mounts["object-storage"]["readOnly"]
    args = container["args"]
    assert args[args.index("--password-file") + 1] == f"{mounts['redis-password']['mountPath']}/password"
    secret = obj(run, SECRET, "redis-backup-secret")
    assert secret["metadata"]["name"] == "redis-backup"
    assert secret["stringData"]["credentials"] == (
        "[default]\naws_access_key_id = plan-placeholder\naws_secret_access_key = plan-placeholder\n")


@pytest.mark.parametrize("stack", ["prod", "prod-dr"])
def test_the_backup_pod_is_restricted_and_bounded(stack: str) -> None:
    spec = _job_pod(stack)
    (container,) = spec["containers"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] >= 10000
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    res = container["resources"]
    assert set(res["requests"]) == {"cpu", "memory"} and set(res["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("stack", ["prod", "prod-dr"])
def test_the_backup_pod_reaches_redis_and_the_object_storage_only(stack: str) -> None:
    run = stack_run(stack)
    b = run.settings.redis.backup
    assert b is not None
    job, redis, gateway = pod(run, "redis-backup"), pod(run, "redis"), pod(run, "gateway")
    storage: dict[str, Any] = {"namespace": None, "labels": {}}
    assert can_connect(run, job, redis, 6379)
    assert can_connect(run, job, storage, backup_endpoint_port(b.endpoint))
    assert not can_connect(run, job, gateway, run.settings.gateway.port)
    assert not can_connect(run, job, storage, 6379)
    assert not can_connect(run, storage, job, 6379)


@pytest.mark.parametrize(("endpoint", "port"), [("https://s3.example.com", 443), ("http://minio.local", 80),
                                                ("http://minio.local:9000/", 9000)])
def test_the_object_storage_port_comes_from_the_endpoint(endpoint: str, port: int) -> None:
    assert backup_endpoint_port(endpoint) == port
