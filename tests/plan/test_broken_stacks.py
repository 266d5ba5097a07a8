"""A table of broken stack files: each fails `make plan` before any resource, naming the key (and the fix).

Each case is a real stack file with one change, written to a scratch file and planned as a user would
(`python -m infra.plan --stack-file ...`, in-process here; one case also through the CLI).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import offline
from infra.plan import main
from stackspec.settings import SettingsError
from stackspec.stackfile import REPO, stack_file
from stackspec.versions import VLLM_VERSION

OLD_VLLM = "vllm/vllm-openai:v0.11.0@sha256:" + "0" * 64


def changed(stack: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The stack file's document with `section.path.to.key` values replaced."""
    document = yaml.safe_load(stack_file(stack).read_text())
    config = copy.deepcopy(document["config"])
    for dotted, value in changes.items():
        section, *path = dotted.split(".")
        node = config.setdefault(f"qwen-serving:{section}", {})
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return {"config": config}


# (case, stack, changes, --require-secrets, every key that must be named, a word of the fix)
CASES: list[tuple[str, str, dict[str, Any], bool, list[str], str]] = [
    ("first token timeout above the total", "staging",
     {"gateway.firstTokenTimeout": 700, "gateway.totalTimeout": 600}, False,
     ["qwen-serving:gateway.firstTokenTimeout", "qwen-serving:gateway.totalTimeout"], "lower it"),
    ("required secrets missing", "prod", {}, True,
     ["qwen-serving:apiKeyHashes", "qwen-serving:grafanaAdminPassword", "qwen-serving:alertmanagerWebhookUrl",
      "qwen-serving:logSinkPassword"], "pulumi config set --secret"),
    ("a standby without the primary's Redis password", "prod-dr",
     {"monitoring.enabled": False}, True, ["qwen-serving:redisPassword"], "pulumi config set --secret"),
    ("a DR pair without the replication user's password", "prod",
     {"monitoring.enabled": False}, True, ["qwen-serving:redisReplicationPassword"], "pulumi config set --secret"),
    ("backups without the object storage keys", "prod",
     {"monitoring.enabled": False, "redis.backup": {"endpoint": "https://s3.example.com", "bucket": "qs-backups"}},
     True, ["qwen-serving:backupAccessKeyId", "qwen-serving:backupSecretAccessKey"], "pulumi config set --secret"),
    ("e-mail alerts without the SMTP password", "staging",
     {"monitoring.alerting.email": {"to": ["ops@example.com"], "sender": "am@example.com",
                                    "smarthost": "smtp.example.com:587"}},
     True, ["qwen-serving:alertmanagerSmtpPassword"], "remove monitoring.alerting.email"),
    ("a bad redis size", "dev", {"redis.maxmemory": "lots"}, False, ["qwen-serving:redis.maxmemory"], "pattern"),
    ("a bad body size", "dev", {"edge.clientMaxBodySize": "1 mb"}, False,
     ["qwen-serving:edge.clientMaxBodySize"], "pattern"),
    ("a body limit the gateway refuses", "dev", {"edge.clientMaxBodySize": "512"}, False,
     ["qwen-serving:edge.clientMaxBodySize"], "1024"),
    ("a bad Kubernetes quantity", "dev", {"redis.storageSize": "ten gigs"}, False,
     ["qwen-serving:redis.storageSize"], "pattern"),
    ("a bad alert duration", "dev", {"monitoring.alerting.groupWait": "soon"}, False,
     ["qwen-serving:monitoring.alerting.groupWait"], "pattern"),
    ("vLLM versions that disagree", "prod", {"images.vllm": OLD_VLLM}, False,
     ["qwen-serving:images.vllm"], VLLM_VERSION),
    ("a gateway tunable out of the gateway's bounds", "dev", {"gateway.retryAttempts": 50}, False,
     ["qwen-serving:gateway.retryAttempts"], "10"),
]


@pytest.fixture
def no_resources(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every resource registration the program makes (must stay empty for a broken stack)."""
    registered: list[str] = []
    original = offline.CapturingMonitor.RegisterResource

    def spy(self: offline.CapturingMonitor, request: Any) -> Any:
        if request.type != "pulumi:pulumi:Stack":
            registered.append(f"{request.type} {request.name}")
        return original(self, request)

    monkeypatch.setattr(offline.CapturingMonitor, "RegisterResource", spy)
    yield registered


def plan(path: Path, require_secrets: bool, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--stack-file", str(path), *(["--require-secrets"] if require_secrets else [])])
    out = capsys.readouterr()
    return code, out.err + out.out


@pytest.mark.parametrize(("case", "stack", "changes", "require_secrets", "keys", "fix"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_broken_stack_fails_plan_before_any_resource(
    case: str, stack: str, changes: dict[str, Any], require_secrets: bool, keys: list[str], fix: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_resources: list[str],
) -> None:
    path = tmp_path / f"Pulumi.broken-{stack}.yaml"
    path.write_text(yaml.safe_dump(changed(stack, changes)))
    code, output = plan(path, require_secrets, capsys)
    assert code == 1, output
    assert "invalid stack settings" in output and "resources:" not in output, output
    for key in keys:
        assert key in output, output
    assert fix in output, output
    assert no_resources == []


def test_every_problem_is_printed_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          no_resources: list[str]) -> None:
    path = tmp_path / "Pulumi.many.yaml"
    path.write_text(yaml.safe_dump(changed("prod", {
        "gateway.firstTokenTimeout": 900, "images.vllm": OLD_VLLM, "gateway.replicas": 1, "edge.replicas": 1})))
    code, output = plan(path, True, capsys)
    assert code == 1
    for key in ("gateway.firstTokenTimeout", "images.vllm", "gateway.replicas", "edge.replicas",
                "grafanaAdminPassword", "logSinkPassword", "apiKeyHashes"):
        assert f"qwen-serving:{key}" in output, (key, output)
    assert no_resources == []


def global_with(changes: dict[str, Any]) -> dict[str, Any]:
    document = yaml.safe_load(stack_file("global").read_text())
    document["config"]["qwen-serving:dns"] |= changes
    return document


def test_hostnames_that_disagree_between_a_site_and_global_fail_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_resources: list[str]
) -> None:
    path = tmp_path / "Pulumi.global-broken.yaml"
    path.write_text(yaml.safe_dump(global_with({"hostname": "chat.elsewhere.example"})))
    code, output = plan(path, False, capsys)
    assert code == 1, output
    assert "qwen-serving:dns.hostname / qwen-serving:edge.hostname (stack prod)" in output
    assert "qwen-serving:edge.hostname (stack prod-dr)" in output and "make them the same name" in output
    assert no_resources == []


def test_a_global_stack_pointing_at_a_site_without_an_address_fails_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = [{"name": "dev", "stack": "acme/qwen-serving/dev"},
             {"name": "site-b", "stack": "acme/qwen-serving/prod-dr"}]
    path = tmp_path / "Pulumi.global-dev.yaml"
    path.write_text(yaml.safe_dump(global_with({"sites": sites, "activeSite": "dev"})))
    code, output = plan(path, False, capsys)
    assert code == 1
    for key in ("qwen-serving:edge.hostname (stack dev)", "qwen-serving:edge.loadBalancerIp (stack dev)",
                "qwen-serving:edge.tls.enabled (stack dev)"):
        assert key in output, output


def test_the_committed_stacks_agree() -> None:
    raw, _ = offline.read_stack_config(stack_file("global"))
    from stackspec.dns import global_settings_from_config

    assert global_settings_from_config(raw).hostname == "chat.example.com"


def test_the_cli_prints_the_problems_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.cli.yaml"
    path.write_text(yaml.safe_dump(changed("staging", {"gateway.firstTokenTimeout": 700})))
    proc = subprocess.run([sys.executable, "-m", "infra.plan", "--stack-file", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "qwen-serving:gateway.firstTokenTimeout" in proc.stderr
    assert "resources:" not in proc.stdout


def test_run_stack_raises_the_settings_error_with_every_problem(no_resources: list[str]) -> None:
    with pytest.raises(SettingsError) as err:
        offline.run_stack("prod", fill_secrets=False)
    assert len(err.value.problems) >= 4
    assert no_resources == []
