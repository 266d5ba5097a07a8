"""Layer 7: what a platform engineer would check on a host running the stack, with testinfra."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localstack.stack import PIDS_FILE, LocalStack

PROGRAMS = {"redis-server": "redis-server", "nginx": "nginx", "prometheus": "prometheus",
            "prometheus-alertmanager": "amtool", "chromium": "chromium"}


@pytest.mark.parametrize("package", sorted(PROGRAMS))
def test_the_packages_the_stack_runs_are_installed(host: Any, package: str) -> None:
    assert host.package(package).is_installed
    assert host.exists(PROGRAMS[package])


def _listening_ports(host: Any, pid: int) -> set[str]:
    """Every listening TCP address:port of one process group (ss via testinfra)."""
    out = host.check_output("ss -Hltnp")
    return {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}


def test_every_server_listens_on_loopback_only(host: Any, local_stack: LocalStack) -> None:
    addresses = set()
    for pid in local_stack.pids():
        addresses |= _listening_ports(host, pid)
    assert addresses, "the stack's processes listen nowhere?"
    assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in addresses), addresses


def test_recorded_processes_are_the_running_ones(host: Any, local_stack: LocalStack) -> None:
    state = json.loads(host.file(str(local_stack.root / PIDS_FILE)).content_string)
    recorded = {p["pid"] for p in state["processes"]}
    assert recorded and all(host.process.get(pid=pid) for pid in recorded)
    names = {p["name"] for p in state["processes"]}
    assert {"redis", "nginx", "gateway-0", "gateway-1", "vllm-0", "prometheus"} <= names


def test_redis_persists_sessions_with_aof(host: Any, local_stack: LocalStack) -> None:
    assert local_stack.redis is not None
    password = local_stack.redis.password
    cmd = host.run(f"redis-cli -p {local_stack.redis.port} --no-auth-warning -a {password} config get appendonly")
    assert cmd.rc == 0 and cmd.stdout.split() == ["appendonly", "yes"]


def test_secrets_are_private_files(host: Any, local_stack: LocalStack) -> None:
    for name in ("api-key", "redis-password", "endpoint.json"):
        f = host.file(str(local_stack.root / name))
        assert f.exists and f.mode & 0o077 == 0, f"{name} is readable by others: {oct(f.mode)}"


def test_running_nginx_config_passes_nginx_t(host: Any, local_stack: LocalStack) -> None:
    assert local_stack.nginx is not None
    prefix = local_stack.root / "nginx"
    conf = next(prefix.glob("*.conf"))
    cmd = host.run(f"nginx -t -p {prefix} -c {conf}")
    assert cmd.rc == 0, cmd.stderr
