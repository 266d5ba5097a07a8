"""The log pipeline: the rendered Fluent Bit config parses, and gateway lines become fields."""

from __future__ import annotations

import io
import json
import logging
import time

import yaml

from app.gateway.logging import JsonFormatter, request_id_var
from stackspec.monitoring.logs import ilm_policy, index_template, render_fluent_bit
from stackspec.settings import LogSettings, StackSettings
from tests.monitoring.conftest import stack_settings
from tests.monitoring.fluent_bit import process

PROD = stack_settings("prod")
GATEWAY_LOG = "/var/log/containers/gateway-5d8f9c7b6-x2kqp_qwen-serving_gateway-0123456789abcdef.log"
NGINX_LOG = "/var/log/containers/edge-6c9d7f5d4-abcde_qwen-serving_nginx-fedcba9876543210.log"


def cri_line(message: str, stream: str = "stdout") -> str:
    """How containerd writes a container's line to /var/log/containers/*.log."""
    return f"2026-11-24T23:10:02.123456789Z {stream} F {message}"


def gateway_line(message: str, **extra: object) -> str:
    """A log line exactly as the gateway writes it: its own JsonFormatter on its own logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.test-logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    token = request_id_var.set("req-4f2a")
    try:
        logger.warning(message, extra=extra)
    finally:
        request_id_var.reset(token)
    return stream.getvalue().strip()


def with_logs(settings: StackSettings, **changes: object) -> StackSettings:
    logs = LogSettings(**(settings.monitoring.logs.model_dump() | changes))
    return settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={"logs": logs})})


def test_config_parses_and_holds_no_secret() -> None:
    text = render_fluent_bit(PROD)
    config = yaml.safe_load(text)
    assert set(config) == {"service", "parsers", "pipeline"}
    output = config["pipeline"]["outputs"][0]
    assert output["name"] == "es" and output["http_passwd"] == "${LOG_SINK_PASSWORD}"
    assert output["logstash_prefix"] == PROD.monitoring.logs.index
    assert "plan-placeholder" not in text


def test_a_real_gateway_line_becomes_fields() -> None:
    line = gateway_line("upstream attempt failed", backend="10.0.3.7:8000", error="timeout")
    tag, record = process(yaml.safe_load(render_fluent_bit(PROD)), GATEWAY_LOG, cri_line(line))
    assert tag.startswith("kube.var.log.containers.gateway-")
    assert record["level"] == "warning"
    assert record["msg"] == "upstream attempt failed"
    assert record["request_id"] == "req-4f2a"
    assert record["backend"] == "10.0.3.7:8000" and record["error"] == "timeout"
    assert abs(record["ts"] - time.time()) < 60
    assert record["stream"] == "stdout" and record["time"].startswith("2026-11-24T23:10:02")
    assert "log" not in record  # the raw line was replaced by its fields


def test_other_containers_lines_stay_raw() -> None:
    config = yaml.safe_load(render_fluent_bit(PROD))
    nginx = '10.0.0.9 - - [24/Nov/2026:23:10:02 +0000] "GET / HTTP/1.1" 200 512'
    _, record = process(config, NGINX_LOG, cri_line(nginx))
    assert record["log"] == nginx and "msg" not in record
    # A JSON line from another container is not the gateway's and is not parsed as such.
    _, record = process(config, NGINX_LOG, cri_line(json.dumps({"msg": "x"})))
    assert "msg" not in record


def test_a_non_json_gateway_line_is_kept_whole() -> None:
    config = yaml.safe_load(render_fluent_bit(PROD))
    _, record = process(config, GATEWAY_LOG, cri_line("Traceback (most recent call last):", "stderr"))
    assert record["log"] == "Traceback (most recent call last):" and record["stream"] == "stderr"


def test_loki_instead_of_elasticsearch() -> None:
    settings = with_logs(PROD, sink="loki", host="loki.logging.svc", port=3100)
    output = yaml.safe_load(render_fluent_bit(settings))["pipeline"]["outputs"][0]
    assert output["name"] == "loki" and output["host"] == "loki.logging.svc" and output["port"] == 3100
    assert "namespace=$kubernetes['namespace_name']" in output["labels"]
    assert output["http_passwd"] == "${LOG_SINK_PASSWORD}"


def test_retention_policy_deletes_after_the_configured_days() -> None:
    assert ilm_policy(PROD)["policy"]["phases"]["delete"] == {"min_age": "30d", "actions": {"delete": {}}}
    assert ilm_policy(with_logs(PROD, retention_days=7))["policy"]["phases"]["delete"]["min_age"] == "7d"
    template = index_template(PROD)
    assert template["index_patterns"] == ["qwen-serving-logs-*"]
    assert template["template"]["settings"]["index.lifecycle.name"] == "qwen-serving-logs"
