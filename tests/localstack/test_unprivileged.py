"""localstack.unprivileged: the local vLLM's own user exists as setup creates it, and owns what it writes to."""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

from localstack.services import MODEL_INFO_CACHE, REPO_ROOT, VLLM_PYTHON, vllm_env
from localstack.unprivileged import LOCAL_VLLM_USER, cannot_run, closed_to, hand_over, vllm_identity
from stackspec.images import VLLM_UID


def test_setup_creates_the_user_with_the_clusters_uid_idempotently() -> None:
    script = (REPO_ROOT / "setup" / "install.sh").read_text()
    guard = re.search(rf"! id -u {LOCAL_VLLM_USER} >/dev/null", script)
    create = re.search(rf"useradd --uid (\d+) .*\b{LOCAL_VLLM_USER}$", script, re.MULTILINE)
    assert guard and create, "setup/install.sh must create the local vLLM's user, once"
    assert int(create.group(1)) == VLLM_UID


def test_as_root_vllm_gets_the_unprivileged_user_made_by_setup() -> None:
    identity = vllm_identity()
    assert os.geteuid() == 0 and identity is not None  # the suite runs as root here: the switch must happen
    entry = pwd.getpwnam(LOCAL_VLLM_USER)
    assert (identity.uid, identity.gid) == (entry.pw_uid, entry.pw_gid) == (VLLM_UID, VLLM_UID)
    # and it can start the venv's interpreter (else the local vLLM would still run as root)
    assert cannot_run(identity, str(VLLM_PYTHON)) is None


def test_vllm_env_hands_every_writable_dir_to_the_user_even_what_a_root_run_left(tmp_path: Path) -> None:
    identity = vllm_identity()
    assert identity is not None
    leftover = tmp_path / "cache" / "vllm" / "torch_compile_cache"
    leftover.mkdir(parents=True)  # as an earlier run as root would have left it
    env = vllm_env(tmp_path, identity)
    for name in ("HOME", "XDG_CACHE_HOME", "TMPDIR"):
        assert Path(env[name]).stat().st_uid == identity.uid, name
    assert leftover.stat().st_uid == identity.uid
    for name in ("VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME"):
        assert Path(env[name]).is_relative_to(tmp_path / "cache"), name
    # every local vLLM reads and writes one model-info cache (its class inspection is done once per checkout)
    shared = Path(env["VLLM_CACHE_ROOT"]) / "modelinfos"
    assert shared.is_symlink() and shared.resolve() == MODEL_INFO_CACHE.resolve()
    assert MODEL_INFO_CACHE.stat().st_uid == identity.uid
    assert vllm_env(tmp_path, identity) == env  # again over its own work dir: the same, the link kept
    hand_over(tmp_path / "mine", None)  # not root: nothing changes hands
    assert (tmp_path / "mine").stat().st_uid == os.geteuid()


def test_a_work_directory_the_user_cannot_reach_is_named(tmp_path: Path) -> None:
    identity = vllm_identity()
    assert identity is not None
    closed = closed_to(identity, tmp_path / "vllm")  # pytest's own temp tree is private (0700) to root
    assert closed is not None and tmp_path.is_relative_to(closed) and not closed.stat().st_mode & 0o001
    assert closed_to(identity, REPO_ROOT / "build" / "test-drill" / "vllm") is None  # where the tests put vLLM
