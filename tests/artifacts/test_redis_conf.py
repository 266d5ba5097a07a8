"""The rendered redis.conf is loaded by a real redis-server, with the password the way the pod passes it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from localstack.processes import free_port
from localstack.tls import make_replication_tls
from stackspec.render.redis import render_redis_conf, replication_user_args
from stackspec.settings import SettingsError
from tests.artifacts.conftest import STACKS, settings_with, stack_settings

PASSWORD = "artifact-test-password"


def no_retry_client(port: int) -> redis.Redis:
    """A client without a password that fails at once (redis-py retries with backoff for ~4 s by default)."""
    return redis.Redis(port=port, retry=Retry(NoBackoff(), 0))


def redis_server() -> str:
    path = shutil.which("redis-server")
    assert path, "redis-server is missing: run `make setup` (Debian package redis-server)"
    return path


@contextmanager
def running(conf: Path, extra_args: Sequence[str] = ()) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = int(next(line.split()[1] for line in conf.read_text().splitlines() if line.startswith("port ")))
    log = (conf.parent / "redis.log").open("wb")
    proc = subprocess.Popen([redis_server(), str(conf), *extra_args], stdout=log, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, password=PASSWORD, socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (conf.parent / "redis.log").read_text()
                    raise AssertionError(f"redis-server did not start:\n{log_text}") from None
                time.sleep(0.05)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("stack", STACKS)
def test_pod_form_loads_with_password_from_the_command_line(stack: str, workdir: Path) -> None:
    """As in the StatefulSet: the rendered file plus `--requirepass` from the Secret (never in the file)."""
    settings = stack_settings(stack)
    conf = workdir / "redis.conf"
    # A DR pair's sites also listen with mutual TLS (certificates as the Secret's mount lays them out).
    tls_dir = make_replication_tls(workdir / "tls")
    conf.write_text(render_redis_conf(settings, port=free_port(), bind="127.0.0.1", data_dir=str(workdir),
                                      tls_dir=str(tls_dir), tls_port=free_port()))
    assert PASSWORD not in conf.read_text()
    args = ["--requirepass", PASSWORD, "--masterauth", PASSWORD]
    if settings.redis.replication is not None:
        args += ["--user", *replication_user_args(settings, "replication-secret")]
    with running(conf, args) as (port, _):
        client = redis.Redis(port=port, password=PASSWORD)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": settings.redis.appendfsync}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert int(str(client.config_get("maxmemory")["maxmemory"])) == 1024**3  # "1gb"
        if settings.redis.replication is not None:
            acl: Any = client.acl_getuser(settings.redis.replication.user)
            assert sorted(acl["commands"]) == ["+ping", "+psync", "+replconf"] and not acl["keys"]
        role = client.info("replication")["role"]
        assert role == ("slave" if settings.redis.replica_of else "master")
        with pytest.raises(redis.AuthenticationError):
            no_retry_client(port).ping()
        if not settings.redis.replica_of:
            client.set("session:x", "1")
    if not settings.redis.replica_of:
        aof = list(workdir.glob("appendonlydir/*.aof"))
        assert aof, "AOF files should exist in the data dir"


def test_local_form_takes_the_password_from_an_included_file(workdir: Path) -> None:
    secret = workdir / "secret.conf"
    secret.write_text(f'requirepass "{PASSWORD}"\n')
    conf = workdir / "redis.conf"
    conf.write_text(render_redis_conf(stack_settings("dev"), port=free_port(), bind="127.0.0.1",
                                      data_dir=str(workdir), password_file_include=str(secret)))
    with running(conf) as (port, _):
        with pytest.raises(redis.AuthenticationError):
            no_retry_client(port).ping()


def test_noeviction_refuses_writes_at_maxmemory_instead_of_dropping_sessions(workdir: Path) -> None:
    settings = settings_with("dev", redis={"maxmemory": "2mb", "storageSize": "1Gi"})
    conf = workdir / "redis.conf"
    conf.write_text(render_redis_conf(settings, port=free_port(), bind="127.0.0.1", data_dir=str(workdir)))
    with running(conf, ["--requirepass", PASSWORD]) as (port, _):
        client = redis.Redis(port=port, password=PASSWORD)
        client.set("session:first", "kept")
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for i in range(10_000):
                client.set(f"session:{i}", "x" * 1024)
        assert client.get("session:first") == b"kept"


def test_bad_maxmemory_names_the_key_at_parse_time() -> None:
    with pytest.raises(SettingsError, match=r"qwen-serving:redis\.maxmemory"):
        settings_with("dev", redis={"maxmemory": "lots"})
