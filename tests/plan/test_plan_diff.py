"""`make plan BASE=<ref>`: the offline plan diff — the pure diff, and two real commits that differ in one setting."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from infra.offline import REPO
from infra.plan_diff import MISSING, FieldChange, diff_snapshots, plan_diff, render
from infra.plan_snapshot import SECRET_MASK, resource_key


def _res(type_: str, name: str, inputs: dict[str, object]) -> dict[str, object]:
    return {"type": type_, "name": name, "parent": "", "inputs": inputs}


DEPLOY = "kubernetes:apps/v1:Deployment"


def test_added_removed_and_changed_fields_by_dotted_path() -> None:
    container = {"name": "gateway", "image": "gw:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "x"}]}
    base = {"resources": {
        "d::gateway": _res(DEPLOY, "gateway", {"spec": {"replicas": 2, "template": {"spec": {
            "containers": [container]}}}}),
        "s::old": _res("kubernetes:core/v1:Service", "old", {"spec": {"ports": [{"port": 80}]}}),
        "c::same": _res("kubernetes:core/v1:ConfigMap", "same", {"data": {"a": "b"}}),
    }}
    changed = {**container, "env": [{"name": "B", "value": "x"}, {"name": "A", "value": "2"},
                                    {"name": "C", "value": "3"}]}
    head = {"resources": {
        "d::gateway": _res(DEPLOY, "gateway", {"spec": {"replicas": 2, "template": {"spec": {
            "containers": [changed]}}}}),
        "n::new": _res("kubernetes:core/v1:Namespace", "new", {}),
        "c::same": _res("kubernetes:core/v1:ConfigMap", "same", {"data": {"a": "b"}}),
    }}
    changes = {c.name: c for c in diff_snapshots(base, head)}
    assert {n: c.action for n, c in changes.items()} == {"gateway": "change", "old": "remove", "new": "add"}
    # Named list items are matched by name, not position: reordering env is no change, A and C are.
    assert changes["gateway"].fields == [
        FieldChange("spec.template.spec.containers[name=gateway].env[name=A].value", "1", "2"),
        FieldChange("spec.template.spec.containers[name=gateway].env[name=C].name", MISSING, "C"),
        FieldChange("spec.template.spec.containers[name=gateway].env[name=C].value", MISSING, "3"),
    ]
    text = render("dev", "HEAD~1", list(changes.values()))
    assert "1 to add, 1 to change, 1 to remove" in text
    assert 'spec.template.spec.containers[name=gateway].env[name=A].value: "1" → "2"' in text
    assert '...env[name=C]' not in text and "(none) → \"3\"" in text


def test_secrets_are_masked_and_multiline_text_shows_changed_lines() -> None:
    base = {"resources": {"s::k": _res("kubernetes:core/v1:Secret", "k", {"stringData": {"p": SECRET_MASK}}),
                          "c::conf": _res("kubernetes:core/v1:ConfigMap", "conf",
                                          {"data": {"nginx.conf": "a\nproxy_buffering off;\nb\n"}})}}
    head = {"resources": {"s::k": _res("kubernetes:core/v1:Secret", "k", {"stringData": {"p": SECRET_MASK}}),
                          "c::conf": _res("kubernetes:core/v1:ConfigMap", "conf",
                                          {"data": {"nginx.conf": "a\nproxy_buffering on;\nb\n"}})}}
    changes = diff_snapshots(base, head)
    assert [c.name for c in changes] == ["conf"]
    text = render("dev", "base", changes)
    assert "-proxy_buffering off;" in text and "+proxy_buffering on;" in text
    assert "\n      a\n" not in text  # unchanged lines are not repeated


def test_resource_keys_drop_stack_and_project() -> None:
    urn = "urn:pulumi:dev::qwen-serving::qwen-serving:gateway:Gateway$kubernetes:apps/v1:Deployment::gateway"
    assert resource_key(urn) == "qwen-serving:gateway:Gateway$kubernetes:apps/v1:Deployment::gateway"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with this tree committed twice: dev's maxNumSeqs 16, then 32 (nothing else)."""
    repo = tmp_path_factory.mktemp("plan-diff-repo")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "stackspec", "infra", "policies", "app",
                              "web", "stacks", "Pulumi.yaml", "pyproject.toml"],
                             cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(repo, filter="data")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    dev = repo / "stacks" / "Pulumi.dev.yaml"
    text = dev.read_text()
    assert text.count("maxNumSeqs: 16") == 1
    dev.write_text(text.replace("maxNumSeqs: 16", "maxNumSeqs: 32"))
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "dev: 32 sequences")
    return repo


def test_one_setting_between_two_commits_shows_exactly_what_it_touches(two_commits: Path) -> None:
    label, changes = plan_diff("dev", "HEAD~1", repo=two_commits)
    assert label.startswith("HEAD~1 (")
    # maxNumSeqs reaches one place: vLLM's --max-num-seqs argument. Nothing else changes (no hash, no rule).
    head = json.loads((two_commits / "build" / "plan" / "dev" / "resources.json").read_text())
    (vllm,) = [r for r in head["resources"].values() if r["type"] == DEPLOY and r["name"] == "vllm"]
    args = vllm["inputs"]["spec"]["template"]["spec"]["containers"][0]["args"]
    at = args.index("--max-num-seqs") + 1
    summary = {(c.action, c.type, c.name): [(f.path, f.old, f.new) for f in c.fields] for c in changes}
    assert summary == {
        ("change", DEPLOY, "vllm"): [(f"spec.template.spec.containers[name=vllm].args[{at}]", "16", "32")],
    }
    text = render("dev", label, changes)
    assert "0 to add, 1 to change, 0 to remove" in text
    assert f'spec.template.spec.containers[name=vllm].args[{at}]: "16" → "32"' in text


def test_the_same_commit_has_no_changes(two_commits: Path) -> None:
    _, changes = plan_diff("dev", "HEAD", repo=two_commits)
    assert changes == []


def test_the_snapshot_never_holds_a_secret_value() -> None:
    """prod with every secret filled in (placeholders): none of the values reaches resources.json."""
    from infra.offline import SECRET_PLACEHOLDERS, run_stack
    from infra.plan_snapshot import from_run

    run = run_stack("prod")
    assert len(run.placeholders) >= 5
    text = json.dumps(from_run(run, REPO))
    assert SECRET_MASK in text
    for key, value in SECRET_PLACEHOLDERS.items():
        values = list(json.loads(value)) if key == "apiKeyHashes" else [value]  # the key hashes themselves
        for secret in values:
            assert secret not in text, f"{key} is in the snapshot"


def test_a_stack_the_base_does_not_have_is_all_additions(two_commits: Path) -> None:
    new = two_commits / "stacks" / "Pulumi.dev2.yaml"
    new.write_text((two_commits / "stacks" / "Pulumi.dev.yaml").read_text())
    try:
        _, changes = plan_diff("dev2", "HEAD", repo=two_commits)
    finally:
        new.unlink()
    assert changes and {c.action for c in changes} == {"add"}
    assert any(c.type == DEPLOY and c.name == "vllm" for c in changes)
