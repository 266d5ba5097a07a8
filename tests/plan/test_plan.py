"""`make plan`: the offline plan prints the tree, writes valid manifests, and fails on bad settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import program
from infra.offline import REPO, STACKS_DIR, run_stack
from infra.plan import PLAN_DIR, check_manifest, main
from stackspec.settings import SettingsError


def test_plan_prod_prints_the_tree_and_writes_valid_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stack", "prod"]) == 0
    out = capsys.readouterr().out
    assert "qwen-serving:" in out  # component type tokens appear in the tree
    assert "└─ kubernetes:apps/v1:Deployment" in out  # children are nested under their components
    manifests = list(yaml.safe_load_all((PLAN_DIR / "prod" / "manifests.yaml").read_text()))
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "StatefulSet", "Namespace"} <= kinds
    assert f"{len(manifests)} objects" in out
    # The gateway's processes per pod and how the limits are shared out among them are stated.
    assert ("gateway processes per pod: 1 (one per core of gateway.cpuRequest 500m, rounded up); each admits 200 "
            "generation requests in flight") in out
    assert all(check_manifest(m, "1.33.0") in (None, "no-schema") for m in manifests)


def test_plan_fails_for_three_tp2_replicas_on_four_gpus(tmp_path: Path) -> None:
    text = (STACKS_DIR / "Pulumi.prod.yaml").read_text()
    doc = yaml.safe_load(text)
    doc["config"]["qwen-serving:inference"]["replicas"] = 3
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, "-m", "infra.plan", "--stack-file", str(bad)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "qwen-serving:inference.replicas" in result.stderr
    assert "qwen-serving:inference.tensorParallelSize" in result.stderr
    assert not (PLAN_DIR / "bad").exists()


def test_settings_errors_come_before_any_resource_is_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    declared: list[object] = []

    def record(settings: object) -> dict[str, object]:
        declared.append(settings)
        return {}

    monkeypatch.setattr(program, "declare", record)
    with pytest.raises(SettingsError):
        run_stack("prod", overrides={"qwen-serving:edge": {"replicas": 2, "tls": {"enabled": False}}})
    assert declared == []


def test_a_broken_manifest_is_reported_with_its_path() -> None:
    bad = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"},
           "spec": {"minAvaliable": 1, "selector": {"matchLabels": {"a": "b"}}}}
    error = check_manifest(bad, "1.33.0")
    assert error is not None and "minAvaliable" in error
