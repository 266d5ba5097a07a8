"""Local child processes: start with a log file, wait until healthy, stop the whole process group.

Every server runs in its own session (process group), so stopping it also stops its workers
(vLLM forks an engine core; Nginx forks workers). Identity = pid + kernel start time, so a later
`down` never signals an unrelated process that reused a pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ProgressFn = Callable[[float, str], None]  # (elapsed seconds, last log line)


class ProcessError(RuntimeError):
    """A managed process failed to start, exited early, or never became healthy."""


# Shared by every process of this user on the host (per user: a file another user made may be read-only).
PORT_COUNTER = Path(tempfile.gettempdir()) / f"qwen-serving-ports-{os.getuid()}"


def _port_range() -> range:
    """Ports the kernel never hands out by itself: below (or, failing that, above) its ephemeral range.

    A port from bind(port 0) is released before its server binds it, and a vLLM binds ~30 s later; in
    that window the kernel could give the same port to another test worker's bind(0) or to an outgoing
    connection, and a health check would then pass against the wrong server."""
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(10000, low) if low - 10000 >= 4096 else range(high + 1, 65536)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and handed to no other caller on this host for a while.

    A host-wide counter under a file lock hands out the ports of _port_range() in turn, so concurrent
    callers (pytest workers, a bench beside a suite) never get the same one until the range wraps."""
    ports = _port_range()
    fd = os.open(PORT_COUNTER, os.O_RDWR | os.O_CREAT, 0o666)
    with os.fdopen(fd, "r+") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        text = counter.read().strip()
        index = int(text) if text.isdigit() else os.getpid()
        for step in range(1, len(ports) + 1):
            port = ports[(index + step) % len(ports)]
            if not port_in_use(port):
                counter.seek(0)
                counter.truncate()
                counter.write(str((index + step) % len(ports)))
                return port
    raise OSError(f"no free TCP port in {ports.start}-{ports.stop - 1}")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces; fields after the closing paren are fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie is as good as gone
        return None
    return int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def http_ok(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> bool:
    try:
        req = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def last_line(path: Path) -> str:
    for line in reversed(tail(path, 5).splitlines()):
        if line.strip() and not line.startswith("--- "):  # skip our own "starting" header
            return line.strip()
    return ""


@dataclass
class ManagedProcess:
    """One server process (and its process group), logging to `log_path`."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    health_url: str | None = None
    uid: int | None = None  # start as this user and group (needs root; None: as we are)
    gid: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    start_time: int | None = None

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self.popen.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n--- {stamp} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self.popen = subprocess.Popen(
                    list(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=dict(self.env) if self.env is not None else None, cwd=self.cwd,
                    start_new_session=True,  # own process group: stop() reaches the workers too
                    user=self.uid, group=self.gid, extra_groups=[] if self.uid is not None else None,
                )
            except FileNotFoundError as err:
                raise ProcessError(
                    f"{self.name}: program not found: {self.argv[0]}; run `make setup`"
                ) from err
        self.start_time = process_start_time(self.popen.pid)
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(
        self,
        check: Callable[[], bool] | None = None,
        *,
        timeout: float = 60.0,
        progress: ProgressFn | None = None,
        interval: float = 0.25,
    ) -> None:
        """Poll `check` (default: GET health_url is 2xx) until true; fail fast with the log tail on exit."""
        if check is None:
            if self.health_url is None:
                raise ProcessError(f"{self.name}: no health check given")
            url = self.health_url
            check = lambda: http_ok(url)  # noqa: E731
        started = time.monotonic()
        last_report = 0.0
        while True:
            if self.popen is not None and self.popen.poll() is not None:
                raise ProcessError(
                    f"{self.name} exited with code {self.popen.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            if check():
                return
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                self.stop()
                raise ProcessError(
                    f"{self.name} was not healthy after {timeout:.0f} s; last lines of {self.log_path}:\n"
                    f"{tail(self.log_path)}"
                )
            if progress is not None and elapsed - last_report >= 1.0:
                last_report = elapsed
                progress(elapsed, last_line(self.log_path))
            time.sleep(interval)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `timeout` seconds."""
        if self.popen is None:
            return
        stop_group(self.popen.pid, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)

    def kill(self) -> None:
        """SIGKILL the whole group at once: simulates a crash."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def stop_group(pgid: int, *, timeout: float = 15.0) -> None:
    """SIGTERM every process in group `pgid`, wait for them, SIGKILL the rest."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_members(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while group_members(pgid) and time.monotonic() < deadline:
        _reap(pgid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
