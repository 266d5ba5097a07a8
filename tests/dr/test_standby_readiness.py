"""A standby site's gateway says, on /readyz, that its Redis is a read-only replica — from the start, before
any write was refused — and that it is a primary again once promoted. Real redis-server pair and a real
gateway process; no vLLM (readiness still reports Redis while no backend is healthy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from localstack.processes import ManagedProcess, free_port, http_ok
from localstack.services import PROJECT_PYTHON, REPO_ROOT, RedisHandle, start_redis
from stackspec.settings import settings_from_config
from stackspec.stackfile import read_stack_config, stack_file, with_placeholders
from tests.waiting import wait_until

PASSWORD = "standby-readiness-password"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisHandle, RedisHandle]]:
    s = settings_from_config(with_placeholders(read_stack_config(stack_file("dev"))[0]), check_secrets=False)
    primary = start_redis(tmp_path / "primary", settings=s, password=PASSWORD)
    replica = start_redis(tmp_path / "replica", settings=s, password=PASSWORD)
    try:
        follower = redis.Redis(port=replica.port, password=PASSWORD, decode_responses=True)
        follower.config_set("masterauth", PASSWORD)
        follower.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: follower.info("replication").get("master_link_status") == "up", "the replica linked up")
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def test_readyz_on_a_standby_says_its_redis_is_a_read_only_replica(
    pair: tuple[RedisHandle, RedisHandle], tmp_path: Path
) -> None:
    _, replica = pair
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path),
           "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_MODEL": "standby-test",
           "GATEWAY_BACKENDS": f"127.0.0.1:{free_port()}",  # nothing listens: not ready, Redis still reported
           "GATEWAY_AUTH_ENABLED": "false", "GATEWAY_REDIS_URL": replica.url, "GATEWAY_REDIS_PASSWORD": PASSWORD,
           "GATEWAY_REDIS_RETRY_SECONDS": "0.5", "GATEWAY_SHUTDOWN_DRAIN_SECONDS": "0",
           "GATEWAY_SHUTDOWN_GRACE_SECONDS": "1"}
    url = f"http://127.0.0.1:{port}"
    gateway = ManagedProcess("gateway-standby", [str(PROJECT_PYTHON), "-m", "app.gateway"],
                             tmp_path / "gateway.log", env=env, cwd=REPO_ROOT).start()
    try:
        gateway.wait_ready(lambda: http_ok(f"{url}/healthz"), timeout=30)

        def readyz() -> dict[str, Any]:
            body: dict[str, Any] = httpx.get(f"{url}/readyz", timeout=5).json()
            return body

        before = readyz()  # no request has been made: nothing was refused yet
        assert before["redis"] == "read-only" and before["redis_role"] == "replica", before
        assert before["ready"] is False  # no healthy backend; Redis never decides readiness

        redis.Redis(port=replica.port, password=PASSWORD).replicaof("NO", "ONE")  # promoted
        wait_until(lambda: readyz()["redis_role"] == "primary", "readiness shows the promotion", within=10)
        assert readyz()["redis"] == "up"
    finally:
        gateway.stop()
