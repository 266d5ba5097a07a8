"""Shared helpers for the artifact tests: stack settings without running the program, scratch dirs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackspec.stackfile import REPO
from tests.stacks import SITE_STACKS, settings_with, stack_sections, stack_settings

STACKS = SITE_STACKS
SCRATCH = REPO / "build" / "tests" / "artifacts"
__all__ = ["STACKS", "settings_with", "stack_sections", "stack_settings"]


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory under build/ (never /tmp or system paths), kept after a failure for a look."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name)
    path = SCRATCH / safe
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
