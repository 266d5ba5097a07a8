"""The local vLLM under the cluster's constraints (no root): every process of each fleet replica runs as an
unprivileged user, cannot write to the venv it runs from, and serves a completion (so its caches, in
directories it owns, work)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from localstack.processes import group_members
from localstack.services import MODEL_INFO_CACHE, VLLM_PYTHON, VllmHandle
from localstack.unprivileged import cannot_run, vllm_identity
from tests.gateway.conftest import MODEL, Fleet


def _ids(pid: int, field: str) -> set[int]:
    """Real, effective, saved and filesystem IDs of `pid` ("Uid" or "Gid"), from the kernel."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return {int(v) for v in line.split()[1:]}
    raise AssertionError(f"no {field} line for pid {pid}")


def _replicas(fleet: Fleet) -> list[VllmHandle]:
    return [fleet.a, fleet.b, fleet.paced()]


def test_every_vllm_process_runs_unprivileged_and_serves(fleet: Fleet) -> None:
    identity = vllm_identity()
    if identity is not None:  # the switch is possible here only if the user can start the interpreter
        assert cannot_run(identity, str(VLLM_PYTHON)) is None
    want = identity.uid if identity else os.geteuid()
    assert want != 0
    for handle in _replicas(fleet):
        members = group_members(handle.pid)
        assert handle.pid in members and len(members) >= 2, members  # the API server and its engine core
        for pid in members:
            assert _ids(pid, "Uid") == {want}, (handle.name, pid)
            if identity:
                assert _ids(pid, "Gid") == {identity.gid}, (handle.name, pid)
        # its model-info cache is the shared one, and vLLM used it (the file is vLLM's, written through the link)
        workdir = Path(f"/proc/{handle.pid}/cwd").resolve()
        assert (workdir / "cache" / "vllm" / "modelinfos").resolve() == MODEL_INFO_CACHE.resolve()
        assert (MODEL_INFO_CACHE / "vllm-model_executor-models-qwen2-Qwen2ForCausalLM.json").is_file()
        answer = httpx.post(f"{handle.url}/v1/completions",
                            json={"model": MODEL, "prompt": "Hello", "max_tokens": 2}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json()["choices"][0]["text"], str)


def test_vllm_cannot_write_to_its_venv_but_to_its_own_directories(fleet: Fleet) -> None:
    identity = vllm_identity()
    assert identity is not None, "the suite runs as root here: vLLM must have been switched to its own user"
    assert cannot_run(identity, str(VLLM_PYTHON)) is None
    workdir = Path(f"/proc/{fleet.a.pid}/cwd").resolve()
    probe = ("import os, sys, vllm; "
             "print(os.access(os.path.dirname(vllm.__file__), os.W_OK), os.access(sys.prefix, os.W_OK), "
             "os.access(os.environ['HOME'], os.W_OK), os.access(os.environ['VLLM_CACHE_ROOT'].rsplit('/', 1)[0], "
             "os.W_OK))")
    env = {"HOME": str(workdir / "home"), "VLLM_CACHE_ROOT": str(workdir / "cache" / "vllm"),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(VLLM_PYTHON), "-c", probe], user=identity.uid, group=identity.gid, extra_groups=[],
                         env=env, cwd=workdir, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False", "True", "True"], out.stderr[-2000:]
