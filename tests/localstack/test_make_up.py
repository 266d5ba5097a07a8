"""`make up` / `make down` as a user runs them: twice in a row, stopped by `make down` and by Ctrl-C,
with nothing left behind; a taken port or a missing program is named with what to do."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localstack.processes import free_port, group_members, process_start_time, stop_group
from localstack.stack import ENDPOINT_FILE, PIDS_FILE

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"


class MakeUp:
    """A `make up` running in its own process group (as in a terminal), its output collected."""

    def __init__(self, state: Path, port: int, *, sigint_ignored: bool = False):
        self.state, self.port = state, port
        # The fast test model: these tests are about starting and stopping, not about pacing.
        self.env = {**os.environ, "PORT": str(port), "LOCAL_STATE_DIR": str(state), "TEST_MODEL": "tiny-qwen2"}
        self.out = state / f"make-up-{len(list(state.glob('make-up-*.out')))}.out"
        self.log = self.out.open("wb")
        # sigint_ignored: started the way a shell starts a background job (SIGINT inherited as ignored).
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.proc = subprocess.Popen(
            ["make", "--no-print-directory", "up"], cwd=REPO, env=self.env, stdout=self.log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=ignore,
        )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while "ready in" not in self.output():
            if self.proc.poll() is not None:
                pytest.fail(f"make up exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"make up not ready after {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.5)

    def recorded(self) -> list[dict[str, int]]:
        return list(json.loads((self.state / PIDS_FILE).read_text())["processes"])

    def cleanup(self) -> None:
        # Only if a test failed half-way: stop what this run started, then make itself.
        if (self.state / PIDS_FILE).exists():
            subprocess.run(["make", "--no-print-directory", "down"], cwd=REPO, env=self.env, check=False,
                           capture_output=True, timeout=60)
        if self.proc.poll() is None:
            stop_group(self.proc.pid, timeout=20)
        self.log.close()


@pytest.fixture
def runs(workdir: Path) -> Iterator[list[MakeUp]]:
    started: list[MakeUp] = []
    yield started
    for run in started:
        run.cleanup()


def _chat_works(state: Path) -> None:
    endpoint = json.loads((state / ENDPOINT_FILE).read_text())
    assert set(endpoint) == {"url", "api_key", "model"}
    reply = httpx.post(
        f"{endpoint['url']}/v1/chat/completions", timeout=60,
        headers={"Authorization": f"Bearer {endpoint['api_key']}"},
        json={"model": endpoint["model"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
              "ignore_eos": True},
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["choices"][0]["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == 5
    assert isinstance(answer["choices"][0]["message"]["content"], str)


def _all_gone(entries: list[dict[str, int]]) -> None:
    for entry in entries:
        assert process_start_time(entry["pid"]) != entry["start_time"], f"{entry} still running"
        assert group_members(entry["pgid"]) == [], f"{entry} left processes behind"


def test_make_up_twice_then_down_and_ctrl_c_leave_nothing_behind(workdir: Path, runs: list[MakeUp]) -> None:
    port = free_port()
    first = MakeUp(workdir, port)
    runs.append(first)
    first.wait_ready()
    out = first.output()
    assert f"http://127.0.0.1:{port}/" in out
    assert "curl -sN" in out and "Authorization: Bearer sk-local-" in out
    _chat_works(workdir)
    entries = first.recorded()
    assert {e["name"] for e in entries} >= {"redis", "vllm-0", "gateway-0", "gateway-1", "nginx"}

    # A second `up` on the same state while the first runs says so instead of starting a second stack.
    again = subprocess.run([str(PYTHON), "-m", "localstack", "up"], cwd=REPO, env=first.env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1
    assert "already running" in again.stderr and "make down" in again.stderr

    status = subprocess.run([str(PYTHON), "-m", "localstack", "status"], cwd=REPO, env=first.env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0 and f"endpoint: http://127.0.0.1:{port}" in status.stdout
    assert status.stdout.count("running") == len(entries)

    down = subprocess.run(["make", "--no-print-directory", "down"], cwd=REPO, env=first.env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 0, down.stderr
    assert "stopped:" in down.stdout
    assert first.proc.wait(timeout=60) == 0  # `up` noticed and exited cleanly
    _all_gone(entries)
    assert not (workdir / PIDS_FILE).exists()

    # Warm start: setup has nothing to do, the model is cached; Ctrl-C stops it, even when the run
    # inherited SIGINT as ignored (as background jobs and some CI runners do).
    second = MakeUp(workdir, port, sigint_ignored=True)
    runs.append(second)
    second.wait_ready()
    assert "model: tiny-qwen2, a random-weight test Qwen2 (cached" in second.output()
    _chat_works(workdir)
    entries = second.recorded()
    os.killpg(second.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    second.proc.wait(timeout=60)
    assert "stopped" in second.output()
    _all_gone(entries)


def test_a_taken_port_is_named_with_how_to_choose_another(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PORT": str(port), "LOCAL_STATE_DIR": str(workdir)}
        result = subprocess.run([str(PYTHON), "-m", "localstack", "up"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 (for Nginx" in result.stderr
    assert f"PORT={port + 1} make up" in result.stderr
    assert not (workdir / PIDS_FILE).exists()


def test_a_missing_program_says_which_and_to_run_make_setup(workdir: Path) -> None:
    env = {**os.environ, "PATH": str(workdir), "LOCAL_STATE_DIR": str(workdir), "PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "localstack", "up"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "program 'redis-server' is missing; run `make setup`" in result.stderr


def test_down_with_nothing_running_is_harmless(workdir: Path) -> None:
    env = {**os.environ, "LOCAL_STATE_DIR": str(workdir)}
    result = subprocess.run([str(PYTHON), "-m", "localstack", "down"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout


def test_down_never_signals_a_process_that_reused_a_recorded_pid(workdir: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # A stale record: the right pid, but a different start time (as after a reboot or pid reuse).
        stale = {"name": "redis", "pid": bystander.pid, "pgid": bystander.pid, "start_time": 1}
        (workdir / PIDS_FILE).write_text(json.dumps({"owner_pid": 1, "processes": [stale]}))
        env = {**os.environ, "LOCAL_STATE_DIR": str(workdir)}
        result = subprocess.run([str(PYTHON), "-m", "localstack", "down"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0
        assert bystander.poll() is None, "down killed a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()
