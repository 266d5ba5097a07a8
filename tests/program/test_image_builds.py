"""The builds `make images` runs are those the Images component declares: the captured docker.Image inputs
under Pulumi's mocks, compared with the local builder's `docker build` command line for the same stack."""

from __future__ import annotations

import itertools

import pytest

from localstack.images import docker_build_argv
from stackspec.images import BUILD_BY_NAME, BUILDS, build_definition, builds
from stackspec.stackfile import REPO
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
    declared_images = {r.name for r in run.of_type(IMAGE)}
    assert declared_images == {f"{b.name}-image" for b in builds(run.settings)}
    for build in builds(run.settings):
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


def test_make_images_builds_every_image_a_stack_builds_with_its_wheels_offline() -> None:
    """The backup image too (the CronJob's): `make images` builds what any `pulumi up` would, each Python image
    from wheels downloaded into the context beforehand (no index during the build)."""
    every = {b.name for stack in STACKS for b in builds(stack_run(stack).settings)}
    assert "backup" in every and set(BUILD_BY_NAME) == every
    python_images = [b for b in BUILD_BY_NAME.values() if b.base_setting == "python_base"]
    assert {b.name for b in python_images} == {"gateway", "backup"}
    for build in python_images:
        assert build.requirements and build.wheels and build.wheels.startswith("build/wheels/")
        dockerfile = (REPO / build.dockerfile).read_text()
        assert "ARG WHEELS" in dockerfile and "--no-index --find-links" in dockerfile, build.dockerfile
        assert f"COPY {build.requirements} " in dockerfile
        assert f"!{build.wheels}/" in (REPO / ".dockerignore").read_text().splitlines()
    # Two images never share a wheels directory (each is downloaded from its own pins).
    assert len({b.wheels for b in python_images}) == len(python_images)


def test_make_images_downloads_each_images_wheels_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_images asks for every wanted image's wheels from its own requirements (the download is stubbed
    here; the images layer downloads and builds for real)."""
    from localstack import images as local_images

    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(local_images, "ensure_wheels", lambda say, **kw: asked.append(
        (kw["requirements_file"], kw["wheels_dir"])))
    monkeypatch.setattr(local_images, "choose_base", lambda *a, **k: ("b:1", "pinned"))

    class NoDocker:
        def run(self, argv: list[str], timeout: float = 0) -> object:
            raise _Stop

    class _Stop(Exception):
        pass

    with pytest.raises(_Stop):
        local_images.build_images(NoDocker(), stack_run("prod").settings.images, lambda _: None)  # type: ignore[arg-type]
    assert asked == [(b.requirements, b.wheels) for b in BUILD_BY_NAME.values() if b.wheels]
