"""Clients of the session's local stack (tests/conftest.py): the `openai` client and plain HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from localstack.stack import Endpoint


@pytest.fixture(scope="package")
def client(endpoint: Endpoint) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{endpoint.url}/v1", api_key=endpoint.api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="package")
def http(endpoint: Endpoint) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=endpoint.url, headers={"Authorization": f"Bearer {endpoint.api_key}"}, timeout=30
    ) as c:
        yield c
