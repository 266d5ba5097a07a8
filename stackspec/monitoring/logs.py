"""The log pipeline: Fluent Bit's config (YAML format) and the Elasticsearch retention policy.

Fluent Bit tails every container's log (CRI format), adds Kubernetes metadata, parses the gateway's
JSON lines into fields, and ships to Elasticsearch (daily indices, deleted after `retentionDays` by an
ILM policy) or to Loki (where retention is the Loki server's `retention_period`). The sink's password
never appears here: Fluent Bit reads it from the environment (`${LOG_SINK_PASSWORD}`), which the
DaemonSet fills from a Kubernetes Secret.
"""

from __future__ import annotations

from typing import Any

import yaml

from stackspec.settings import StackSettings

PASSWORD_ENV = "LOG_SINK_PASSWORD"
CONFIG_FILE = "fluent-bit.yaml"
TAG_PREFIX = "kube."

# containerd/CRI-O line: "<RFC3339 time> <stream> <P|F> <message>".
CRI_REGEX = r"^(?<time>[^ ]+) (?<stream>stdout|stderr) (?<logtag>[^ ]*) (?<log>.*)$"
GATEWAY_PARSER = "qwen-gateway-json"


def gateway_tag_pattern(settings: StackSettings) -> str:
    """Tail tags are the file path with dots: kube.var.log.containers.<pod>_<namespace>_<container>-<id>.log."""
    return f"{TAG_PREFIX}*_{settings.kubernetes.namespace}_gateway-*"


def parsers() -> list[dict[str, Any]]:
    return [
        {"name": "cri-log", "format": "regex", "regex": CRI_REGEX, "time_key": "time",
         "time_format": "%Y-%m-%dT%H:%M:%S.%L%z", "time_keep": "on"},
        # The gateway writes one JSON object per line (app/gateway/logging.py): ts, level, logger, msg,
        # request_id and per-event fields. `ts` stays a field; the record time is the runtime's.
        {"name": GATEWAY_PARSER, "format": "json"},
    ]


def _output(settings: StackSettings) -> dict[str, Any]:
    logs = settings.monitoring.logs
    common: dict[str, Any] = {
        "match": f"{TAG_PREFIX}*",
        "host": logs.host,
        "port": logs.port,
        "tls": "on" if logs.tls else "off",
        "tls.verify": "on",
        "http_user": logs.user,
        "http_passwd": f"${{{PASSWORD_ENV}}}",
        "retry_limit": 10,
    }
    if logs.sink == "elasticsearch":
        return {
            "name": "es", **common,
            "logstash_format": "on",  # daily indices <index>-YYYY.MM.DD; the ILM policy deletes old ones
            "logstash_prefix": logs.index,
            "suppress_type_name": "on",
            "replace_dots": "on",
            "trace_error": "on",
        }
    return {
        "name": "loki", **common,
        "labels": f"job=fluent-bit, site={settings.site.name}, namespace=$kubernetes['namespace_name'], "
                  "container=$kubernetes['container_name']",
        "line_format": "json",
    }


def fluent_bit_config(settings: StackSettings) -> dict[str, Any]:
    return {
        "service": {"flush": 1, "log_level": "info", "http_server": "on", "http_listen": "0.0.0.0",
                    "http_port": 2020, "health_check": "on"},
        "parsers": parsers(),
        "pipeline": {
            "inputs": [{
                "name": "tail", "tag": f"{TAG_PREFIX}*", "path": "/var/log/containers/*.log",
                "parser": "cri-log", "db": "/var/fluent-bit/state/tail.db", "mem_buf_limit": "50MB",
                "skip_long_lines": "on", "refresh_interval": 10,
            }],
            "filters": [
                {"name": "kubernetes", "match": f"{TAG_PREFIX}*", "kube_tag_prefix":
                    f"{TAG_PREFIX}var.log.containers.", "merge_log": "off", "labels": "on",
                 "annotations": "off"},
                {"name": "parser", "match": gateway_tag_pattern(settings), "key_name": "log",
                 "parser": GATEWAY_PARSER, "reserve_data": "on"},
            ],
            "outputs": [_output(settings)],
        },
    }


def render_fluent_bit(settings: StackSettings) -> str:
    """fluent-bit.yaml (no secrets: the password is an environment reference)."""
    return yaml.safe_dump(fluent_bit_config(settings), sort_keys=False, width=200)


def ilm_policy(settings: StackSettings) -> dict[str, Any]:
    """Elasticsearch ILM: delete an index `retentionDays` after it was created."""
    days = settings.monitoring.logs.retention_days
    return {"policy": {"phases": {
        "hot": {"min_age": "0ms", "actions": {}},
        "delete": {"min_age": f"{days}d", "actions": {"delete": {}}},
    }}}


def index_template(settings: StackSettings) -> dict[str, Any]:
    """Attaches the ILM policy to every daily index Fluent Bit writes."""
    index = settings.monitoring.logs.index
    return {
        "index_patterns": [f"{index}-*"],
        "template": {"settings": {"index.lifecycle.name": index}},
        "priority": 200,
    }
