"""Shared helpers for the monitoring tests: every stack's settings, scratch dirs under build/, tools."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.offline import REPO, SECRET_PLACEHOLDERS, read_stack_config, stack_file
from infra.settings import PROJECT, StackSettings, settings_from_config
from localstack.prometheus import monitoring_settings

SITE_STACKS = ["dev", "staging", "prod", "prod-dr"]
SCRATCH = REPO / "build" / "tests" / "monitoring"


def stack_settings(stack: str) -> StackSettings:
    raw, _ = read_stack_config(stack_file(stack))
    for short, value in SECRET_PLACEHOLDERS.items():
        raw.setdefault(f"{PROJECT}:{short}", value)
    return settings_from_config(raw)


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
