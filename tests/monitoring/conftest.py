"""Shared helpers for the monitoring tests: every stack's settings, scratch dirs under build/, tools."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack.prometheus import monitoring_settings
from stackspec.settings import StackSettings
from stackspec.stackfile import REPO
from tests.stacks import SITE_STACKS, stack_settings

SCRATCH = REPO / "build" / "tests" / "monitoring"
__all__ = ["SITE_STACKS", "stack_settings"]


def all_settings() -> dict[str, StackSettings]:
    found = {stack: stack_settings(stack) for stack in SITE_STACKS}
    found["local"] = monitoring_settings()
    return found


def tool(name: str) -> str:
    """A tool the tests run for real; missing is a failure (make setup installs it), never a skip."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make setup` (setup/apt-packages.txt)")
    return path


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False, timeout=120)


@pytest.fixture
def scratch(request: pytest.FixtureRequest) -> Iterator[Path]:
    path = SCRATCH / request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
