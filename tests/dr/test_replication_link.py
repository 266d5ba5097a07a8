"""The replication link with real redis-server processes (no vLLM): the standby follows the primary over
mutual TLS as the replication-only user; the gateway's session store on each side of it: reads on a standby,
writes refused without opening the breaker, `WAIT 1` making a write durable on the replica before it returns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from app.gateway.metrics import Metrics
from app.gateway.redis_client import RedisGuard, RedisUnavailable
from app.gateway.sessions.store import Session, SessionStore
from localstack.processes import free_port
from localstack.services import RedisHandle, start_redis
from localstack.tls import make_replication_tls
from stackspec.settings import StackSettings, settings_from_config
from stackspec.stackfile import read_stack_config, stack_file, with_placeholders
from tests.waiting import wait_until

PASSWORD, REPLICATION = "link-test-password", "link-test-replication"


def settings(stack: str, replica_of: str | None = None) -> StackSettings:
    raw = with_placeholders(read_stack_config(stack_file(stack))[0])
    if replica_of:
        raw["qwen-serving:redis"] = json.dumps({**json.loads(raw["qwen-serving:redis"]), "replicaOf": replica_of})
    return settings_from_config(raw, check_secrets=False)


@dataclass
class Pair:
    primary: RedisHandle
    replica: RedisHandle
    tls_port: int


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root: Path = tmp_path_factory.mktemp("link")
    tls = make_replication_tls(root / "tls")
    tls_port = free_port()
    primary = start_redis(root / "a", settings=settings("prod"), password=PASSWORD, replication_password=REPLICATION,
                          tls_dir=tls, tls_port=tls_port)
    replica = start_redis(root / "b", settings=settings("prod-dr", f"127.0.0.1:{tls_port}"), password=PASSWORD,
                          replication_password=REPLICATION, tls_dir=tls, tls_port=free_port())
    try:
        follower = redis.Redis(port=replica.port, password=PASSWORD, decode_responses=True)
        leader = redis.Redis(port=primary.port, password=PASSWORD, decode_responses=True)
        wait_until(lambda: follower.info("replication").get("master_link_status") == "up", "the replica linked up")
        # The primary sees its replica online a moment later (after the replica's first REPLCONF ACK).
        wait_until(lambda: [v.get("state") for k, v in leader.info("replication").items() if k.startswith("slave")]
                   == ["online"], "the primary sees its replica online")
        yield Pair(primary, replica, tls_port)
    finally:
        replica.stop()
        primary.stop()


def client(handle: RedisHandle) -> redis.Redis:
    return redis.Redis(port=handle.port, password=PASSWORD, decode_responses=True)


def store(handle: RedisHandle, wait_ms: int = 0) -> tuple[SessionStore, RedisGuard]:
    guard = RedisGuard.from_url(handle.url, PASSWORD, Metrics(), timeout=1, retry_seconds=30)
    return SessionStore(guard, ttl_seconds=600, replica_wait_ms=wait_ms), guard


def test_the_standby_replicates_over_tls_as_the_replication_user(pair: Pair) -> None:
    primary = client(pair.primary)
    replicas = [v for k, v in primary.info("replication").items() if k.startswith("slave")]
    assert len(replicas) == 1 and replicas[0]["state"] == "online"
    clients = primary.client_list()
    link = [c for c in clients if c.get("flags") == "S"]
    assert link and link[0]["user"] == "replicator"  # not the gateway's (default) user
    assert int(link[0]["laddr"].rsplit(":", 1)[1]) == pair.tls_port  # the TLS port, not the plain one


def test_the_replication_user_can_only_replicate(pair: Pair) -> None:
    """The replication user can do nothing but replicate."""
    stranger = redis.Redis(port=pair.primary.port, username="replicator", password=REPLICATION)
    with pytest.raises(redis.exceptions.NoPermissionError):
        stranger.get("qs:session:x")


async def test_a_standby_serves_history_and_refuses_writes_without_opening_the_breaker(pair: Pair) -> None:
    primary_store, primary_guard = store(pair.primary, wait_ms=1000)
    standby_store, standby_guard = store(pair.replica)
    try:
        session = Session("link-test-session-1", "alice")
        await primary_store.append(session, [{"role": "user", "content": "hello"}], None)
        assert primary_store.unreplicated_writes == 0  # WAIT 1: on the replica before append returned
        loaded = await standby_store.load(session.id, "alice")
        assert [m["content"] for m in loaded.messages] == ["hello"]
        with pytest.raises(RedisUnavailable, match="ReadOnly"):
            await standby_store.append(loaded, [{"role": "user", "content": "on the standby"}], None)
        assert standby_guard.up  # the breaker is closed: the next read goes through at once
        assert (await standby_store.load(session.id, "alice")).exists
    finally:
        await primary_guard.close()
        await standby_guard.close()
