"""Shared helpers for the artifact tests: stack settings without running the program, scratch dirs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.offline import REPO, SECRET_PLACEHOLDERS, read_stack_config, stack_file
from infra.settings import PROJECT, StackSettings, parse_settings, settings_from_config

STACKS = ["dev", "staging", "prod", "prod-dr"]
SCRATCH = REPO / "build" / "tests" / "artifacts"


def stack_settings(stack: str) -> StackSettings:
    raw, _ = read_stack_config(stack_file(stack))
    for short, value in SECRET_PLACEHOLDERS.items():
        raw.setdefault(f"{PROJECT}:{short}", value)
    return settings_from_config(raw)


def stack_sections(stack: str) -> dict[str, Any]:
    import json

    raw, _ = read_stack_config(stack_file(stack))
    return {k.split(":", 1)[1]: json.loads(v) for k, v in raw.items()}


def settings_with(stack: str, **sections: Any) -> StackSettings:
    """A stack's settings with whole sections replaced (camelCase section names)."""
    values = stack_sections(stack) | sections
    return parse_settings(values, {"apiKeyHashes": SECRET_PLACEHOLDERS["apiKeyHashes"]})


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory under build/ (never /tmp or system paths), kept after a failure for a look."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name)
    path = SCRATCH / safe
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
