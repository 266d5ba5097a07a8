"""The local stack (`make up`, or the one the tests start), with testinfra on this machine: the default suite.

What it reads is what runs: Nginx's effective configuration (`nginx -T` on the running config), Redis's
(`CONFIG GET` on the running server), the recorded processes' users. Expected values come from the local
stack's settings (localstack/local.yaml) through verify/expect.py. `make verify` (LOCAL_STATE_DIR to point
at another state directory).
"""

from __future__ import annotations

import json
import pwd
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from verify import expect, nginx_t


@dataclass(frozen=True)
class LocalTarget:
    root: Path
    processes: dict[str, int]  # name -> pid (pids.json)
    owner_uid: int  # who started the stack (the owner of pids.json)

    @property
    def nginx_prefix(self) -> Path:
        return self.root / "nginx"

    @property
    def redis_port(self) -> int:
        conf = (self.root / "redis" / "redis.conf").read_text()
        match = re.search(r"(?m)^port (\d+)$", conf)
        assert match, f"no port in {self.root / 'redis' / 'redis.conf'}"
        return int(match.group(1))

    @property
    def redis_password_file(self) -> Path | None:
        path = self.root / "redis-password"
        return path if path.exists() else None


@pytest.fixture(scope="module")
def local(local_state: Path) -> LocalTarget:
    from localstack.stack import PIDS_FILE

    state = local_state / PIDS_FILE
    if not state.exists():
        pytest.fail(f"no local stack recorded under {local_state} ({PIDS_FILE} missing): start one with `make up`, "
                    "or point LOCAL_STATE_DIR / --local-state at its state directory")
    entries = json.loads(state.read_text())["processes"]
    return LocalTarget(local_state, {e["name"]: int(e["pid"]) for e in entries}, state.stat().st_uid)


@pytest.fixture(scope="module")
def settings() -> Any:
    return expect.local_settings()


def _redis_cli(local: LocalTarget, *args: str) -> str:
    auth = f'REDISCLI_AUTH="$(cat {local.redis_password_file})" ' if local.redis_password_file else ""
    return f"{auth}redis-cli -p {local.redis_port} --no-auth-warning " + " ".join(args)


def test_nginx_streams_the_api_unbuffered(host: Any, local: LocalTarget, settings: Any) -> None:
    prefix = local.nginx_prefix
    dump = host.run("nginx -T -p %s -c %s -e %s", str(prefix), str(prefix / "nginx.conf"),
                    str(prefix / "logs" / "error.log"))
    assert dump.rc == 0, dump.stderr
    assert nginx_t.problems(dump.stdout, expect.edge(settings)) == []


def test_nginx_workers_do_not_run_as_root(host: Any, local: LocalTarget) -> None:
    master = local.processes["nginx"]
    workers = host.check_output("ps -o euid= --ppid %s", str(master)).split()
    assert workers, f"nginx (pid {master}) has no worker processes"
    assert "0" not in workers, f"nginx workers run as root (euids {workers})"


def _expected_uid(name: str, owner_uid: int) -> int:
    """Every process runs as the stack's owner, except that vLLM never runs as root: a stack started by
    root runs it as the unprivileged LOCAL_VLLM_USER (localstack/unprivileged.py), as the cluster does."""
    from localstack.unprivileged import LOCAL_VLLM_USER

    if name.startswith("vllm") and owner_uid == 0:
        return pwd.getpwnam(LOCAL_VLLM_USER).pw_uid
    return owner_uid


def test_recorded_processes_run_as_whoever_started_the_stack_and_vllm_never_as_root(
    host: Any, local: LocalTarget
) -> None:
    """Nothing gains privileges: every process's user is the stack owner's (root only if root started it),
    and vLLM's, real and effective, is never root."""
    for name, pid in local.processes.items():
        ruid, euid = (int(v) for v in host.check_output("ps -o ruid=,euid= -p %s", str(pid)).split())
        want = _expected_uid(name, local.owner_uid)
        assert ruid == euid == want, f"{name} (pid {pid}) runs as uid {ruid}/{euid}, want {want}"
        if name.startswith("vllm"):
            assert euid != 0, f"{name} (pid {pid}) runs as root"


def test_redis_refuses_clients_without_the_password(host: Any, local: LocalTarget) -> None:
    anonymous = host.run("redis-cli -p %s PING", str(local.redis_port))
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr, f"Redis answers without a password: {anonymous.stdout!r}"
    requirepass = host.check_output(_redis_cli(local, "CONFIG GET requirepass")).splitlines()
    assert len(requirepass) == 2 and requirepass[1], "requirepass is not set"


def test_redis_persists_as_the_stack_says(host: Any, local: LocalTarget, settings: Any) -> None:
    for name, want in expect.redis(settings).config.items():
        have = host.check_output(_redis_cli(local, "CONFIG GET", name)).splitlines()
        assert have == [name, want], f"Redis {name} is {have[1:]}, expected {want!r}"
