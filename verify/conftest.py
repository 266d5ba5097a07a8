"""`make verify`'s options and how the suites are parametrised from the stacks' settings.

    --stack NAME        the site stack whose GPU hosts and pods to check (default: every site stack; the
                        collection then shows every stack's ids, nothing is skipped for lack of one)
    --gpu-hosts SPECS   testinfra host specs for the GPU hosts, comma separated (`ssh://admin@gpu-a1:2222`);
                        each is matched to the stack's `gpuPool.hosts` by its host name. Default: `ssh://<name>`
    --local-state DIR   the local stack's state directory (default: LOCAL_STATE_DIR or build/local)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from verify import expect
from verify.targets import selected_sites


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("verify", "make verify")
    group.addoption("--stack", action="store", default=None, help="site stack to verify (default: every one)")
    group.addoption("--gpu-hosts", action="store", default="", help="testinfra host specs for the GPU hosts")
    group.addoption("--local-state", action="store", default=None, help="the local stack's state directory")


def _parametrize(metafunc: pytest.Metafunc, name: str, values: list[Any], ids: Callable[[Any], str]) -> None:
    metafunc.parametrize(name, values, ids=[ids(v) for v in values])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not {"gpu_host", "workload"} & set(metafunc.fixturenames):
        return
    sites = selected_sites(metafunc.config)
    if "gpu_host" in metafunc.fixturenames:
        hosts = [h for stack, s in sites.items() for h in expect.gpu_hosts(stack, s)]
        marker = metafunc.definition.get_closest_marker("host_cache")
        if marker is not None:  # only hosts whose stack keeps the model cache on the host (hostPath)
            hosts = [h for h in hosts if h.cache_path is not None]
        _parametrize(metafunc, "gpu_host", hosts, lambda h: h.id)
    if "workload" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("workload")
        assert marker is not None, f"{metafunc.definition.name}: mark it @pytest.mark.workload('<name>')"
        picked = [expect.workloads(stack, s)[marker.args[0]] for stack, s in sites.items()]
        _parametrize(metafunc, "workload", picked, lambda w: w.id)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "workload(name): the pod suite's workload (vllm, gateway, edge, redis)")
    config.addinivalue_line("markers", "host_cache: only GPU hosts of stacks whose model cache is a hostPath")


@pytest.fixture(scope="session")
def local_state(pytestconfig: pytest.Config) -> Path:
    from localstack.stack import state_dir

    given = pytestconfig.getoption("--local-state")
    return Path(given).resolve() if given else state_dir()
