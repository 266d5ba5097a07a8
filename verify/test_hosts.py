"""The GPU hosts of a stack, over ssh (testinfra): what the vLLM pods need from the node before they start.

One test per check and host, the host list and every expected value from the stack's `gpuPool` and
`inference.cache` (verify/expect.py). `make verify STACK=prod [HOSTS=ssh://admin@gpu-a1,...]`.
"""

from __future__ import annotations

from typing import Any

import pytest
import testinfra

from verify import expect
from verify.targets import host_specs

QUERY = "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits"


@pytest.fixture
def node(gpu_host: expect.GpuHost, pytestconfig: pytest.Config) -> Any:
    """The testinfra host for this GPU host (ssh://<name> unless --gpu-hosts names it otherwise)."""
    hosts = [h for stack, s in expect.every_site().items() if stack == gpu_host.stack
             for h in expect.gpu_hosts(stack, s)]
    return testinfra.get_host(host_specs(pytestconfig, hosts)[gpu_host.id])


def _gpus(node: Any) -> list[tuple[str, float, str]]:
    out = node.check_output(QUERY)
    rows = [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]
    return [(name, float(memory), driver) for name, memory, driver in rows]


def test_nvidia_driver_is_at_least_the_stacks_minimum(node: Any, gpu_host: expect.GpuHost) -> None:
    drivers = {driver for _, _, driver in _gpus(node)}
    assert len(drivers) == 1, f"{gpu_host.name}: GPUs report different drivers {drivers}"
    (driver,) = drivers
    assert expect.version_tuple(driver) >= expect.version_tuple(gpu_host.driver_min_version), (
        f"{gpu_host.name}: NVIDIA driver {driver} < gpuPool.driverMinVersion {gpu_host.driver_min_version}")


def test_gpu_count_model_and_memory_match_the_pool(node: Any, gpu_host: expect.GpuHost) -> None:
    gpus = _gpus(node)
    assert len(gpus) == gpu_host.gpus, f"{gpu_host.name}: {len(gpus)} GPUs, gpuPool.hosts says {gpu_host.gpus}"
    for name, memory_mib, _ in gpus:
        assert gpu_host.model_matches(name), f"{gpu_host.name}: {name!r} is not a {gpu_host.gpu_model}"
        assert gpu_host.memory_matches(memory_mib), (
            f"{gpu_host.name}: {memory_mib:.0f} MiB per GPU, gpuPool.gpuMemoryGb says {gpu_host.gpu_memory_gb:g} GB")


def test_nvidia_container_toolkit_is_installed(node: Any, gpu_host: expect.GpuHost) -> None:
    assert node.package("nvidia-container-toolkit").is_installed, f"{gpu_host.name}: no nvidia-container-toolkit"
    assert node.exists("nvidia-ctk") and node.exists("nvidia-container-runtime")


def test_kubelet_runs_and_starts_at_boot(node: Any, gpu_host: expect.GpuHost) -> None:
    kubelet = node.service("kubelet")
    assert kubelet.is_running and kubelet.is_enabled, f"{gpu_host.name}: kubelet not running/enabled"


@pytest.mark.host_cache
def test_model_cache_is_a_mount_with_free_space(node: Any, gpu_host: expect.GpuHost) -> None:
    path = gpu_host.cache_path
    assert path is not None
    assert node.file(path).is_directory, f"{gpu_host.name}: inference.cache.hostPath {path} is not a directory"
    target = node.check_output("findmnt -n -o TARGET -T %s", path).strip()
    assert target != "/", f"{gpu_host.name}: {path} is on the root filesystem, not a mounted (NVMe) volume"
    free = int(node.check_output("df -B1 --output=avail %s", path).splitlines()[-1].strip())
    assert free >= gpu_host.cache_min_free_bytes, (
        f"{gpu_host.name}: {free / 1e9:.1f} GB free at {path}, inference.cache.minFreeGb says "
        f"{gpu_host.cache_min_free_bytes / 1e9:g}")
