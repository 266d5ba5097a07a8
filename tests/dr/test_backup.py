"""Backups with the real programs: `redis-server` (plain, and the prod stack's mutual-TLS port) and moto's S3
server as a process standing for the object storage. Sessions written by the gateway's own session store are
backed up, wiped and restored byte for byte; retention prunes; a non-empty Redis is refused; the model
manifest's checksums are the files'."""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis

from app.gateway.metrics import Metrics
from app.gateway.redis_client import RedisGuard
from app.gateway.sessions.store import Session, SessionStore
from dr import backup
from localstack.processes import ManagedProcess, free_port, http_ok
from localstack.services import RedisHandle, start_redis
from localstack.tls import make_replication_tls
from stackspec.settings import StackSettings, settings_from_config
from stackspec.stackfile import read_stack_config, stack_file, with_placeholders
from tests.gateway.test_image import BASE_PYTHONS, missing_dependencies, pins

PASSWORD, REPLICATION = "backup-test-password", "backup-test-replication"
BUCKET = "qs-backups"
SESSIONS, TURNS = 40, 3
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def settings(stack: str) -> StackSettings:
    return settings_from_config(with_placeholders(read_stack_config(stack_file(stack))[0]), check_secrets=False)


@dataclass
class ObjectStore:
    endpoint: str
    process: ManagedProcess

    def storage(self, site: str = "site-a", prefix: str = "qwen-serving") -> backup.Storage:
        return backup.Storage(self.endpoint, BUCKET, prefix, site)

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """moto's S3 API server on a free port; credentials through a shared-credentials file, as in the CronJob."""
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    process = ManagedProcess("moto", [str(server), "-H", "127.0.0.1", "-p", str(port)], root / "moto.log").start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = root / "credentials"
    credentials.write_text("[default]\naws_access_key_id = backup-test\naws_secret_access_key = backup-test\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            env.delenv(name, raising=False)
        try:
            process.wait_ready(lambda: http_ok(f"{endpoint}/moto-api/"), timeout=60)
            store = ObjectStore(endpoint, process)
            store.client().create_bucket(Bucket=BUCKET)
            yield store
        finally:
            process.stop()


@pytest.fixture
def plain_redis(tmp_path: Path) -> Iterator[RedisHandle]:
    handle = start_redis(tmp_path / "redis", settings=settings("dev"), password=PASSWORD)
    try:
        yield handle
    finally:
        handle.stop()


def target(handle: RedisHandle) -> backup.RedisTarget:
    return backup.RedisTarget.from_url(handle.url, password=PASSWORD)


def client(handle: RedisHandle) -> redis.Redis:
    return redis.Redis(port=handle.port, password=PASSWORD)


async def fill_sessions(handle: RedisHandle) -> list[Session]:
    """Sessions the way the gateway stores them (its SessionStore: hash, message list, owner index, sizes)."""
    guard = RedisGuard.from_url(handle.url, PASSWORD, Metrics(), timeout=2, retry_seconds=30)
    store = SessionStore(guard, ttl_seconds=3600)
    sessions = []
    try:
        for i in range(SESSIONS):
            owner = f"team-{i % 3}"
            session = await store.open_turn(f"backup-session-{i:04d}", owner)
            for turn in range(TURNS):
                await store.append(session, [{"role": "user", "content": f"question {turn} of {i} ünïcødé"},
                                             {"role": "assistant", "content": f"answer {turn} " + "x" * (i * 7)}],
                                   f"system prompt {i}" if turn == 0 else None)
            sessions.append(session)
    finally:
        await guard.close()
    return sessions


def contents(r: redis.Redis) -> dict[bytes, tuple[bytes, Any, bool]]:
    """Every key: (type, its value read natively, whether it has a TTL)."""
    out: dict[bytes, tuple[bytes, Any, bool]] = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        value: Any
        if kind == b"hash":
            value = r.hgetall(key)
        elif kind == b"list":
            value = r.lrange(key, 0, -1)
        elif kind == b"zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            value = r.get(key)
        else:
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
        out[key] = (kind, value, r.pttl(key) > 0)
    return out


async def test_backup_wipe_restore_brings_every_session_back(s3: ObjectStore, plain_redis: RedisHandle) -> None:
    sessions = await fill_sessions(plain_redis)
    r = client(plain_redis)
    before = contents(r)
    assert len([k for k in before if k.endswith(b":messages")]) == SESSIONS
    storage = s3.storage(site="roundtrip")

    taken = backup.snapshot(target(plain_redis), storage, retention_days=14)
    assert taken.key.startswith("qwen-serving/roundtrip/") and taken.key.endswith(".rdb")
    head = s3.client().head_object(Bucket=BUCKET, Key=taken.key)
    assert head["ContentLength"] == taken.size and head["Metadata"]["sha256"] == taken.sha256

    r.flushall()
    assert r.dbsize() == 0
    restored = backup.restore(target(plain_redis), storage)
    assert restored.key == taken.key and restored.keys == len(before)
    after = contents(r)
    assert after == before  # every key, its type, its bytes, and a TTL where it had one
    print(f"\n{SESSIONS} sessions x {TURNS} turns, {len(before)} keys: snapshot {taken.size} B in "
          f"{taken.seconds:.3f} s, restore in {restored.seconds:.3f} s")

    # and the gateway reads them as before
    guard = RedisGuard.from_url(plain_redis.url, PASSWORD, Metrics(), timeout=2, retry_seconds=30)
    try:
        store = SessionStore(guard, ttl_seconds=3600)
        for session in sessions:
            loaded = await store.load(session.id, session.owner)
            assert len(loaded.messages) == 2 * TURNS and loaded.system is not None
    finally:
        await guard.close()


def test_restore_refuses_a_non_empty_redis_and_names_the_fix(
    s3: ObjectStore, plain_redis: RedisHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    r = client(plain_redis)
    r.set("qs:session:kept", "still here")
    storage = s3.storage(site="refusal")
    backup.snapshot(target(plain_redis), storage, retention_days=14)
    r.set("qs:session:later", "written after the snapshot")
    with pytest.raises(backup.BackupError, match="not empty") as refused:
        backup.restore(target(plain_redis), storage)
    assert "FLUSHALL" in str(refused.value) and "--force" in str(refused.value)
    assert r.get("qs:session:later") == b"written after the snapshot"  # untouched

    # the command line says the same and fails
    os.environ["REDISCLI_AUTH"] = PASSWORD
    try:
        code = backup.main(["restore", "--redis-url", plain_redis.url, "--endpoint", s3.endpoint,
                            "--bucket", BUCKET, "--site", "refusal"])
    finally:
        del os.environ["REDISCLI_AUTH"]
    assert code == 1 and "not empty" in capsys.readouterr().err

    # --force writes the snapshot over it: its keys come back, others stay
    r.set("qs:session:kept", "changed")
    backup.restore(target(plain_redis), storage, force=True)
    assert r.get("qs:session:kept") == b"still here" and r.get("qs:session:later") is not None


def test_retention_prunes_old_snapshots_but_never_the_last(s3: ObjectStore, plain_redis: RedisHandle,
                                                             tmp_path: Path) -> None:
    client(plain_redis).set("k", "v")
    storage = s3.storage(site="retention")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for days_ago in (20, 16, 1, 0):
        backup.snapshot(target(plain_redis), storage, retention_days=14, now=NOW - dt.timedelta(days=days_ago),
                        model_dir=model, model_name="tiny")
    left = backup.list_snapshots(storage)
    assert [s.taken for s in left] == [NOW - dt.timedelta(days=1), NOW]
    assert all(s.manifest_key for s in left)
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix=storage.folder)["Contents"]}
    assert len(keys) == 4  # two snapshots, two manifests: the old manifests went with their snapshots

    lonely = s3.storage(site="stopped")  # a site whose backups stopped a month ago keeps its last one
    backup.snapshot(target(plain_redis), lonely, retention_days=14, now=NOW - dt.timedelta(days=30))
    assert backup.prune(lonely, 14, now=NOW) == []
    assert len(backup.list_snapshots(lonely)) == 1


def test_the_manifest_lists_every_model_file_with_its_sha256(s3: ObjectStore, plain_redis: RedisHandle,
                                                              tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny-qwen2"
    (model / "tokenizer").mkdir(parents=True)
    files = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": os.urandom(300_000),
             "tokenizer/tokenizer.json": "{\"vocab\": \"ünï\"}".encode()}
    for rel, data in files.items():
        (model / rel).write_bytes(data)
    storage = s3.storage(site="manifest")
    taken = backup.snapshot(target(plain_redis), storage, retention_days=14, model_dir=model,
                            model_name="tiny-qwen2", model_revision="abc123")
    assert taken.manifest_key == taken.key.removesuffix(".rdb") + ".manifest.json"
    body = s3.client().get_object(Bucket=BUCKET, Key=taken.manifest_key)["Body"].read()
    manifest = json.loads(body)
    assert manifest["model"] == "tiny-qwen2" and manifest["revision"] == "abc123" and manifest["site"] == "manifest"
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        rel: (len(data), hashlib.sha256(data).hexdigest()) for rel, data in files.items()}
    assert manifest["total_bytes"] == sum(len(d) for d in files.values())


def test_snapshot_over_mutual_tls_with_the_password_restores_into_a_plain_redis(
    s3: ObjectStore, plain_redis: RedisHandle, tmp_path: Path
) -> None:
    """The prod stack's Redis (its rendered config: TLS port, tls-auth-clients yes): the snapshot crosses
    TLS with a client certificate, then restores into another Redis, every database."""
    tls = make_replication_tls(tmp_path / "tls")
    tls_port = free_port()
    primary = start_redis(tmp_path / "prod", settings=settings("prod"), password=PASSWORD,
                          replication_password=REPLICATION, tls_dir=tls, tls_port=tls_port)
    try:
        source = redis.Redis(port=primary.port, password=PASSWORD)
        for i in range(100):
            source.set(f"qs:session:tls-{i}", os.urandom(64))
        source.hset("qs:owner:team:bytes", mapping={f"tls-{i}": i for i in range(100)})
        source.expire("qs:owner:team:bytes", 3600)
        redis.Redis(port=primary.port, password=PASSWORD, db=2).set("another-db", b"\x00\xff binary")
        over_tls = backup.RedisTarget.from_url(f"rediss://localhost:{tls_port}/0", password=PASSWORD,
                                               ca_file=str(tls / "ca.crt"), cert_file=str(tls / "tls.crt"),
                                               key_file=str(tls / "tls.key"))
        storage = s3.storage(site="tls")
        started = time.monotonic()
        backup.snapshot(over_tls, storage, retention_days=14)
        assert time.monotonic() - started < 60
        backup.restore(target(plain_redis), storage)
        assert contents(client(plain_redis)) == contents(source)
        assert redis.Redis(port=plain_redis.port, password=PASSWORD, db=2).get("another-db") == b"\x00\xff binary"
    finally:
        primary.stop()


def test_restore_refuses_a_replica(s3: ObjectStore, plain_redis: RedisHandle, tmp_path: Path) -> None:
    """A standby's Redis is a read-only replica: restore goes into the primary."""
    storage = s3.storage(site="replica")
    client(plain_redis).set("k", "v")
    backup.snapshot(target(plain_redis), storage, retention_days=14)
    follower = start_redis(tmp_path / "follower", settings=settings("dev"), password=PASSWORD)
    try:
        f = client(follower)
        f.config_set("masterauth", PASSWORD)
        f.replicaof("127.0.0.1", plain_redis.port)
        with pytest.raises(backup.BackupError, match="read-only replica"):
            backup.restore(target(follower), storage, force=True)
    finally:
        follower.stop()


def test_the_cronjobs_command_line_backs_up_through_the_real_programs(
    s3: ObjectStore, plain_redis: RedisHandle, tmp_path: Path
) -> None:
    """The prod CronJob's own arguments (from the program under the mocks), with only the addresses and the
    mounted password file swapped for local ones, run as `python -m dr.backup` — the image's entry point."""
    from tests.program.conftest import stack_run  # the mocks only when this test runs

    cron = stack_run("prod").one("kubernetes:batch/v1:CronJob", "redis-backup").inputs
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = list(container["args"])
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    for flag, value in (("--redis-url", plain_redis.url), ("--endpoint", s3.endpoint),
                        ("--password-file", str(password_file)), ("--bucket", BUCKET)):
        args[args.index(flag) + 1] = value
    client(plain_redis).set("qs:session:cron", "from the CronJob's command line")
    env = {**os.environ, "PYTHONPATH": str(Path(backup.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-m", "dr.backup", *args], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["snapshot"].startswith("qwen-serving/site-a/") and report["bytes"] > 0


def test_the_manifest_cronjobs_command_line_records_the_model_cache_in_object_storage(
    s3: ObjectStore, tmp_path: Path
) -> None:
    """The prod model-manifest CronJob's own arguments (from the program under the mocks), with only the
    storage address and the mounted cache swapped for local ones, run as `python -m dr.backup`."""
    from tests.program.conftest import stack_run  # the mocks only when this test runs

    cron = stack_run("prod").one("kubernetes:batch/v1:CronJob", "model-manifest").inputs
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    cache = tmp_path / "models"  # the layout HF_HOME makes of the mounted cache
    snapshot = cache / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    files = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": os.urandom(200_000)}
    for rel, data in files.items():
        (snapshot / rel).write_bytes(data)
    args = list(container["args"])
    for flag, value in (("--model-dir", str(cache)), ("--endpoint", s3.endpoint), ("--bucket", BUCKET)):
        args[args.index(flag) + 1] = value
    env = {**os.environ, "PYTHONPATH": str(Path(backup.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-m", "dr.backup", *args], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("qwen-serving/site-a/") and key.endswith(".manifest.json"), key
    manifest = json.loads(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())
    prefix = snapshot.relative_to(cache).as_posix()
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        f"{prefix}/{rel}": hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    assert manifest["site"] == "site-a"


def test_the_backup_image_carries_what_backup_py_imports_pinned_as_the_project() -> None:
    """dr/backup.py is a leaf (the standard library and boto3: what dr/Dockerfile installs); dr/requirements.txt
    is complete (installed with --no-deps) and pins exactly the versions constraints.txt has; the image is
    pinned, non-root and tool-free like the gateway's."""
    source = Path(backup.__file__)
    tree = ast.parse(source.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported - sys.stdlib_module_names - {"__future__"} == {"boto3", "botocore"}
    repo = source.parents[1]
    requirements = repo / "dr" / "requirements.txt"
    image, project = pins(requirements), pins(repo / "constraints.txt")
    assert {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "urllib3"} <= set(image)
    assert {name: project.get(name) for name in image} == image
    for python in BASE_PYTHONS:
        assert missing_dependencies(requirements, python) == [], python
    dockerfile = (repo / "dr" / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_BASE=\S+@sha256:[0-9a-f]{64}$", dockerfile, re.M)
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001:10001$", final_stage, re.M)
    assert not re.search(r"gcc|build-essential|apt-get install|curl|wget", final_stage)
    assert 'ENTRYPOINT ["python", "-m", "dr.backup"]' in final_stage

def test_the_runbook_commands_take_the_stack_settings(
    s3: ObjectStore, plain_redis: RedisHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: `python -m dr backup|snapshots|restore --stack prod-dr ...` (endpoint and bucket overridden to
    the local object storage, as an operator would not need to)."""
    from dr.__main__ import main as dr_main

    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    local = ["--endpoint", s3.endpoint, "--bucket", BUCKET]
    redis_args = ["--redis-url", plain_redis.url, "--password-file", str(password_file)]
    client(plain_redis).set("qs:session:runbook", "turn")
    assert dr_main(["backup", "--stack", "prod-dr", *redis_args, *local]) == 0
    taken = json.loads(capsys.readouterr().out)["snapshot"]
    assert taken.startswith("qwen-serving/site-b/")
    assert dr_main(["snapshots", "--stack", "prod-dr", *local]) == 0
    assert taken in capsys.readouterr().out
    client(plain_redis).flushall()
    assert dr_main(["restore", "--stack", "prod-dr", *redis_args, *local]) == 0
    assert json.loads(capsys.readouterr().out)["keys"] == 1
    assert client(plain_redis).get("qs:session:runbook") == b"turn"
    with pytest.raises(SystemExit, match=r"no redis\.backup"):
        dr_main(["snapshots", "--stack", "dev"])
