"""A stack's pods, over kubectl (testinfra's kubectl backend): what runs is what the stack declared.

Pods are found by their labels in the stack's namespace (`kubernetes.namespace`, context `kubernetes.context`);
each check runs in every ready pod of its workload. `make verify STACK=prod`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import testinfra

from stackspec.render.redis import CLI_AUTH
from verify import expect, nginx_t


def _kubectl(workload: expect.Workload) -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: the pod suite reaches the cluster through it")
    return [kubectl, *(["--context", workload.context] if workload.context else []), "-n", workload.namespace]


def pod_names(workload: expect.Workload) -> list[str]:
    argv = [*_kubectl(workload), "get", "pods", "-l", workload.selector, "-o", "json"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)}: {result.stderr.strip()}")
    items = json.loads(result.stdout)["items"]
    ready = [p["metadata"]["name"] for p in items
             if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
    if not ready:
        pytest.fail(f"no ready pod labelled {workload.selector} in {workload.namespace}")
    return sorted(ready)


@pytest.fixture
def pods(workload: expect.Workload) -> list[Any]:
    """testinfra hosts, one per ready pod of the workload, in its checked container."""
    query = f"namespace={workload.namespace}&container={workload.container}"
    if workload.context:
        query += f"&context={workload.context}"
    return [testinfra.get_host(f"kubectl://{name}?{query}") for name in pod_names(workload)]


def _settings(workload: expect.Workload) -> Any:
    return expect.site_settings(workload.stack)


@pytest.mark.workload("vllm")
def test_vllm_nccl_p2p_follows_tensor_parallelism(workload: expect.Workload, pods: list[Any]) -> None:
    want = expect.vllm_pod(_settings(workload)).nccl_p2p_disable
    for pod in pods:
        have = pod.environment().get("NCCL_P2P_DISABLE")
        assert have == want, f"{pod.backend.hostname}: NCCL_P2P_DISABLE={have!r}, expected {want!r} (TP, GPU model)"


@pytest.mark.workload("vllm")
def test_vllm_dev_shm_is_memory_backed_of_the_set_size(workload: expect.Workload, pods: list[Any]) -> None:
    want = expect.vllm_pod(_settings(workload)).shm_bytes
    for pod in pods:
        fstype, blocks, block_size = pod.check_output("stat -f -c '%%T %%b %%S' /dev/shm").split()
        assert fstype == "tmpfs", f"{pod.backend.hostname}: /dev/shm is {fstype}, not memory-backed"
        assert int(blocks) * int(block_size) == want, (
            f"{pod.backend.hostname}: /dev/shm is {int(blocks) * int(block_size)} bytes, inference.shmSize is {want}")


@pytest.mark.workload("gateway")
def test_gateway_runs_as_non_root(workload: expect.Workload, pods: list[Any]) -> None:
    for pod in pods:
        assert pod.check_output("id -u").strip() != "0", f"{pod.backend.hostname}: the gateway runs as root"


@pytest.mark.workload("vllm")
def test_vllm_runs_as_non_root(workload: expect.Workload, pods: list[Any]) -> None:
    for pod in pods:
        assert pod.check_output("id -u").strip() != "0", f"{pod.backend.hostname}: vLLM runs as root"


@pytest.mark.workload("edge")
def test_nginx_runs_as_non_root(workload: expect.Workload, pods: list[Any]) -> None:
    for pod in pods:
        assert pod.check_output("id -u").strip() != "0", f"{pod.backend.hostname}: nginx runs as root"


@pytest.mark.workload("edge")
def test_nginx_streams_the_api_unbuffered(workload: expect.Workload, pods: list[Any]) -> None:
    expected = expect.edge(_settings(workload))
    for pod in pods:
        dump = pod.run("nginx -T -c %s", expected.conf_in_pod)
        assert dump.rc == 0, dump.stderr
        assert nginx_t.problems(dump.stdout, expected) == [], pod.backend.hostname


@pytest.mark.workload("redis")
def test_redis_requires_its_password_and_appends(workload: expect.Workload, pods: list[Any]) -> None:
    """The password is a file of the mounted redis Secret, read into REDISCLI_AUTH for one command: it is in no
    env var of the container and never reaches argv."""
    expected = expect.redis(_settings(workload))
    cli = f"{CLI_AUTH} redis-cli --no-auth-warning"
    for pod in pods:
        anonymous = pod.run("env -u REDISCLI_AUTH redis-cli PING")
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr, f"{pod.backend.hostname}: Redis answers without auth"
        assert "REDISCLI_AUTH" not in pod.check_output("env"), f"{pod.backend.hostname}: a password in the env"
        requirepass = pod.check_output(f"{cli} CONFIG GET requirepass").splitlines()
        assert len(requirepass) == 2 and requirepass[1], f"{pod.backend.hostname}: requirepass is not set"
        for name, want in expected.config.items():
            assert pod.check_output(f"{cli} CONFIG GET %s", name).splitlines() == [name, want]
