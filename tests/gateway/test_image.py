"""The gateway image's recipe: pinned base, non-root, no build tools, packages pinned like the venv."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "app/gateway/Dockerfile").read_text()


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_requirements_are_pinned_exactly_as_in_constraints() -> None:
    image, venv = pins(REPO / "app/gateway/requirements.txt"), pins(REPO / "constraints.txt")
    assert image, "no pins"
    for name, version in image.items():
        assert venv.get(name) == version, f"{name}=={version} differs from constraints.txt ({venv.get(name)})"


# The Pythons an image's base may have: Debian bookworm's python3 (the base `make images` makes) and the
# official python:3.11-slim's. redis-py needs async-timeout below 3.11.3: a list complete for one is not for both.
BASE_PYTHONS = ("3.11.2", "3.11.9")


def missing_dependencies(requirements: Path, python: str) -> list[str]:
    """What the packages of an image's requirements file need (this Python on Linux, no extras) and it lacks:
    installed with --no-deps, the file must be complete."""
    image = set(pins(requirements))
    missing = []
    for name in sorted(image):
        if name == "async-timeout":  # not installed in .venv (3.11.7); it has no dependencies
            continue
        for text in importlib.metadata.distribution(name).requires or []:
            req = Requirement(text)
            env = {"extra": "", "python_full_version": python, "python_version": "3.11"}
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if canonicalize_name(req.name) not in image:
                missing.append(f"{name} -> {req.name}")
    return missing


@pytest.mark.parametrize("python", BASE_PYTHONS)
def test_requirements_are_complete_for_the_gateway(python: str) -> None:
    assert missing_dependencies(REPO / "app/gateway/requirements.txt", python) == []


def test_dockerfile_is_pinned_non_root_and_tool_free() -> None:
    assert re.search(r"^ARG PYTHON_BASE=\S+@sha256:[0-9a-f]{64}$", DOCKERFILE, re.M)
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001:10001$", final_stage, re.M)
    assert not re.search(r"gcc|build-essential|apt-get install|curl|wget", final_stage)
    assert 'CMD ["python", "-m", "app.gateway"]' in final_stage
    assert "--only-binary=:all:" in DOCKERFILE and "--no-deps" in DOCKERFILE
    assert "--no-index --find-links" in DOCKERFILE  # offline: the wheels come with the build context
