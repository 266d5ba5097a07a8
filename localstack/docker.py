"""A Docker daemon of our own, started like every other real component: Debian's `dockerd` (docker.io) with its
data root, exec root, pidfile and socket under `build/docker/`, reached through DOCKER_HOST, stopped afterwards.

A system dockerd (if any) is never used or touched: ours has its own socket and state, no bridge and no
iptables rules (containers use the host's network, like the rest of the local stack on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localstack.processes import ManagedProcess, ProcessError, process_start_time
from localstack.services import REPO_ROOT, require_program

# Debian's docker.io (setup/apt-packages.txt). A `docker` elsewhere on PATH is not ours: name these.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
DEFAULT_DIR = REPO_ROOT / "build" / "docker"


def _short_dir(path: Path) -> Path:
    """containerd's sockets live under the exec root; a unix socket path must stay under 108 bytes."""
    if len(str(path)) <= 60:
        return path
    return Path(tempfile.gettempdir()) / f"qs-docker-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"


@dataclass
class Docker:
    """`dockerd` with everything under `root`; `start()` reuses one already answering on its socket (and then
    leaves it running), otherwise starts it and `stop()` stops it."""

    root: Path = DEFAULT_DIR
    process: ManagedProcess | None = None
    name: str = "dockerd"

    @property
    def exec_root(self) -> Path:
        return _short_dir(self.root.resolve() / "run")

    @property
    def socket(self) -> Path:
        return self.exec_root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root.resolve()),
                "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0", **(extra or {})}

    def run(self, args: Sequence[str], *, check: bool = True, timeout: float = 600, stdin: Path | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`docker <args>` against this daemon (stdin from a file if given); a failure raises with docker's
        own message."""
        with open(stdin or os.devnull, "rb") as f:
            proc = subprocess.run([DOCKER, *args], env=self.env(env), capture_output=True, timeout=timeout,
                                  stdin=f, check=False)
        out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                          proc.stderr.decode(errors="replace"))
        if check and out.returncode != 0:
            raise ProcessError(f"docker {' '.join(args[:3])} failed ({out.returncode}):\n{out.stderr.strip()}")
        return out

    def answering(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return self.run(["version", "--format", "{{.Server.Version}}"], check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self, timeout: float = 60.0) -> Docker:
        require_program("dockerd", DOCKERD)
        require_program("docker", DOCKER)
        if self.answering():
            return self
        root = self.root.resolve()
        data, run = root / "data", self.exec_root
        for d in (data, run):
            d.mkdir(parents=True, exist_ok=True)
        pidfile = run / "dockerd.pid"
        _drop_stale_pidfile(pidfile)
        self.unmount_leftovers()
        argv = [
            DOCKERD, "--data-root", str(data), "--exec-root", str(run), "--pidfile", str(pidfile),
            "-H", self.host, "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--storage-driver=overlay2", "--log-level=warn",
        ]
        self.process = ManagedProcess("dockerd", argv, root / "dockerd.log", cwd=root).start()
        self.process.wait_ready(self.answering, timeout=timeout)
        return self

    def stop(self) -> None:
        """Stop the daemon if this object started it (its containers stop with it)."""
        if self.process is not None:
            self.process.stop(timeout=30)
            self.process = None
            self.unmount_leftovers()

    def unmount_leftovers(self) -> None:
        """dockerd leaves its network namespace bind-mounted (<exec root>/netns/default) when stopped after
        running a container; unmounted here, or `make clean` could not remove build/docker."""
        netns = self.exec_root / "netns"
        for entry in sorted(netns.iterdir()) if netns.is_dir() else []:
            if entry.is_mount() or _mounted(entry):
                subprocess.run(["umount", str(entry)], check=False, capture_output=True)

    def __enter__(self) -> Docker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mounted(path: Path) -> bool:
    """A namespace bind mount is not a directory, so Path.is_mount cannot see it: read /proc/self/mounts."""
    target = str(path)
    return any(line.split()[1] == target for line in Path("/proc/self/mounts").read_text().splitlines())


def _drop_stale_pidfile(pidfile: Path) -> None:
    """A dockerd killed hard leaves its pidfile; dockerd refuses to start while it names a live process."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip() if process_start_time(pid) is not None else ""
    except OSError:
        comm = ""
    if comm != "dockerd":
        pidfile.unlink(missing_ok=True)
    else:
        raise ProcessError(f"a dockerd (pid {pid}) owns {pidfile.parent} but does not answer on its socket")
