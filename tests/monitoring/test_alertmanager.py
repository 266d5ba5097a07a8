"""Alertmanager: amtool accepts the rendered config, routes by severity, inhibits symptoms by causes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stackspec.monitoring.alertmanager import INHIBITIONS, render_alertmanager
from stackspec.monitoring.rules import alert_names
from stackspec.settings import EmailReceiver, StackSettings
from tests.monitoring.conftest import SITE_STACKS, run, stack_settings, tool

WEBHOOK = "https://hooks.example.test/alertmanager/plan-placeholder"
EMAIL = EmailReceiver(to=["oncall@example.test", "ml-infra@example.test"], sender="alerts@example.test",
                      smarthost="smtp.example.test:587")


def with_email(settings: StackSettings, *, webhook: bool = True) -> StackSettings:
    alerting = settings.monitoring.alerting.model_copy(update={"email": EMAIL, "webhook": webhook})
    return settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={"alerting": alerting})})


def write(settings: StackSettings, where: Path) -> Path:
    path = where / "alertmanager.yaml"
    path.write_text(render_alertmanager(settings, webhook_url=WEBHOOK, smtp_password="smtp-placeholder"))
    return path


@pytest.mark.parametrize("email", [False, True], ids=["webhook", "webhook+email"])
@pytest.mark.parametrize("stack", SITE_STACKS)
def test_amtool_accepts_the_config(stack: str, email: bool, scratch: Path) -> None:
    settings = stack_settings(stack)
    path = write(with_email(settings) if email else settings, scratch)
    result = run([tool("amtool"), "check-config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def routed(config: Path, **labels: str) -> str:
    argv = [tool("amtool"), "config", "routes", "test", f"--config.file={config}",
            *(f"{k}={v}" for k, v in labels.items())]
    result = run(argv)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_routing_by_severity(scratch: Path) -> None:
    config = write(with_email(stack_settings("prod")), scratch)
    assert routed(config, alertname="NoHealthyVllmBackend", severity="critical") == "page"
    assert routed(config, alertname="KvCacheUsageHigh", severity="warning") == "ticket"
    assert routed(config, alertname="Watchdog", severity="none") == "null"
    assert routed(config, alertname="SomethingElse", severity="info") == "null"
    assert routed(config, alertname="Unlabelled") == "ticket"  # nothing is dropped by accident


def test_receivers_follow_the_settings(scratch: Path) -> None:
    settings = stack_settings("prod")
    only_webhook = yaml.safe_load(write(settings, scratch).read_text())
    receivers = {r["name"]: r for r in only_webhook["receivers"]}
    assert receivers["page"]["webhook_configs"][0]["url"] == WEBHOOK
    assert receivers["ticket"]["webhook_configs"][0]["url"] == WEBHOOK  # no e-mail: tickets go to the hook
    assert "email_configs" not in receivers["page"] and "global" not in only_webhook

    both = yaml.safe_load(write(with_email(settings), scratch).read_text())
    receivers = {r["name"]: r for r in both["receivers"]}
    assert receivers["page"]["email_configs"][0]["to"] == "oncall@example.test, ml-infra@example.test"
    assert "webhook_configs" in receivers["page"]
    assert "webhook_configs" not in receivers["ticket"]  # warnings by e-mail only
    assert both["global"]["smtp_smarthost"] == "smtp.example.test:587"
    assert both["global"]["smtp_auth_password"] == "smtp-placeholder"


def test_inhibitions_name_real_alerts_and_silence_symptoms(scratch: Path) -> None:
    settings = stack_settings("prod")
    names = set(alert_names(settings))
    for cause, symptoms in INHIBITIONS.items():
        assert cause in names
        assert set(symptoms) <= names and cause not in symptoms
    config = yaml.safe_load(write(settings, scratch).read_text())
    rules = config["inhibit_rules"]
    assert {"source_matchers": ['alertname="NoHealthyVllmBackend"'],
            "target_matchers": [f'alertname=~"{"|".join(INHIBITIONS["NoHealthyVllmBackend"])}"']} in rules
    severity_rule = rules[0]
    assert severity_rule["source_matchers"] == ['severity="critical"']
    assert severity_rule["equal"] == ["alertname", "job"]


def test_missing_secrets_name_the_key_and_the_fix() -> None:
    # The settings refuse the stack first (tests/plan/test_broken_stacks.py); the renderer still guards.
    settings = stack_settings("prod")
    with pytest.raises(ValueError) as err:
        render_alertmanager(settings, webhook_url=None, smtp_password=None)
    assert "qwen-serving:alertmanagerWebhookUrl" in str(err.value) and "--secret" in str(err.value)
    with pytest.raises(ValueError) as err:
        render_alertmanager(with_email(settings), webhook_url=WEBHOOK, smtp_password=None)
    assert "qwen-serving:alertmanagerSmtpPassword" in str(err.value)
    # Without the webhook, the URL is not needed at all.
    text = render_alertmanager(with_email(settings, webhook=False), webhook_url=None, smtp_password="x")
    assert "webhook_configs" not in text
