"""Settings -> nginx.conf for the edge (web/nginx.conf.j2): TLS, SSE-safe `/v1/`, static web/, health.

The same text goes into the edge ConfigMap and, with `local_prefix`, onto disk for the local stack.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import jinja2

from stackspec.render.page_config import issuer_origin, render_page_config
from stackspec.settings import StackSettings

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
TEMPLATE = "nginx.conf.j2"

# In the pod, nginx.conf comes from the edge ConfigMap, mounted read-only here (also in `make up IMAGES=1`;
# `make verify` runs `nginx -T` on it).
K8S_CONF_DIR = "/etc/nginx/qwen"
# The edge container's command: nginx on that file, bypassing the image's entrypoint scripts (they rewrite
# /etc/nginx, which is read-only there).
NGINX_COMMAND = ("nginx", "-c", f"{K8S_CONF_DIR}/nginx.conf")
# In the pod, TLS material comes from the mounted Secret (settings.edge.tls.secretName).
K8S_TLS_DIR = "/etc/nginx/tls"
# Where the unprivileged nginx writes pid and temp files in the pod (an emptyDir).
K8S_STATE_DIR = "/tmp/nginx"
# The OpenAI API's location: streamed (SSE), so never buffered (web/nginx.conf.j2; checked by `make verify`).
SSE_LOCATION = "/v1/"
# /nginx_status answers loopback only: its reader is the nginx-prometheus-exporter sidecar in the same pod
# (127.0.0.1), and Prometheus scrapes that exporter's own metrics port, never Nginx itself.

# The chat page's Content-Security-Policy, sent by the edge with every static file: the second wall behind the
# page's sanitiser (web/markdown.js). Scripts and styles only from this origin, so no inline script and no
# injected style attribute; fetch/XHR only to this origin (the gateway's /v1/); images from here or data:;
# no plugins, no <base>, no form posting, never framed. The page itself has no inline script or style.
# With single sign-on (edge.sso), connect-src adds exactly the issuer's origin: the page fetches the provider's
# discovery document and token endpoint; signing in and out are navigations, which connect-src does not govern.
def content_security_policy(connect_extra: str | None = None) -> str:
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'" + (f" {connect_extra}" if connect_extra else ""),
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))


CONTENT_SECURITY_POLICY = content_security_policy()  # a site without SSO

_HOSTNAME_RE = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?$")
_SIZE_RE = re.compile(r"^\d+[kKmMgG]?$")
_HOST_PORT_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_PATH_RE = re.compile(r"^[^\s;{}'\"]+$")


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # nginx config, not HTML
    )
    return env.get_template(TEMPLATE)


def _check(value: str, pattern: re.Pattern[str], what: str) -> str:
    # Every value lands in nginx syntax; one stray `;` or space would inject directives.
    if not pattern.match(value):
        raise ValueError(f"{what}: {value!r} is not valid here; fix the value")
    return value


def render_nginx_conf(
    settings: StackSettings,
    *,
    listen: str = "0.0.0.0:8080",
    gateway_upstreams: Sequence[str] = ("gateway:8080",),
    web_root: str = "/usr/share/nginx/html",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    local_prefix: str | None = None,
    tls_listen: str | None = None,
    status_allow: Sequence[str] = (),
) -> str:
    """nginx.conf text. With `local_prefix` (a writable dir) every path nginx writes lives under it and
    nginx stays in the foreground; otherwise the pod layout (logs to stdout/stderr, state in /tmp/nginx).
    `status_allow`: addresses beyond loopback that may read /nginx_status (none by default)."""
    edge = settings.edge
    if not gateway_upstreams:
        raise ValueError("gateway_upstreams: give at least one host:port of the gateway")
    for upstream in gateway_upstreams:
        _check(upstream, _HOST_PORT_RE, "gateway upstream")
    host, _, _ = listen.rpartition(":")
    values = {
        "listen": _check(listen, _HOST_PORT_RE, "listen"),
        "tls_listen": _check(tls_listen or f"{host}:8443", _HOST_PORT_RE, "tls_listen"),
        "server_name": _check(edge.hostname, _HOSTNAME_RE, "qwen-serving:edge.hostname"),
        "client_max_body_size": _check(
            edge.client_max_body_size, _SIZE_RE, "qwen-serving:edge.clientMaxBodySize (e.g. 1m)"
        ),
        "proxy_read_timeout": settings.edge_read_timeout_seconds,
        # One upstream (the gateway Service) is listed twice, so that a request refused by a gateway pod
        # that is going away (connection refused/reset) is retried once (proxy_next_upstream).
        "gateway_upstreams": list(gateway_upstreams) * (2 if len(gateway_upstreams) == 1 else 1),
        "rate_per_second": edge.rate_limit_per_second,
        "rate_burst": edge.rate_limit_burst,
        "connections_per_client": edge.connections_per_client,
        "web_root": _check(web_root, _PATH_RE, "web_root"),
        "tls": edge.tls.enabled,
        "tls_cert": _check(tls_cert or f"{K8S_TLS_DIR}/tls.crt", _PATH_RE, "tls_cert"),
        "tls_key": _check(tls_key or f"{K8S_TLS_DIR}/tls.key", _PATH_RE, "tls_key"),
        "status_allow": [_check(c, re.compile(r"^[0-9a-fA-F.:/]+$"), "status_allow") for c in status_allow],
        "mime_types": "/etc/nginx/mime.types",
        "content_security_policy": content_security_policy(issuer_origin(settings)),
        "page_config": render_page_config(settings),
    }
    if local_prefix is not None:
        prefix = _check(str(Path(local_prefix).resolve()), _PATH_RE, "local_prefix")
        values |= {
            "state_dir": prefix,
            "error_log": f"{prefix}/error.log",
            "access_log": f"{prefix}/access.log",
            "daemon_off": True,
        }
    else:
        values |= {
            "state_dir": K8S_STATE_DIR,
            "error_log": "/dev/stderr",
            "access_log": "/dev/stdout",
            "daemon_off": True,  # the container's main process
        }
    return _template().render(**values)
