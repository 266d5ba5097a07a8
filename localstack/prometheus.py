"""A real Prometheus (Debian) for the local stack, on the rendered scrape config and the same rules.

Also the two exporters the cluster runs as sidecars (Debian's redis_exporter and nginx-prometheus-
exporter), so the local Prometheus sees Redis and Nginx the way the cluster's does.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localstack.files import write_private
from localstack.processes import ManagedProcess, ProcessError, free_port, http_ok
from localstack.services import ServiceHandle, require_program
from localstack.settings import LOCAL_YAML, read_stack_file
from stackspec.monitoring import promql as m
from stackspec.monitoring.rules import render_rules
from stackspec.monitoring.scrape import RULE_FILE, render_prometheus_config
from stackspec.render.redis import render_exporter_passwords
from stackspec.settings import StackSettings, parse_settings

LOCAL_SCRAPE_INTERVAL = "1s"  # short, so rules evaluate a few times within a test


@dataclass
class PrometheusHandle(ServiceHandle):
    config_path: Path | None = None

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"


def monitoring_settings(scrape_interval: str = LOCAL_SCRAPE_INTERVAL) -> StackSettings:
    """The local stack file's settings with a short scrape interval (no API key needed for monitoring)."""
    values = read_stack_file(LOCAL_YAML)
    values["monitoring"] = {**values.get("monitoring", {}), "scrapeInterval": scrape_interval}
    values["gateway"] = {**values.get("gateway", {}), "authEnabled": False}
    return parse_settings(values)


def write_prometheus_files(workdir: Path, settings: StackSettings, targets: Mapping[str, Sequence[str]]) -> Path:
    """prometheus.yml + rules.yaml under `workdir`, both checked by promtool; returns the config path."""
    promtool = require_program("promtool", "/usr/bin/promtool")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / RULE_FILE).write_text(render_rules(settings))
    config = workdir / "prometheus.yml"
    config.write_text(render_prometheus_config(settings, targets))
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise ProcessError(f"promtool rejected {config}:\n{check.stdout}{check.stderr}")
    return config


def start_prometheus(
    workdir: Path,
    *,
    targets: Mapping[str, Sequence[str]],
    port: int | None = None,
    settings: StackSettings | None = None,
    timeout: float = 30.0,
) -> PrometheusHandle:
    """Prometheus scraping `targets` (job -> ["127.0.0.1:port"]) with the stack's rules; ready at /-/ready."""
    program = require_program("prometheus", "/usr/bin/prometheus")
    workdir = workdir.resolve()
    settings = settings or monitoring_settings()
    port = port or free_port()
    config = write_prometheus_files(workdir, settings, targets)
    cmd = [
        program, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
        "--storage.tsdb.retention.time=1d", f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    proc = ManagedProcess("prometheus", cmd, workdir / "prometheus.log", cwd=workdir).start()
    url = f"http://127.0.0.1:{port}"
    handle = PrometheusHandle("prometheus", port, proc, lambda: http_ok(f"{url}/-/ready"), timeout,
                              config_path=config)
    handle.wait_ready()
    return handle


def start_nginx_exporter(workdir: Path, *, status_url: str, port: int | None = None,
                         timeout: float = 15.0) -> ServiceHandle:
    """nginx-prometheus-exporter on Nginx's stub_status (`status_url`, e.g. http://127.0.0.1:8080/nginx_status)."""
    program = require_program("prometheus-nginx-exporter", "/usr/bin/prometheus-nginx-exporter")
    port = port or free_port()
    cmd = [program, f"-nginx.scrape-uri={status_url}", f"-web.listen-address=127.0.0.1:{port}",
           "-nginx.retries=10", "-nginx.retry-interval=1s"]
    proc = ManagedProcess("nginx-exporter", cmd, workdir.resolve() / "nginx-exporter.log").start()
    handle = ServiceHandle("nginx-exporter", port, proc, lambda: http_ok(f"http://127.0.0.1:{port}/metrics"),
                           timeout)
    handle.wait_ready()
    return handle


def start_redis_exporter(workdir: Path, *, redis_port: int, password: str | None = None,
                         port: int | None = None, timeout: float = 15.0) -> ServiceHandle:
    """redis_exporter for the local Redis; the password in a 0600 file, as the pod's from its Secret (neither
    argv nor the environment)."""
    program = require_program("prometheus-redis-exporter", "/usr/bin/prometheus-redis-exporter")
    port = port or free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    cmd = [program, f"-redis.addr=redis://127.0.0.1:{redis_port}", f"-web.listen-address=127.0.0.1:{port}"]
    if password:
        passwords = workdir.resolve() / "redis-exporter-passwords.json"
        write_private(passwords, render_exporter_passwords(port=redis_port, password=password))
        cmd.append(f"-redis.password-file={passwords}")
    proc = ManagedProcess("redis-exporter", cmd, workdir.resolve() / "redis-exporter.log", env=env).start()
    handle = ServiceHandle("redis-exporter", port, proc, lambda: http_ok(f"http://127.0.0.1:{port}/metrics"),
                           timeout)
    handle.wait_ready()
    return handle


@dataclass
class LocalMonitoring:
    """Prometheus and the exporters of the local stack, stopped together."""

    prometheus: PrometheusHandle
    exporters: list[ServiceHandle]

    def handles(self) -> list[ServiceHandle]:
        return [*self.exporters, self.prometheus]

    def stop(self) -> None:
        for handle in reversed(self.handles()):
            handle.stop()


def start_local_monitoring(
    workdir: Path,
    *,
    vllm: Sequence[int],
    gateways: Sequence[int],
    nginx_status_url: str | None = None,
    redis_port: int | None = None,
    redis_password: str | None = None,
    settings: StackSettings | None = None,
) -> LocalMonitoring:
    """What `make up` runs for monitoring: the Nginx and Redis exporters (when given) and Prometheus
    scraping vLLM, the gateways and those exporters under the cluster's job names."""
    exporters: list[ServiceHandle] = []
    targets: dict[str, list[str]] = {
        m.JOB_VLLM: [f"127.0.0.1:{port}" for port in vllm],
        m.JOB_GATEWAY: [f"127.0.0.1:{port}" for port in gateways],
    }
    try:
        if nginx_status_url:
            exporters.append(start_nginx_exporter(workdir / "exporters", status_url=nginx_status_url))
            targets[m.JOB_EDGE] = [f"127.0.0.1:{exporters[-1].port}"]
        if redis_port:
            exporters.append(start_redis_exporter(workdir / "exporters", redis_port=redis_port,
                                                  password=redis_password))
            targets[m.JOB_REDIS] = [f"127.0.0.1:{exporters[-1].port}"]
        prometheus = start_prometheus(workdir / "prometheus", targets=targets, settings=settings)
    except BaseException:
        for handle in reversed(exporters):
            handle.stop()
        raise
    return LocalMonitoring(prometheus, exporters)
