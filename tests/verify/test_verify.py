"""`make verify`: the local suite passes on the session's local stack and fails on a misconfigured one (real
Nginx and Redis); the GPU-host and pod suites (no GPUs or cluster here) are collected with every stack's ids."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack.processes import free_port
from localstack.services import ServiceHandle, start_nginx, start_redis
from localstack.stack import PIDS_FILE, LocalStack
from stackspec.render.nginx import render_nginx_conf
from tests.stacks import SITE_STACKS, stack_settings
from verify import expect, nginx_t
from verify.targets import host_specs

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"


def _collect(*args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             "verify/test_hosts.py", "verify/test_pods.py", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_host_and_pod_suites_are_collected_for_every_stack_and_host() -> None:
    ids = _collect()
    host_tests = {re.sub(r"\[.*", "", i) for i in ids if i.startswith("verify/test_hosts.py")}
    pod_tests = {re.sub(r"\[.*", "", i) for i in ids if i.startswith("verify/test_pods.py")}
    assert len(host_tests) == 5 and len(pod_tests) == 7
    for stack in SITE_STACKS:
        settings = stack_settings(stack)
        for h in settings.gpu_pool.hosts:
            for test in host_tests:
                if "model_cache" in test and settings.inference.cache.kind != "hostPath":
                    continue
                assert f"{test}[{stack}-{h.name}]" in ids, f"{test} not collected for {stack}/{h.name}"
        for test in pod_tests:
            assert any(i.startswith(f"{test}[{stack}-") for i in ids), f"{test} not collected for {stack}"


def test_a_stack_option_narrows_the_suites_to_that_stack() -> None:
    ids = _collect("--stack", "prod")
    assert ids and all(re.search(r"\[prod-(?!dr)", i) for i in ids), ids
    hosts = {h.name for h in stack_settings("prod").gpu_pool.hosts}
    assert {re.sub(r".*\[prod-(.*)\]$", r"\1", i) for i in ids if "test_hosts" in i} == hosts


class _Options:
    def __init__(self, gpu_hosts: str) -> None:
        self.gpu_hosts = gpu_hosts

    def getoption(self, name: str) -> str:
        assert name == "--gpu-hosts"
        return self.gpu_hosts


def test_given_host_specs_replace_the_default_ssh_by_host_name() -> None:
    hosts = expect.gpu_hosts("prod", stack_settings("prod"))
    first, second = hosts[0], hosts[1]
    specs = host_specs(_Options(f"ssh://admin@{first.name}:2222"), hosts)  # type: ignore[arg-type]
    assert specs == {first.id: f"ssh://admin@{first.name}:2222", second.id: f"ssh://{second.name}"}
    with pytest.raises(pytest.UsageError, match=r"none of the stack's gpuPool\.hosts"):
        host_specs(_Options("ssh://somewhere-else"), hosts)  # type: ignore[arg-type]


def test_expectations_come_from_the_settings() -> None:
    prod, dev = stack_settings("prod"), stack_settings("dev")
    assert prod.inference.tensor_parallel_size > 1 and expect.vllm_pod(prod).nccl_p2p_disable == "1"
    assert dev.inference.tensor_parallel_size == 1 and expect.vllm_pod(dev).nccl_p2p_disable is None
    assert expect.vllm_pod(prod).shm_bytes == expect.quantity_bytes(prod.inference.shm_size)
    assert expect.quantity_bytes("8Gi") == 8 * 2**30 and expect.quantity_bytes("500M") == 500 * 10**6
    edge = expect.edge(prod)
    assert edge.directives["proxy_read_timeout"] == f"{prod.edge_read_timeout_seconds}s"
    assert expect.redis(prod).config["appendfsync"] == prod.redis.appendfsync
    gpu = expect.gpu_hosts("prod", prod)[0]
    assert gpu.model_matches("NVIDIA GeForce RTX 4090 D") and not gpu.model_matches("NVIDIA GeForce RTX 4090")
    assert gpu.memory_matches(24564) and not gpu.memory_matches(16376)


@pytest.mark.parametrize("stack", SITE_STACKS)
def test_every_stacks_rendered_nginx_conf_meets_its_own_expectations(stack: str) -> None:
    settings = stack_settings(stack)
    text = render_nginx_conf(settings, tls_cert="/etc/nginx/tls/tls.crt", tls_key="/etc/nginx/tls/tls.key")
    assert nginx_t.problems(text, expect.edge(settings)) == []
    broken = text.replace("proxy_buffering off;", "proxy_buffering on;")
    assert any("proxy_buffering is 'on'" in p for p in nginx_t.problems(broken, expect.edge(settings)))
    missing = text.replace("proxy_buffering off;", "")
    assert any("proxy_buffering is 'on'" in p for p in nginx_t.problems(missing, expect.edge(settings)))


def _make_verify(state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOCAL_STATE_DIR": str(state)}
    return subprocess.run(["make", "-s", "verify"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_make_verify_passes_against_the_local_stack(local_stack: LocalStack) -> None:
    result = _make_verify(local_stack.root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b5 passed\b", result.stdout), result.stdout


@pytest.fixture
def misconfigured() -> Iterator[Path]:
    """Real Nginx and Redis as the local stack lays them out, but Nginx buffers the API and Redis has no password."""
    root = BUILD / "test-verify" / f"broken-{os.getpid()}"
    settings = expect.local_settings()
    handles: list[ServiceHandle] = []
    try:
        handles.append(start_redis(root / "redis", settings=settings, password=None))
        port = free_port()
        conf = render_nginx_conf(settings, listen=f"127.0.0.1:{port}", gateway_upstreams=[f"127.0.0.1:{free_port()}"],
                                 local_prefix=str(root / "nginx"))
        assert "proxy_buffering off;" in conf
        buffered = conf.replace("proxy_buffering off;", "proxy_buffering on;")
        handles.append(start_nginx(root / "nginx", conf_text=buffered, port=port, env_var=None))
        (root / PIDS_FILE).write_text(json.dumps({"owner_pid": os.getpid(), "processes": [
            {"name": h.name, "pid": h.process.pid, "pgid": h.process.pid} for h in handles]}))
        yield root
    finally:
        for handle in reversed(handles):
            handle.stop()


def test_make_verify_fails_against_a_misconfigured_stack(misconfigured: Path) -> None:
    result = _make_verify(misconfigured)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    failed = set(re.findall(r"FAILED \S+::(\w+)", out))
    assert failed == {"test_nginx_streams_the_api_unbuffered", "test_redis_refuses_clients_without_the_password"}, out
    assert "proxy_buffering is 'on' (effective), expected 'off'" in out
    assert "Redis answers without a password" in out
