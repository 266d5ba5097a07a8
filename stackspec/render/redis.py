"""Settings -> redis.conf. AOF on, no eviction (sessions must not vanish silently), replica of the primary
on a standby site. The password is never in this text: it `include`s a private file of secret lines
(render_redis_secrets), in a pod a key of the redis Secret's read-only mount, locally a 0600 file in the run
directory.

Cross-site replication (`redis.replication`, README: disaster recovery): every site of a DR pair listens
with mutual TLS on `redis.replication.port` (certificates from the `tlsSecretName` Secret) and knows the
replication-only ACL user; a standby follows its peer over that TLS port as that user (`masteruser`; its
password, `masterauth`, and the user's definition come from secret config, like `requirepass`). Role decides
replication: a standby always starts as a replica, a primary never does (fencing: a site whose stack says
standby cannot come up as a second master).
"""

from __future__ import annotations

import json
import re

from stackspec.settings import StackSettings

# The redis Secret's read-only mount in every pod that reads it (the server, its exporter and probes, the backup
# CronJob), and the redis-cli prefix that authenticates one command from it: the password is in no environment.
SECRET_DIR = "/var/run/secrets/redis"
PASSWORD_FILE = f"{SECRET_DIR}/password"
CLI_AUTH = f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})"'

_PATH_RE = re.compile(r"^[^\s\"']+$")
REPLICATION_TLS_DIR = "/etc/redis/tls"  # the pod's mount of redis.replication.tlsSecretName
# What the replication user may do: the replication handshake and nothing else (no keys, no other command).
REPLICATION_ACL = ("+psync", "+replconf", "+ping")


def replication_user_args(settings: StackSettings, password: str) -> list[str]:
    """`user <name> ...` as redis-server arguments after `--user` (the pod passes `$(VAR)` as password)."""
    rep = settings.redis.replication
    if rep is None:
        raise ValueError("qwen-serving:redis.replication is not set: no replication user")
    return [rep.user, "reset", "on", f">{password}", *REPLICATION_ACL]


def render_redis_secrets(settings: StackSettings, *, password: str | None, replication_password: str | None) -> str:
    """The secret lines of redis.conf: the file it includes (a 0600 file locally, a key of the redis Secret in
    a pod)."""
    lines = []
    if password:
        lines.append(f'requirepass "{password}"')
    if settings.redis.replication is not None and replication_password:
        lines.append("user " + " ".join(replication_user_args(settings, replication_password)))
        lines.append(f'masterauth "{replication_password}"')
    return "".join(line + "\n" for line in lines)


def render_exporter_passwords(*, port: int, password: str) -> str:
    """redis_exporter's password file (`--redis.password-file`): a JSON map of address to password, for the
    Redis beside it on 127.0.0.1 (the address must be the one it scrapes, REDIS_ADDR / -redis.addr)."""
    return json.dumps({f"redis://127.0.0.1:{port}": password})


def render_redis_conf(
    settings: StackSettings,
    *,
    port: int = 6379,
    bind: str = "0.0.0.0",
    data_dir: str = "/data",
    password_file_include: str | None = None,
    tls_dir: str = REPLICATION_TLS_DIR,
    tls_port: int | None = None,
) -> str:
    redis = settings.redis
    for what, path in (("data_dir", data_dir), ("password_file_include", password_file_include or "x"),
                       ("tls_dir", tls_dir)):
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
    rep = redis.replication
    if rep is not None:
        lines += [
            "# Cross-site replication: mutual TLS on its own port (the peer's endpoint admits only this).",
            f"tls-port {tls_port or rep.port}",
            f"tls-cert-file {tls_dir}/tls.crt",
            f"tls-key-file {tls_dir}/tls.key",
            f"tls-ca-cert-file {tls_dir}/ca.crt",
            "tls-auth-clients yes",
            "tls-replication yes",
            "# A replica keeps its link alive and the primary can tell a stale one (lag alerts, WAIT).",
            "repl-ping-replica-period 1",
            "repl-timeout 10",
        ]
    if settings.site.role == "standby" and redis.replica_of:
        host, _, replica_port = redis.replica_of.rpartition(":")
        if not host or not replica_port.isdigit():
            raise ValueError(
                f"qwen-serving:redis.replicaOf: {redis.replica_of!r} is not host:port; write e.g. redis.site-a:6380"
            )
        lines += [
            "# Standby site: a read-only replica of the primary's Redis; promote with REPLICAOF NO ONE.",
            f"replicaof {host} {replica_port}",
            "replica-read-only yes",
            "replica-serve-stale-data yes",
        ]
        if rep is not None:
            lines.append(f"masteruser {rep.user}")
    if password_file_include:
        lines.append(f'include "{password_file_include}"')
    return "\n".join(lines) + "\n"
