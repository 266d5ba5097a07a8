"""The DR drill (`make drill`) with real programs: two sites' Redis (TLS replication, the replication user),
gateways and Nginx (HTTPS), one shared vLLM on CPU. It asserts what must hold and reports the rest: no
acknowledged turn older than a second is lost, nothing written after the promotion is lost, the old primary
returns as a replica, failback works. The recovery time is reported (result.json), never asserted."""

from __future__ import annotations

import json
import shutil

from dr.drill import Drill, DrillConfig
from tests.conftest import BUILD


def test_the_drill_loses_no_acknowledged_turn_and_fails_back() -> None:
    # Under build/, not pytest's tmp_path: the local vLLM runs as another user (localstack/unprivileged.py),
    # who cannot enter pytest's private (0700) temp tree.
    root = BUILD / "test-drill"
    shutil.rmtree(root, ignore_errors=True)
    lines: list[str] = []
    result = Drill(DrillConfig(root=root / "drill", say=lines.append)).run()
    report = "\n".join(lines)
    assert result.sessions == 20 and result.acknowledged_turns == 20 * 5, report
    assert result.lost_acknowledged_turns == 0, report
    assert result.lost_after_promotion == 0, report
    assert result.a_returned_as_replica, report  # fencing: never two masters
    assert result.failback_ok, report
    assert result.deferred_steps and "demote site-a" in result.deferred_steps[0]  # A was dead at failover
    written = json.loads((root / "drill" / "result.json").read_text())
    for key in ("sessions", "acknowledged_turns", "lost_acknowledged_turns", "lost_last_second", "rto_seconds",
                "failback_ok"):
        assert key in written
    assert written["rto_seconds"] > 0  # reported, not held to a number
