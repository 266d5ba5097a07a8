"""Settings -> redis.conf. AOF on, no eviction (sessions must not vanish silently), replica of the primary
on a standby site. The password is never in this text: the pod passes it from the Secret on the command
line (`--requirepass $(REDIS_PASSWORD)`), the local stack through an included file."""

from __future__ import annotations

import re

from stackspec.settings import StackSettings

_PATH_RE = re.compile(r"^[^\s\"']+$")


def render_redis_conf(
    settings: StackSettings,
    *,
    port: int = 6379,
    bind: str = "0.0.0.0",
    data_dir: str = "/data",
    password_file_include: str | None = None,
) -> str:
    redis = settings.redis
    for what, path in (("data_dir", data_dir), ("password_file_include", password_file_include or "x")):
        if not _PATH_RE.match(path):
            raise ValueError(f"{what}: {path!r} must be a path without spaces or quotes")
    lines = [
        "# Rendered by stackspec/render/redis.py from the stack settings.",
        f"port {port}",
        f"bind {bind}",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',
        f'dir "{data_dir}"',
        "tcp-keepalive 60",
        "# Sessions and rate-limit counters: durable (AOF) and never evicted behind the gateway's back.",
        "appendonly yes",
        f"appendfsync {redis.appendfsync}",
        "aof-use-rdb-preamble yes",
        "save 3600 1 300 100",
        f"maxmemory {redis.maxmemory}",
        "maxmemory-policy noeviction",
    ]
    if redis.replica_of:
        host, _, replica_port = redis.replica_of.rpartition(":")
        if not host or not replica_port.isdigit():
            raise ValueError(
                f"qwen-serving:redis.replicaOf: {redis.replica_of!r} is not host:port; write e.g. redis.site-a:6379"
            )
        lines += [
            "# Standby site: a read-only replica of the primary's Redis; promote with REPLICAOF NO ONE.",
            f"replicaof {host} {replica_port}",
            "replica-read-only yes",
            "replica-serve-stale-data yes",
        ]
    if password_file_include:
        lines.append(f'include "{password_file_include}"')
    return "\n".join(lines) + "\n"
