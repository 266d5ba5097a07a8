"""What every layer shares: one local stack per test session, and a schedule that runs two workers.

The local stack (Redis, vLLM on CPU serving the paced test model, gateways, Nginx, Prometheus and the
exporters) is started once, by the same code `make up` runs, for every layer that needs it (end to end,
images, host checks, live monitoring). It serves the paced model (`paced-qwen2`): streams arrive at a
GPU-like rate, so "incremental", "stop" and "cancel" are observable, not raced.

Schedule: `make test` runs two pytest-xdist workers (`--dist loadscope`, with GroupScheduling's scopes). Most of
a heavy layer's time is spent waiting on generation (a paced stream, a vLLM booting), so two of them side by
side roughly halve the wall time. Each group below runs whole on one worker, so the servers its fixtures start
boot once per run; the groups go first, longest first, so the two longest never end up queued on one worker;
every other module is a group of its own, handed to whichever worker is free. Processes and directories are per
worker (`free_port`, per-pid or per-test directories under build/), so the workers never share a server.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

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
TESTS = Path(__file__).resolve().parent


def group_of(rel: str) -> str | None:
    """The GROUPS entry of a test file, given relative to tests/ (`gateway/test_auth.py`), if any."""
    for name, prefixes in GROUPS.items():
        if any(rel == prefix or rel.startswith(prefix + "/") for prefix in prefixes):
            return name
    return None


def _group_of_item(item: pytest.Item) -> str | None:
    return group_of(Path(str(item.path)).resolve().relative_to(TESTS).as_posix())


class GroupScheduling(LoadScopeScheduling):
    """xdist's loadscope, with our scopes: a GROUPS entry runs whole on one worker; any other module is a scope
    of its own (its module-scoped fixtures and caches, e.g. a checkov scan per stack, are made once). xdist's
    own `--dist loadgroup` groups nothing on pytest 9: it renames `item._nodeid`, which pytest 9 ignores."""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        return group_of(path.removeprefix(f"{TESTS.name}/")) or path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> GroupScheduling | None:
    return GroupScheduling(config, log) if config.getvalue("dist") == "loadscope" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _group_of_item(item) is not None:  # every group starts real vLLM: `make test-fast` leaves them out
            item.add_marker(pytest.mark.slow)
    # The scheduler hands out scopes in this order: the groups first, longest first; then the other modules in
    # pytest's order (stable sort: the order within a group is pytest's own).
    items.sort(key=lambda item: _ORDER.get(_group_of_item(item) or "", len(GROUPS)))


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

