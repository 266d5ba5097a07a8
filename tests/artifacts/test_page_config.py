"""The chat page's config (/config.json) and the edge's CSP, from the stack's SSO settings; bad SSO settings refused."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from localstack.settings import local_settings
from stackspec.render.nginx import CONTENT_SECURITY_POLICY, render_nginx_conf
from stackspec.settings import SettingsError

ISSUER = "https://login.example.com/realms/staff"
OIDC = {"oidcIssuer": ISSUER, "oidcAudience": "qwen-chat", "oidcJwksUrl": f"{ISSUER}/protocol/openid-connect/certs"}


def _settings(edge: dict[str, Any], gateway: dict[str, Any] | None = None) -> Any:
    return local_settings("sk-local-x", overrides={"edge": edge, "gateway": gateway or {}})


def _served_config(conf: str) -> dict[str, Any]:
    match = re.search(r"location = /config\.json \{[^}]*return 200 '([^']*)';", conf)
    assert match, "nginx.conf serves no /config.json"
    served: dict[str, Any] = json.loads(match.group(1))
    return served


def _csp(conf: str) -> dict[str, str]:
    (policy,) = set(re.findall(r'add_header Content-Security-Policy "([^"]+)" always;', conf))
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in policy.split("; ")}


def test_without_sso_the_page_is_told_api_keys_and_may_connect_only_to_its_origin() -> None:
    conf = render_nginx_conf(_settings({}))
    assert _served_config(conf) == {"sso": None}
    assert _csp(conf)["connect-src"] == "'self'"
    assert CONTENT_SECURITY_POLICY in conf


def test_with_sso_the_page_gets_issuer_client_and_scopes_and_the_csp_admits_exactly_the_issuer() -> None:
    conf = render_nginx_conf(_settings({"sso": {"clientId": "qwen-chat", "scopes": ["openid", "email"]}}, OIDC))
    assert _served_config(conf) == {"sso": {"issuer": ISSUER, "clientId": "qwen-chat", "scopes": ["openid", "email"]}}
    csp = _csp(conf)
    assert csp["connect-src"] == "'self' https://login.example.com"
    # Nothing else widened: scripts, styles, forms and frames stay as without SSO.
    assert {k: v for k, v in csp.items() if k != "connect-src"} == {
        k: v for k, v in _csp(render_nginx_conf(_settings({}))).items() if k != "connect-src"}
    assert "secret" not in _served_config(conf)["sso"]


def test_a_client_id_without_the_gateways_issuer_is_refused_naming_the_key() -> None:
    with pytest.raises(SettingsError) as err:
        _settings({"sso": {"clientId": "qwen-chat"}})
    assert "qwen-serving:gateway.oidcIssuer" in str(err.value) and "edge.sso" in str(err.value)


@pytest.mark.parametrize(("sso", "gateway", "key"), [
    ({"clientId": "x' ; return 200 'pwned"}, OIDC, "clientId"),
    ({"clientId": "qwen-chat", "scopes": ["profile"]}, OIDC, "qwen-serving:edge.sso.scopes"),
    ({"clientId": "qwen-chat"}, OIDC | {"oidcIssuer": "http://login.example.com"}, "qwen-serving:gateway.oidcIssuer"),
    ({"clientId": "qwen-chat"}, OIDC | {"oidcIssuer": "https://idp.example/$host"}, "qwen-serving:gateway.oidcIssuer"),
])
def test_bad_sso_settings_are_refused_naming_the_key(sso: dict[str, Any], gateway: dict[str, Any], key: str) -> None:
    with pytest.raises(SettingsError) as err:
        _settings({"sso": sso}, gateway)
    assert key in str(err.value)
