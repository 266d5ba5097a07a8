"""What every layer shares: one local stack per test session, and a schedule that runs two workers.

The local stack (Redis, vLLM on CPU serving the paced test model, gateways, Nginx, Prometheus and the
exporters) is started once, by the same code `make up` runs, for every layer that needs it (end to end,
images, host checks, live monitoring). It serves the paced model (`paced-qwen2`): streams arrive at a
GPU-like rate, so "incremental", "stop" and "cancel" are observable, not raced.

Schedule: `make test` runs two pytest-xdist workers (`--dist loadgroup`). Most of a heavy layer's time is
spent waiting on generation (a paced stream, a vLLM booting), so two of them side by side roughly halve the
wall time. Each group below runs whole on one worker, so the servers its fixtures start boot once per run;
the groups go first, longest first, so the two longest never end up queued on one worker; every other module
is a group of its own, handed to whichever worker is free. Processes and directories are per worker
(`free_port`, per-pid or per-test directories under build/), so the workers never share a server.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack.processes import free_port
from localstack.stack import Endpoint, LocalConfig, LocalStack

BUILD = Path(__file__).resolve().parents[1] / "build"
pytest_plugins = ["tests.layer_times"]

# Heavy groups, longest first: the tests under each path (relative to tests/) run together on one worker.
GROUPS: dict[str, tuple[str, ...]] = {
    "local-stack": ("e2e", "images", "infra", "verify", "monitoring/test_live_prometheus.py"),
    "gateway": ("gateway",),
    "bench-vllm": ("bench_smoke/test_routing_bench.py", "bench_smoke/test_vllm_benches.py"),
    "make-up": ("localstack/test_make_up.py",),
    "drill": ("dr/test_drill.py",),
}
_ORDER = {name: rank for rank, name in enumerate(GROUPS)}


def _relative(item: pytest.Item) -> str:
    return Path(str(item.path)).resolve().relative_to(Path(__file__).resolve().parent).as_posix()


def group_of(item: pytest.Item) -> str | None:
    rel = _relative(item)
    for name, prefixes in GROUPS.items():
        if any(rel == prefix or rel.startswith(prefix + "/") for prefix in prefixes):
            return name
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks (it appends `@group` to the node ids)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = group_of(item)
        if group is not None:  # every group starts real vLLM: `make test-fast` leaves them out
            item.add_marker(pytest.mark.slow)
        # Any other module is a group of its own: its module-scoped fixtures and caches (a checkov scan per
        # stack, an S3 server, a Redis pair) are made once, not once per worker.
        item.add_marker(pytest.mark.xdist_group(group or _relative(item)))
    # Stable: the order within a group is pytest's own; the other modules after the groups, in pytest's order.
    items.sort(key=lambda item: _ORDER.get(group_of(item) or "", len(GROUPS)))


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    root = BUILD / "test-local" / f"stack-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    stack = LocalStack(LocalConfig(root=root, port=free_port(), vllm_timeout=300, say=lambda _: None))
    try:
        stack.start()  # stops whatever it started if it fails half-way
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def endpoint(local_stack: LocalStack) -> Endpoint:
    assert local_stack.endpoint is not None
    return local_stack.endpoint
