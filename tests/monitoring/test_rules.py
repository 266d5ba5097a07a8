"""Rules: promtool checks every rendered rule file, and unit-tests every alert both ways."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stackspec.monitoring.rules import alert_names, render_rules, rule_groups
from stackspec.monitoring.scope import scope
from stackspec.settings import StackSettings
from tests.monitoring.conftest import all_settings, run, stack_settings, tool
from tests.monitoring.rule_cases import cases, promtool_test_file

SETTINGS = all_settings()
PROD = stack_settings("prod")


@pytest.mark.parametrize("stack", sorted(SETTINGS))
def test_promtool_accepts_every_stacks_rules(stack: str, scratch: Path) -> None:
    path = scratch / "rules.yaml"
    path.write_text(render_rules(SETTINGS[stack]))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_design_and_slo_alerts_all_exist() -> None:
    assert set(alert_names(PROD)) == {
        "GpuUtilizationHigh", "TargetHealthCheckFailing", "RequestRateSurge", "GatewayShedding",
        "AvailabilityBudgetBurnFast", "AvailabilityBudgetBurnSlow", "TtftP95High", "KvCacheUsageHigh",
        "RequestsWaitingHigh", "NoHealthyVllmBackend", "RedisDown",
        # the cross-site Redis link (a DR pair's primary)
        "RedisReplicationLinkDown", "RedisReplicaLagHigh", "RedisPrimaryHasNoReplica",
        # the backup CronJob (sites with redis.backup): page when overdue, ticket when the newest Job failed
        "RedisBackupMissing", "RedisBackupFailed",
    }
    for group in rule_groups(PROD):
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning")
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    found = cases(PROD)
    assert set(found) == set(alert_names(PROD))
    for alert, alert_cases in found.items():
        assert any(c.fires for c in alert_cases), f"{alert}: no case where it fires"
        assert any(not c.fires for c in alert_cases), f"{alert}: no case where it stays silent"


def test_every_alert_is_tested_against_foreign_targets() -> None:
    """Each firing case has a twin on foreign targets (same jobs elsewhere, kube-scheduler) that stays silent."""
    for alert, alert_cases in cases(PROD).items():
        foreign = [c for c in alert_cases if c.description.startswith("foreign")]
        assert foreign and not any(c.fires for c in foreign), alert
        assert {"another-team", "kube-system"} <= {ns for c in foreign for s in c.series for ns in
                                                    re.findall(r'namespace="([^"]+)"', s)}, alert


def test_every_selector_in_the_rules_is_scoped_to_the_stack() -> None:
    """Every series a rule reads carries this stack's job and namespace (recorded series are built from them)."""
    sc = scope(PROD)
    ours = {f'namespace="{ns}"' for ns in sc.jobs_by_namespace()}
    recorded = {rule["record"] for g in rule_groups(PROD) for rule in g["rules"] if "record" in rule}
    for group in rule_groups(PROD):
        for rule in group["rules"]:
            expr = re.sub(r"\[[^\]]*\]", "", rule["expr"])  # drop range windows
            for name, labels in re.findall(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?", expr):
                ours_or_up = name == "up" or name.startswith(("vllm:", "gateway_", "redis_", "DCGM_", "kube_"))
                if name in recorded or not (labels or ours_or_up):
                    continue
                assert labels and "job" in labels and any(n in labels for n in ours), \
                    f"{rule.get('alert') or rule.get('record')}: {name}{labels} is not scoped"


def _promtool_test(settings: StackSettings, rules_from: StackSettings, alert: str, where: Path
                   ) -> tuple[int, str]:
    # The alert's own group and the recorded series it may read: promtool evaluates every loaded group at each
    # step, and the backup alerts' cases span more than twice the schedule (12 h and up).
    groups = [g for g in rule_groups(rules_from) if any(r.get("alert") == alert for r in g["rules"])]
    reads = " ".join(r["expr"] for g in groups for r in g["rules"])
    recording = [g for g in rule_groups(rules_from) if any(r.get("record", "") in reads for r in g["rules"]
                                                           if "record" in r)]
    groups = recording + groups
    (where / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=200))
    test_file = where / f"test-{alert}.yaml"
    test_file.write_text(yaml.safe_dump(promtool_test_file(settings, "rules.yaml", alert, cases(settings)[alert]),
                                        sort_keys=False, width=200))
    result = run([tool("promtool"), "test", "rules", test_file.name], cwd=where)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("alert", alert_names(PROD))
def test_promtool_unit_tests_pass(alert: str, scratch: Path) -> None:
    code, output = _promtool_test(PROD, PROD, alert, scratch)
    assert code == 0, output


def test_health_check_alert_at_the_local_scrape_interval(scratch: Path) -> None:
    """The one alert whose window follows the scrape interval, at the local stack's 1 s.

    (The others do not depend on it; at 1 s their hour-long cases would take minutes in promtool.)
    """
    settings = SETTINGS["local"]
    assert settings.monitoring.scrape_interval == "1s"
    code, output = _promtool_test(settings, settings, "TargetHealthCheckFailing", scratch)
    assert code == 0, output


@pytest.mark.parametrize(("alert", "change"), [
    ("GpuUtilizationHigh", {"gpuUtilizationPercent": 50}),  # the "one hot GPU" case would fire
    ("RequestRateSurge", {"minBaselineRps": 0}),  # the tiny baseline would count as a surge
    ("TargetHealthCheckFailing", {"healthCheckFailures": 2}),  # would fire one scrape early
    ("AvailabilityBudgetBurnFast", {"availabilityTarget": 0.9999}),  # in-budget traffic would page
    ("RequestsWaitingHigh", {"waitingRequests": 30}),  # the real queue would go unnoticed
])
def test_promtool_fails_when_a_rule_is_wrong(alert: str, change: dict[str, object], scratch: Path) -> None:
    """The unit tests can fail: rules rendered from other thresholds break the expectations."""
    values = PROD.monitoring.alerting.model_dump(by_alias=True) | change
    monitoring = PROD.monitoring.model_copy(update={"alerting": type(PROD.monitoring.alerting)(**values)})
    broken = PROD.model_copy(update={"monitoring": monitoring})
    code, output = _promtool_test(PROD, broken, alert, scratch)
    assert code != 0, f"promtool accepted rules with {change}:\n{output}"
    assert "FAILED" in output


@pytest.mark.parametrize("alert", ["TargetHealthCheckFailing", "NoHealthyVllmBackend", "RedisDown",
                                   "AvailabilityBudgetBurnFast"])
def test_promtool_fails_when_the_rules_watch_another_namespace(alert: str, scratch: Path) -> None:
    """The scoping is what the foreign cases test: rules rendered for the namespace the tests call foreign fail."""
    values = PROD.kubernetes.model_dump(by_alias=True) | {"namespace": "another-team"}
    elsewhere = PROD.model_copy(update={"kubernetes": type(PROD.kubernetes)(**values)})
    code, output = _promtool_test(PROD, elsewhere, alert, scratch)
    assert code != 0 and "FAILED" in output, output


def test_health_check_window_holds_exactly_the_failures() -> None:
    from stackspec.monitoring.promql import seconds
    from stackspec.monitoring.rules import health_check_window

    for settings in SETTINGS.values():
        window = seconds(health_check_window(settings))
        interval = seconds(settings.monitoring.scrape_interval)
        n = settings.monitoring.alerting.health_check_failures
        # A closed range [t - w, t] holds n samples spaced `interval` apart iff (n-1)*i <= w < n*i.
        assert (n - 1) * interval <= window < n * interval


def test_the_local_scrape_config_attaches_the_labels_the_rules_select(scratch: Path) -> None:
    """The local Prometheus has no operator: its static config must give each job the namespace label the
    ServiceMonitors give it in the cluster, or the scoped rules would see nothing locally."""
    from stackspec.monitoring.scope import APP_JOBS
    from stackspec.monitoring.scrape import prometheus_config, render_prometheus_config

    local = SETTINGS["local"]
    targets = {job: [f"127.0.0.1:{9100 + i}"] for i, job in enumerate(APP_JOBS)}
    config = prometheus_config(local, targets)
    for job_config in config["scrape_configs"]:
        labels = {"job": job_config["job_name"], **job_config["static_configs"][0]["labels"]}
        assert labels == scope(local).labels(job_config["job_name"])
    (scratch / "rules.yaml").write_text(render_rules(local))
    (scratch / "prometheus.yml").write_text(render_prometheus_config(local, targets))
    result = run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=scratch)
    assert result.returncode == 0, result.stdout + result.stderr


def test_backup_alerts_follow_the_schedule_and_exist_only_with_backups() -> None:
    """2x the schedule's longest gap (not a fixed time): a daily schedule waits 48 h, a weekly one two weeks;
    a site without redis.backup has no backup alerts."""
    from stackspec.monitoring.rules import backup_alerts

    assert PROD.redis.backup is not None
    for schedule, overdue in (("17 */6 * * *", 43200), ("30 2 * * *", 172800), ("0 4 * * 0", 1209600)):
        settings = PROD.model_copy(update={"redis": PROD.redis.model_copy(update={
            "backup": PROD.redis.backup.model_copy(update={"schedule": schedule})})})
        missing = next(r for r in backup_alerts(settings) if r["alert"] == "RedisBackupMissing")
        assert f"> {overdue})" in missing["expr"] and missing["labels"]["severity"] == "critical"
    without = PROD.model_copy(update={"redis": PROD.redis.model_copy(update={"backup": None})})
    assert backup_alerts(without) == [] and "RedisBackupMissing" not in alert_names(without)
