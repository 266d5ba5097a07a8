"""What every layer shares: one local stack per test session, and an order that keeps heavy things apart.

The local stack (Redis, vLLM on CPU serving the paced test model, gateways, Nginx, Prometheus and the
exporters) is started once, by the same code `make up` runs, for every layer that needs it (end to end,
host checks, live monitoring). It serves the paced model (`paced-qwen2`): streams arrive at a GPU-like
rate, so "incremental", "stop" and "cancel" are observable, not raced.

Test order: the layers that start nothing first, then `make up`'s own tests (their own stacks), then the
gateway layer (its own small vLLM fleet, stopped when the package ends), then every layer on the shared
local stack. So at most one group of CPU vLLMs runs at a time on a 2-core machine.
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

# Directories (under tests/) in the order they run; anything not listed runs first.
HEAVY_ORDER = ["localstack", "gateway", "e2e", "images", "infra", "verify", "monitoring/test_live_prometheus.py"]


def _rank(item: pytest.Item) -> int:
    rel = Path(str(item.path)).resolve().relative_to(Path(__file__).resolve().parent).as_posix()
    for i, prefix in enumerate(HEAVY_ORDER, start=1):
        if rel == prefix or rel.startswith(prefix + "/"):
            return i
    return 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order within a group is pytest's own


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
