"""localstack.processes against real child processes: health waits, fail-fast, whole-group stop/kill."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localstack.processes import (
    ManagedProcess,
    ProcessError,
    free_port,
    group_members,
    http_ok,
    port_in_use,
    process_start_time,
)
from localstack.services import serves_model


def _server(tmp: Path, port: int, *, with_child: bool = True) -> ManagedProcess:
    # A shell that leaves a background child in the same process group, then becomes an HTTP server.
    child = "sleep 300 & " if with_child else ""
    cmd = ["sh", "-c", f"{child}exec {sys.executable} -m http.server {port} --bind 127.0.0.1"]
    return ManagedProcess("web", cmd, tmp / "web.log", cwd=tmp, health_url=f"http://127.0.0.1:{port}/")


def test_free_port_is_bindable_and_port_in_use_sees_a_listener(workdir: Path) -> None:
    port = free_port()
    assert not port_in_use(port)
    proc = _server(workdir, port).start()
    try:
        proc.wait_ready(timeout=20)
        assert port_in_use(port)
        assert http_ok(f"http://127.0.0.1:{port}/")
    finally:
        proc.stop()
    assert not port_in_use(port)


def test_concurrent_processes_never_get_the_same_port_nor_an_ephemeral_one(workdir: Path) -> None:
    """Pytest workers start servers side by side: a port handed to one must not reach another before its
    server binds it (a vLLM binds ~30 s later), nor be one the kernel gives to bind(0) or a connection."""
    script = "from localstack.processes import free_port; print(*(free_port() for _ in range(200)))"
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2]) for _ in range(4)]
    handed = [int(p) for run in runs for p in run.communicate(timeout=60)[0].split()]
    assert all(run.returncode == 0 for run in runs)
    assert len(handed) == 800 and len(set(handed)) == 800
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert not any(low <= port <= high for port in handed)


def test_stop_ends_the_whole_process_group(workdir: Path) -> None:
    proc = _server(workdir, free_port()).start()
    proc.wait_ready(timeout=20)
    members = group_members(proc.pid)
    assert len(members) == 2, members  # the server and its background `sleep`
    start_times = {pid: process_start_time(pid) for pid in members}
    proc.stop(timeout=5)
    assert group_members(proc.pid) == []
    assert all(process_start_time(pid) != t for pid, t in start_times.items())


def test_kill_is_immediate_and_the_process_can_start_again(workdir: Path) -> None:
    port = free_port()
    proc = _server(workdir, port, with_child=False).start()
    proc.wait_ready(timeout=20)
    first_pid = proc.pid
    proc.kill()
    assert not proc.running()
    assert not http_ok(f"http://127.0.0.1:{port}/", timeout=0.5)
    proc.start()
    try:
        proc.wait_ready(timeout=20)
        assert proc.pid != first_pid
    finally:
        proc.stop()


def test_a_process_that_exits_fails_fast_with_its_log_tail(workdir: Path) -> None:
    cmd = ["sh", "-c", "echo 'config error: no such option frobnicate' >&2; exit 3"]
    proc = ManagedProcess("broken", cmd, workdir / "broken.log", health_url=f"http://127.0.0.1:{free_port()}/")
    proc.start()
    started = time.monotonic()
    with pytest.raises(ProcessError) as err:
        proc.wait_ready(timeout=30)
    assert time.monotonic() - started < 5  # did not wait for the timeout
    assert "exited with code 3" in str(err.value)
    assert "no such option frobnicate" in str(err.value)


def test_never_healthy_times_out_and_is_stopped(workdir: Path) -> None:
    proc = ManagedProcess("sleeper", ["sleep", "60"], workdir / "sleeper.log").start()
    with pytest.raises(ProcessError, match="not healthy after 1 s"):
        proc.wait_ready(lambda: False, timeout=1)
    assert not proc.running()


def test_a_missing_program_says_run_make_setup(workdir: Path) -> None:
    proc = ManagedProcess("ghost", ["no-such-program-qs"], workdir / "ghost.log")
    with pytest.raises(ProcessError, match="program not found: no-such-program-qs; run `make setup`"):
        proc.start()


def test_progress_reports_elapsed_time_and_the_last_log_line(workdir: Path) -> None:
    cmd = ["sh", "-c", "echo loading weights; sleep 60"]
    proc = ManagedProcess("slow", cmd, workdir / "slow.log").start()
    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + 2.5
    try:
        with pytest.raises(ProcessError):
            proc.wait_ready(lambda: False, timeout=2.5, progress=lambda e, line: seen.append((e, line)))
    finally:
        proc.stop()
    assert time.monotonic() >= deadline - 0.1
    assert seen and seen[-1][0] >= 1.0
    assert seen[-1][1] == "loading weights"


def test_a_vllm_is_up_only_when_its_own_name_answers_on_its_port(workdir: Path) -> None:
    """Another server answering /v1/models on a vLLM's port (a port clash) must not count as that vLLM."""
    (workdir / "v1").mkdir()
    (workdir / "v1" / "models").write_text(json.dumps({"object": "list", "data": [{"id": "paced-qwen2"}]}))
    port = free_port()
    proc = _server(workdir, port, with_child=False).start()
    try:
        proc.wait_ready(timeout=20)
        url = f"http://127.0.0.1:{port}"
        assert serves_model(url, "paced-qwen2")()
        assert not serves_model(url, "tiny-qwen2")()
    finally:
        proc.stop()
    assert not serves_model(url, "paced-qwen2")()
