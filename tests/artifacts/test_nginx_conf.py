"""The rendered nginx.conf passes a real `nginx -t` (Debian nginx), for every stack, both layouts."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stackspec.render.nginx import CONTENT_SECURITY_POLICY, K8S_STATE_DIR, render_nginx_conf
from tests.artifacts.conftest import STACKS, settings_with, stack_settings


def nginx() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(path).exists(), "nginx is missing: run `make setup` (Debian package nginx)"
    return path


def self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return cert_path, key_path


def nginx_t(conf_text: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    return subprocess.run(
        [nginx(), "-t", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
        capture_output=True, text=True, timeout=30,
    )


@pytest.mark.parametrize("stack", STACKS)
def test_local_layout_passes_nginx_t_and_writes_only_under_the_prefix(stack: str, workdir: Path) -> None:
    settings = stack_settings(stack)
    cert, key = self_signed(workdir, settings.edge.hostname)
    text = render_nginx_conf(
        settings, listen="127.0.0.1:18080", gateway_upstreams=("127.0.0.1:18081", "127.0.0.1:18082"),
        web_root=str(workdir / "web"), tls_cert=str(cert), tls_key=str(key), local_prefix=str(workdir),
    )
    result = nginx_t(text, workdir)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert not re.search(r"^\s*user\s", text, re.M), "an unprivileged nginx must not switch users"
    written = [line.split()[1].rstrip(";") for line in text.splitlines()
               if re.match(r"\s*(pid|error_log|access_log|\w+_temp_path)\s", line) and "off;" not in line]
    assert len(written) == 8
    assert all(path.startswith(str(workdir.resolve())) for path in written), written


@pytest.mark.parametrize("stack", STACKS)
def test_pod_layout_passes_nginx_t(stack: str, workdir: Path) -> None:
    """The ConfigMap text as the edge pod gets it; only its state dir (an emptyDir at /tmp/nginx in the pod)
    is pointed at the scratch dir so the test writes nothing outside build/."""
    settings = stack_settings(stack)
    cert, key = self_signed(workdir, settings.edge.hostname)
    text = render_nginx_conf(settings, gateway_upstreams=("127.0.0.1:18081",), tls_cert=str(cert), tls_key=str(key))
    assert K8S_STATE_DIR in text
    result = nginx_t(text.replace(K8S_STATE_DIR, str(workdir)), workdir)
    assert result.returncode == 0, result.stderr


def _block(text: str, opener: str) -> str:
    start = text.index(opener)
    depth, i = 0, text.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1]
        i += 1


def test_v1_is_proxied_sse_safe_with_settings_timeouts() -> None:
    settings = settings_with("staging", edge={"hostname": "chat.test", "replicas": 2, "proxyReadTimeoutSeconds": 900,
                                              "clientMaxBodySize": "4m", "tls": {"enabled": True}})
    text = render_nginx_conf(settings)
    v1 = _block(text[text.index("ssl;"):], "location /v1/")
    for directive in ("proxy_buffering off;", "proxy_cache off;", "proxy_http_version 1.1;",
                      'proxy_set_header Connection "";', "proxy_read_timeout 900s;",
                      "proxy_set_header X-Request-Id $request_id_out;"):
        assert directive in v1, directive
    assert "client_max_body_size 4m;" in text
    health = _block(text, "location = /healthz")
    # The gateway's status-only readiness (empty body); Nginx's own errors become a plain 503.
    assert "proxy_pass http://gateway/readyz/status;" in health and "return 200" not in health
    assert "proxy_intercept_errors on;" in health and "= @unready;" in health
    status = _block(text, "location = /nginx_status")
    assert "stub_status;" in status and status.rstrip("}").rstrip().endswith("deny all;")
    assert [line.strip() for line in status.splitlines() if "allow" in line or "deny" in line] == [
        "allow 127.0.0.1;", "allow ::1;", "deny all;"]  # loopback only: the exporter sidecar
    upstream = _block(text, "upstream gateway")
    # One Service listed twice: a connection refused by a terminating pod is retried once.
    assert "keepalive" in upstream and upstream.count("server gateway:8080 max_fails=0;") == 2
    # Only a connection that failed before the request was sent is retried: never a POST a gateway read.
    assert "proxy_next_upstream error;" in v1
    assert not re.search(r"^\s*proxy_next_upstream[^;]*non_idempotent", text, re.M)


def test_edge_limits_and_timeouts_come_from_settings() -> None:
    settings = settings_with(
        "staging", edge={"hostname": "chat.test", "replicas": 2, "rateLimitPerSecond": 7, "rateLimitBurst": 11,
                         "connectionsPerClient": 5}, gateway={"replicas": 2, "totalTimeout": 300})
    text = render_nginx_conf(settings)
    assert "limit_req_zone $binary_remote_addr zone=api_rate:10m rate=7r/s;" in text
    v1 = _block(text, "location /v1/")
    assert "limit_req zone=api_rate burst=11 nodelay;" in v1 and "limit_conn api_conn 5;" in v1
    # Longer than the gateway's total timeout (300 s): the gateway ends streams, Nginx never cuts one first.
    assert "proxy_read_timeout 330s;" in v1
    limited = _block(text, "location @edge_limited")
    assert '"code":"edge_rate_limited"' in limited and "return 429" in limited


def test_tls_redirects_plain_http_and_serves_the_api_only_over_tls() -> None:
    text = render_nginx_conf(stack_settings("prod"))
    plain, tls = text.split("listen 0.0.0.0:8443 ssl;")
    assert "return 301 https://$host$request_uri;" in plain
    assert "location /v1/" not in plain
    assert "location /v1/" in tls and "ssl_certificate /etc/nginx/tls/tls.crt;" in tls


def test_without_tls_one_plain_server_serves_everything() -> None:
    text = render_nginx_conf(stack_settings("dev"))
    assert "ssl" not in text
    assert "return 301" not in text
    assert "location /v1/" in text and "root /usr/share/nginx/html;" in text


@pytest.mark.parametrize("stack", STACKS)
def test_the_page_is_served_with_a_content_security_policy_without_inline_script(stack: str) -> None:
    text = render_nginx_conf(stack_settings(stack))
    page = _block(text[text.rindex("server {"):], "location / ")
    headers = re.findall(r'add_header Content-Security-Policy "([^"]+)" always;', page)
    assert headers == [CONTENT_SECURITY_POLICY]
    directives = {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in CONTENT_SECURITY_POLICY.split("; ")}
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert _block(text, "location /v1/").count("Content-Security-Policy") == 0  # the API's JSON needs none


@pytest.mark.parametrize("hostname", ["evil.test; include /etc/passwd", "a b"])
def test_a_hostname_that_would_inject_directives_is_refused_naming_the_key(hostname: str) -> None:
    settings = settings_with("dev", edge={"hostname": hostname, "replicas": 1})
    with pytest.raises(ValueError, match=r"qwen-serving:edge\.hostname"):
        render_nginx_conf(settings)


def test_a_config_error_is_caught_by_nginx_t(workdir: Path) -> None:
    """The check is real: a broken directive in the rendered text fails `nginx -t`."""
    text = render_nginx_conf(stack_settings("dev"), gateway_upstreams=("127.0.0.1:18081",), local_prefix=str(workdir))
    result = nginx_t(text.replace("proxy_buffering off;", "proxy_buffering sometimes;"), workdir)
    assert result.returncode != 0 and "proxy_buffering" in result.stderr
