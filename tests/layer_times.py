"""Time per test layer, printed at the end of every run (with pytest's own slowest-tests list beside it).

A layer is the first directory under tests/ (`gateway`, `e2e`, ...). Its time is the sum of its tests'
setup + call + teardown, so a layer's shared fixtures (a vLLM fleet booting) are counted where they run.
Under pytest-xdist the sums come from every worker, and the run's wall time is printed beside them: the
difference is the overlap that running layers side by side buys.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

TESTS = Path(__file__).resolve().parent
_seconds: dict[str, float] = defaultdict(float)
_tests: dict[str, set[str]] = defaultdict(set)
_started = time.monotonic()


def layer_of(nodeid: str) -> str:
    parts = Path(nodeid.split("::", 1)[0]).parts
    inside = parts[1:] if parts and parts[0] == TESTS.name else parts
    return inside[0] if len(inside) > 1 else "(top)"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    layer = layer_of(report.nodeid)
    _seconds[layer] += report.duration
    _tests[layer].add(report.nodeid)


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not _seconds:
        return
    wall = time.monotonic() - _started
    write = terminalreporter.write_line
    terminalreporter.section("time per layer (setup + call + teardown, summed over workers)")
    write(f"{'layer':<14}{'tests':>7}{'seconds':>10}{'share':>8}")
    total = sum(_seconds.values())
    for layer, seconds in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        write(f"{layer:<14}{len(_tests[layer]):>7}{seconds:>10.1f}{seconds / total:>8.0%}")
    write(f"{'all':<14}{sum(len(t) for t in _tests.values()):>7}{total:>10.1f}   wall {wall:.1f} s")
