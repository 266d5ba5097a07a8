"""The builder's own choices, without Docker: the mirror debootstrap uses is the one apt uses, and every
image's base setting has a base that can be made here."""

from __future__ import annotations

from pathlib import Path

import pytest

from localstack.images import LOCAL_BASES, debian_mirror
from localstack.processes import ProcessError
from stackspec.images import BUILDS

DEB822 = """Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://mirror.example/debian http://other.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
"""


def test_the_mirror_comes_from_apts_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(DEB822)
    assert debian_mirror([tmp_path / "sources.list", tmp_path]) == "http://mirror.example/debian"


def test_the_mirror_comes_from_a_one_line_sources_list(tmp_path: Path) -> None:
    listing = tmp_path / "sources.list"
    listing.write_text("# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main non-free\n")
    assert debian_mirror([listing, tmp_path / "sources.list.d"]) == "http://mirror.example/debian"


def test_no_bookworm_mirror_is_an_error_that_says_so(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian trixie main\n")
    with pytest.raises(ProcessError, match="no Debian bookworm mirror"):
        debian_mirror([tmp_path / "sources.list"])


def test_this_machines_apt_names_a_mirror() -> None:
    assert debian_mirror().startswith(("http://", "https://"))


def test_every_image_has_a_base_that_can_be_made_here() -> None:
    assert {b.base_setting for b in BUILDS} == set(LOCAL_BASES)
    assert "python-is-python3" in LOCAL_BASES["python_base"].packages  # the Dockerfile runs `python -m venv`
