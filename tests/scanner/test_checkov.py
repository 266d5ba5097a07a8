"""An independent scanner over what would be deployed: checkov over every site stack's rendered manifests.

checkov lives in its own venv (.venv-checkov, setup/requirements-checkov.txt; `make setup` installs it) and
runs as a subprocess, offline (--skip-download). Every failed check must be in policies/checkov-baseline.yaml
with its reason; every baseline entry must still be needed by some stack, so the baseline only shrinks.
"""

from __future__ import annotations

import json
import subprocess
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.offline import REPO, run_stack
from infra.plan import write_manifests
from tests.stacks import SITE_STACKS

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
BASELINE = REPO / "policies" / "checkov-baseline.yaml"


def baseline() -> list[dict[str, Any]]:
    skips: list[dict[str, Any]] = yaml.safe_load(BASELINE.read_text())["skips"]
    return skips


def covering(stack: str, check: str, resource: str) -> list[int]:
    return [i for i, skip in enumerate(baseline())
            if skip["check"] == check and stack in skip.get("stacks", SITE_STACKS)
            and any(fnmatch(resource, pattern) for pattern in skip["resources"])]


@cache
def scan(stack: str, out: Path) -> dict[str, Any]:
    return checkov(write_manifests(run_stack(stack), out / stack))


def outside_baseline(stack: str, report: dict[str, Any]) -> list[str]:
    return [f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in report["results"]["failed_checks"]
            if not covering(stack, f["check_id"], f["resource"])]


def checkov(manifests: Path) -> dict[str, Any]:
    proc = subprocess.run([str(CHECKOV), "-f", str(manifests), "--framework", "kubernetes", "-o", "json",
                           "--quiet", "--compact", "--skip-download"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode in (0, 1), proc.stderr  # 1: some check failed
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert CHECKOV.exists(), f"{CHECKOV} missing: run `make setup`"
    return tmp_path_factory.mktemp("checkov")


def test_the_baseline_gives_a_reason_for_every_skip() -> None:
    for skip in baseline():
        assert skip["check"].startswith("CKV_K8S_") and skip["resources"], skip
        assert len(str(skip.get("reason", ""))) > 40, f"{skip['check']}: say why"
        assert set(skip.get("stacks", SITE_STACKS)) <= set(SITE_STACKS), skip


@pytest.mark.parametrize("stack", SITE_STACKS)
def test_no_failed_check_outside_the_baseline(stack: str, out: Path) -> None:
    report = scan(stack, out)
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 400, report["summary"]
    new = outside_baseline(stack, report)
    assert new == [], "checkov fails outside policies/checkov-baseline.yaml (fix it, or add it with a reason):\n" + \
        "\n".join(new)


def test_every_baseline_entry_is_still_needed(out: Path) -> None:
    used: set[int] = set()
    for stack in SITE_STACKS:
        for f in scan(stack, out)["results"]["failed_checks"]:
            used |= set(covering(stack, f["check_id"], f["resource"]))
    stale = [f"{s['check']} {s['resources']}" for i, s in enumerate(baseline()) if i not in used]
    assert stale == [], f"baseline entries no stack needs any more: remove them: {stale}"


def test_a_new_failing_check_fails(out: Path) -> None:
    docs = list(yaml.safe_load_all((out / "prod" / "manifests.yaml").read_text())) if (
        out / "prod" / "manifests.yaml").exists() else run_stack("prod").manifests()
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "gateway":
            doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    planted = out / "planted.yaml"
    planted.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    new = outside_baseline("prod", checkov(planted))
    assert any(line.startswith("CKV_K8S_16 Deployment.qwen-serving.gateway") for line in new), new
