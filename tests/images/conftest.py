"""The gateway and the edge from their images, built here with Docker (a dockerd of our own under
build/docker, stopped when this package ends), put in front of the session stack's Redis and vLLM: no second
vLLM. The e2e layer's fixtures (`endpoint`, `client`, `http`, `local_stack`) are overridden here so the e2e
checks this package imports run against the containers, through the edge container."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from localstack.docker import Docker
from localstack.processes import free_port
from localstack.services import GatewayHandle, NginxHandle, RedisHandle, VllmHandle
from localstack.stack import Endpoint, LocalConfig, LocalStack
from tests.conftest import BUILD
from tests.e2e.conftest import client, http  # noqa: F401  (the e2e clients, on this package's endpoint)


@dataclass
class ContainerFront:
    """What the imported e2e checks read of `local_stack`: vLLM (the shared one) and the containers."""

    stack: LocalStack
    vllm: list[VllmHandle]
    redis: RedisHandle  # the session stack's, which the containers use

    @property
    def gateways(self) -> list[GatewayHandle]:
        return self.stack.gateways

    @property
    def nginx(self) -> NginxHandle:
        assert self.stack.nginx is not None
        return self.stack.nginx

    @property
    def docker(self) -> Docker:
        assert self.stack.docker is not None
        return self.stack.docker


@pytest.fixture(scope="package", name="local_stack")
def containers_in_front(local_stack: LocalStack) -> Iterator[ContainerFront]:
    """The session's local stack (the parameter) with the containers in front of its Redis and vLLM."""
    root = BUILD / "test-images"
    shutil.rmtree(root, ignore_errors=True)
    assert local_stack.endpoint is not None and local_stack.settings is not None and local_stack.redis is not None
    stack = LocalStack(LocalConfig(root=root, port=free_port(), images=True, prometheus=False, say=lambda _: None))
    try:
        stack.start_front(local_stack.settings, api_key=local_stack.endpoint.api_key, redis=local_stack.redis,
                          vllm=local_stack.vllm)
        yield ContainerFront(stack, local_stack.vllm, local_stack.redis)
    finally:
        stack.stop()  # the containers, then the dockerd it started; never the session stack's Redis or vLLM


@pytest.fixture(scope="package")
def front(local_stack: ContainerFront) -> ContainerFront:
    return local_stack


@pytest.fixture(scope="package")
def endpoint(front: ContainerFront) -> Endpoint:
    assert front.stack.endpoint is not None
    return front.stack.endpoint
