"""Who the local vLLM runs as: never root, as in the cluster (stackspec/images.py VLLM_UID).

Run as root (CI, this machine's containers), the local stack starts vLLM as LOCAL_VLLM_USER, an account
with no home and no shell that setup/install.sh creates with the cluster's UID; it owns only the
directories vLLM writes to (its HOME, caches and temp dir) and cannot write to the venv it runs from.
Run as anyone else, vLLM runs as that user: already unprivileged, and switching user would need root.
Where that user cannot run the venv's interpreter (a venv made from a Python under root's 0700 home, as
pyenv's here), vLLM runs as root and `cannot_run` says why: the tests that claim the switch fail on it, the
rest of the stack still works; `make setup` makes the interpreter reachable.
"""

from __future__ import annotations

import functools
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localstack.processes import ProcessError

LOCAL_VLLM_USER = "qs-vllm"  # setup/install.sh creates it (uid stackspec.images.VLLM_UID)


@dataclass(frozen=True)
class Identity:
    """A user and group a child process is started as (subprocess.Popen's `user`/`group`)."""

    uid: int
    gid: int


def vllm_identity() -> Identity | None:
    """The identity to switch to before starting vLLM; None when this process is not root (no switch)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(LOCAL_VLLM_USER)
    except KeyError:
        raise ProcessError(
            f"user {LOCAL_VLLM_USER!r} is missing, and vLLM never runs as root: run `make setup` "
            "(setup/install.sh creates it)"
        ) from None
    if entry.pw_uid == 0:
        raise ProcessError(f"user {LOCAL_VLLM_USER!r} has UID 0: it must be an unprivileged account")
    return Identity(entry.pw_uid, entry.pw_gid)


def hand_over(path: Path, identity: Identity | None) -> None:
    """Create `path` and give it, with whatever an earlier run left in it, to `identity` (no-op for None)."""
    path.mkdir(parents=True, exist_ok=True)
    if identity is None:
        return
    for entry in (path, *path.rglob("*")):
        os.chown(entry, identity.uid, identity.gid, follow_symlinks=False)


def closed_to(identity: Identity, path: Path) -> Path | None:
    """The first directory on the way to `path` that `identity` may not enter (neither its owner nor open to
    others: e.g. pytest's 0700 temp tree), or None."""
    for directory in reversed((path.resolve(), *path.resolve().parents)):
        if not directory.exists():
            break
        st = directory.stat()
        if st.st_uid != identity.uid and not st.st_mode & 0o001:
            return directory
    return None


@functools.cache
def cannot_run(identity: Identity, program: str) -> str | None:
    """Why `identity` cannot start `program` (e.g. a directory on its path it may not traverse), or None."""
    try:
        subprocess.run([program, "-c", "pass"], user=identity.uid, group=identity.gid, extra_groups=[],
                       capture_output=True, timeout=60, check=True, cwd="/")
    except (OSError, subprocess.SubprocessError) as err:
        return (f"{LOCAL_VLLM_USER} cannot run {program} ({err}): run `make setup`, which lets it traverse the "
                "directories up to the interpreter (setup/install.sh)")
    return None
