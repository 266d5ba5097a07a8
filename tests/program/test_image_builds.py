"""The builds `make images` runs are those the Images component declares: the captured docker.Image inputs
under Pulumi's mocks, compared with the local builder's `docker build` command line for the same stack."""

from __future__ import annotations

import itertools

import pytest

from localstack.images import docker_build_argv
from stackspec.images import BUILDS, build_definition
from tests.program.conftest import IMAGE, STACKS, stack_run


def _parse_build_argv(argv: list[str]) -> dict[str, object]:
    """`docker build` arguments back into pulumi-docker's DockerBuildArgs shape."""
    out: dict[str, object] = {"args": {}, "context": argv[-1]}
    args: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-f":
            out["dockerfile"] = value
        elif flag == "--platform":
            out["platform"] = value
        elif flag == "--build-arg":
            key, _, val = value.partition("=")
            args[key] = val
    out["args"] = args
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_the_local_build_is_the_one_the_images_component_declares(stack: str) -> None:
    run = stack_run(stack)
    for build in BUILDS:
        declared = run.one(IMAGE, f"{build.name}-image").inputs["build"]
        local = _parse_build_argv(docker_build_argv(build_definition(build, run.settings.images), "t"))
        assert local == declared, build.name


def test_a_locally_made_base_changes_the_base_arg_and_nothing_else() -> None:
    run = stack_run("dev")
    for build in BUILDS:
        declared = run.one(IMAGE, f"{build.name}-image").inputs["build"]
        local = _parse_build_argv(docker_build_argv(build_definition(build, run.settings.images, base="b:1"), "t"))
        assert local["args"] == {**declared["args"], build.base_arg: "b:1"}
        assert {k: v for k, v in local.items() if k != "args"} == {k: v for k, v in declared.items() if k != "args"}
