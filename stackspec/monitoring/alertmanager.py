"""Alertmanager configuration, rendered from settings plus the two secrets it needs.

Routing by severity (critical pages through every receiver, warning opens a ticket), grouping per
alert and job, and inhibition: a cause alert silences the symptom alerts it explains. The secret values
(webhook URL, SMTP password) are parameters, so the Pulumi component can render inside `Output.apply`
and ship the result as a Kubernetes Secret, never as a plain input.
"""

from __future__ import annotations

from typing import Any

import yaml

from stackspec.settings import StackSettings, required_secrets

# Cause -> the symptom alerts it explains (and that would only add noise while it fires).
INHIBITIONS: dict[str, list[str]] = {
    "NoHealthyVllmBackend": [
        "AvailabilityBudgetBurnFast", "AvailabilityBudgetBurnSlow", "TtftP95High", "RequestsWaitingHigh",
        "KvCacheUsageHigh", "RequestRateSurge",
    ],
    "RedisDown": ["AvailabilityBudgetBurnFast", "AvailabilityBudgetBurnSlow"],
    "KvCacheUsageHigh": ["RequestsWaitingHigh", "TtftP95High"],
}

NULL_ALERTS = ["Watchdog", "InfoInhibitor"]  # kube-prometheus-stack's heartbeat and helper alerts


def _missing(key: str, settings: StackSettings) -> str:
    # The settings check (required_secrets) catches this before any resource; this is the renderer's guard.
    fix = required_secrets(settings)[key]
    return f"qwen-serving:{key} is not set: `pulumi config set --secret qwen-serving:{key} ...`{fix}"


def _alternation(names: list[str]) -> str:
    return "|".join(names)


def alertmanager_config(settings: StackSettings, *, webhook_url: str | None, smtp_password: str | None
                        ) -> dict[str, Any]:
    a = settings.monitoring.alerting
    site = settings.site.name
    webhook: dict[str, Any] | None = None
    email: dict[str, Any] | None = None
    if a.webhook:
        if not webhook_url:
            raise ValueError(_missing("alertmanagerWebhookUrl", settings))
        webhook = {"url": webhook_url, "send_resolved": True, "max_alerts": 50}
    if a.email is not None:
        email = {"to": ", ".join(a.email.to), "send_resolved": True,
                 "headers": {"Subject": f"[{site}] {{{{ .CommonLabels.severity }}}}: "
                                        "{{ .CommonLabels.alertname }}"}}

    def receiver(name: str, *, with_email: bool, with_webhook: bool) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name}
        if with_webhook and webhook is not None:
            r["webhook_configs"] = [webhook]
        if with_email and email is not None:
            r["email_configs"] = [email]
        return r

    # Critical pages everywhere; warnings go by e-mail when there is one, else to the webhook.
    receivers = [
        {"name": "null"},
        receiver("page", with_email=True, with_webhook=True),
        receiver("ticket", with_email=True, with_webhook=email is None),
    ]
    route: dict[str, Any] = {
        "receiver": "ticket",
        "group_by": ["alertname", "job", "severity"],
        "group_wait": a.group_wait,
        "group_interval": a.group_interval,
        "repeat_interval": a.repeat_interval,
        "routes": [
            {"receiver": "null", "matchers": [f'alertname=~"{_alternation(NULL_ALERTS)}"']},
            {"receiver": "page", "matchers": ['severity="critical"'], "group_wait": "10s",
             "repeat_interval": "1h"},
            {"receiver": "ticket", "matchers": ['severity="warning"']},
            {"receiver": "null", "matchers": ['severity=~"info|none"']},
        ],
    }
    inhibit = [
        # The same alert at critical silences its warning twin.
        {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
         "equal": ["alertname", "job"]},
    ]
    for cause, symptoms in INHIBITIONS.items():
        inhibit.append({"source_matchers": [f'alertname="{cause}"'],
                        "target_matchers": [f'alertname=~"{_alternation(symptoms)}"']})
    config: dict[str, Any] = {"route": route, "receivers": receivers, "inhibit_rules": inhibit}
    if a.email is not None:
        if not smtp_password:
            raise ValueError(_missing("alertmanagerSmtpPassword", settings))
        config["global"] = {
            "smtp_smarthost": a.email.smarthost,
            "smtp_from": a.email.sender,
            "smtp_auth_username": a.email.username or a.email.sender,
            "smtp_auth_password": smtp_password,
            "smtp_require_tls": a.email.require_tls,
        }
    return config


def render_alertmanager(settings: StackSettings, *, webhook_url: str | None, smtp_password: str | None) -> str:
    """alertmanager.yaml text (contains secrets: ship it only inside a Kubernetes Secret)."""
    config = alertmanager_config(settings, webhook_url=webhook_url, smtp_password=smtp_password)
    return yaml.safe_dump(config, sort_keys=False, width=200)
