"""What RPO ~ 0 costs: a session write with and without `WAIT 1 <ms>` (redis.replication.waitForReplicaMs).

`python -m bench wait`: two real Redis from the prod / prod-dr stacks' rendered configs (the standby replicating
over mutual TLS as the replication user, localstack/tls.py certificates), and the gateway's own
`SessionStore.append` timed N times each way. On loopback the replica is microseconds away; across sites add
the round-trip time between the data centres to every acknowledged turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from app.gateway.metrics import Metrics
from app.gateway.redis_client import RedisGuard
from app.gateway.sessions.store import Session, SessionStore
from localstack.processes import free_port
from localstack.services import start_redis
from localstack.tls import make_replication_tls
from stackspec.settings import StackSettings, settings_from_config
from stackspec.stackfile import read_stack_config, stack_file, with_placeholders


def _settings(stack: str, replica_of: str | None = None) -> StackSettings:
    raw = with_placeholders(read_stack_config(stack_file(stack))[0])
    if replica_of:
        redis = json.loads(raw["qwen-serving:redis"])
        raw["qwen-serving:redis"] = json.dumps({**redis, "replicaOf": replica_of})
    return settings_from_config(raw, check_secrets=False)


async def _time_appends(url: str, password: str, wait_ms: int, n: int) -> list[float]:
    guard = RedisGuard.from_url(url, password, Metrics(), timeout=2, retry_seconds=1)
    store = SessionStore(guard, ttl_seconds=3600, replica_wait_ms=wait_ms)
    took = []
    for i in range(n):
        session = Session(f"bench-{wait_ms}-{i % 20:04d}", "bench")
        turn = [{"role": "user", "content": f"turn {i}"}, {"role": "assistant", "content": "x" * 200}]
        t = time.perf_counter()
        await store.append(session, turn, None)
        took.append((time.perf_counter() - t) * 1000)
    await guard.close()
    assert store.unreplicated_writes == 0 or not wait_ms, "the replica did not acknowledge every write"
    return took


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--wait-ms", type=int, default=100)
    args = parser.parse_args(argv)
    password, replication = secrets.token_hex(8), secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="bench-wait-") as tmp:
        root = Path(tmp)
        tls = make_replication_tls(root / "tls")
        tls_port = free_port()
        primary = start_redis(root / "a", settings=_settings("prod"), password=password,
                              replication_password=replication, tls_dir=tls, tls_port=tls_port)
        replica = start_redis(root / "b", settings=_settings("prod-dr", f"127.0.0.1:{tls_port}"), password=password,
                              replication_password=replication, tls_dir=tls, tls_port=free_port())
        try:
            import redis

            client = redis.Redis(port=replica.port, password=password)
            deadline = time.monotonic() + 30
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise SystemExit("the replica never linked up")
                time.sleep(0.05)
            rows = []
            for wait_ms in (0, args.wait_ms):
                took = asyncio.run(_time_appends(primary.url, password, wait_ms, args.n))
                q = statistics.quantiles(took, n=100)
                rows.append((f"WAIT 1 {wait_ms}" if wait_ms else "asynchronous", statistics.median(took), q[94], q[98]))
        finally:
            replica.stop()
            primary.stop()
    print(f"session write (SessionStore.append), {args.n} each, replica over TLS on loopback")
    print(f"{'mode':<14} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for mode, p50, p95, p99 in rows:
        print(f"{mode:<14} {p50:8.3f} {p95:8.3f} {p99:8.3f}")
    print(f"cost of WAIT at p50: {rows[1][1] - rows[0][1]:+.3f} ms (+ the inter-site round trip in production)")
    return 0
