from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[2] / "build" / "test-localstack"


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Path:
    """A fresh directory under build/ for one test (never /tmp or other system paths)."""
    path = BUILD / re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
