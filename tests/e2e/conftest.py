"""One local stack for the whole test session, started by the same code `make up` runs, on free ports."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from localstack.processes import free_port
from localstack.stack import Endpoint, LocalConfig, LocalStack

BUILD = Path(__file__).resolve().parents[2] / "build"


@pytest.fixture(scope="package")
def local_stack() -> Iterator[LocalStack]:
    root = BUILD / "test-e2e" / f"stack-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    stack = LocalStack(LocalConfig(root=root, port=free_port(), vllm_timeout=300))
    try:
        stack.start()  # stops whatever it started if it fails half-way
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="package")
def endpoint(local_stack: LocalStack) -> Endpoint:
    assert local_stack.endpoint is not None
    return local_stack.endpoint


@pytest.fixture(scope="package")
def client(endpoint: Endpoint) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{endpoint.url}/v1", api_key=endpoint.api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="package")
def http(endpoint: Endpoint) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=endpoint.url, headers={"Authorization": f"Bearer {endpoint.api_key}"}, timeout=30
    ) as c:
        yield c
