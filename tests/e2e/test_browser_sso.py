"""Single sign-on on the chat page, in Chromium, through Nginx, against a real OIDC provider process.

The provider is `oidc-provider-mock` (tests/e2e/oidc_idp.py). In front of the session stack's Redis and vLLM
runs a second front (one gateway + Nginx) whose settings configure SSO (edge.sso + gateway.oidc*): the same
render path as a site's, so the page's /config.json and the CSP come from those settings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest
import redis
from playwright.sync_api import Page, expect

from localstack.processes import ManagedProcess, free_port
from localstack.settings import local_settings
from localstack.stack import Endpoint, LocalConfig, LocalStack, settings_overrides
from tests.e2e import test_browser_chat as chat
from tests.e2e.test_browser_chat import assert_last_turn_answered_and_stored, send, wait_idle

BUILD = Path(__file__).resolve().parents[2] / "build"
CLIENT_ID = "qwen-chat"
# Short enough that the page's renewal (at two thirds of the token's life) comes within the test, long enough
# that a turn on the paced CPU model fits in the first third.
TOKEN_MAX_AGE = 45


# Chromium, pages (JavaScript errors fail the test) and the Redis client, as the chat tests have them; the page
# opens on the SSO front (`endpoint` below).
playwright, browser, page, store = chat.playwright, chat.browser, chat.page, chat.store


class Sso:
    def __init__(self, issuer: str, front: LocalStack, idp_port: int):
        self.issuer, self.front, self.idp_port = issuer, front, idp_port

    @property
    def endpoint(self) -> Endpoint:
        assert self.front.endpoint is not None
        return self.front.endpoint


@pytest.fixture(scope="module")
def sso(local_stack: LocalStack) -> Iterator[Sso]:
    assert local_stack.endpoint is not None and local_stack.redis is not None
    root = BUILD / "test-sso"
    shutil.rmtree(root, ignore_errors=True)
    page_port, idp_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{idp_port}"
    idp = ManagedProcess(
        "oidc-idp", [sys.executable, "-m", "tests.e2e.oidc_idp", "--port", str(idp_port),
                     "--origin", f"http://127.0.0.1:{page_port}", "--token-max-age", str(TOKEN_MAX_AGE)],
        root / "idp.log", cwd=Path(__file__).resolve().parents[2],
        health_url=f"{issuer}/.well-known/openid-configuration",
    ).start()
    front = LocalStack(LocalConfig(root=root, port=page_port, prometheus=False, say=lambda _: None))
    try:
        idp.wait_ready(timeout=30)
        overrides: dict[str, Any] = settings_overrides(local_stack.config)
        overrides["gateway"] = {**overrides.get("gateway", {}), "replicas": 1, "maxReplicas": 1,
                                "oidcIssuer": issuer, "oidcAudience": CLIENT_ID, "oidcJwksUrl": f"{issuer}/jwks"}
        overrides["edge"] = {"sso": {"clientId": CLIENT_ID, "scopes": ["openid", "email"]}}
        settings = local_settings(local_stack.endpoint.api_key, overrides=overrides)
        front.start_front(settings, api_key=local_stack.endpoint.api_key, redis=local_stack.redis,
                          vllm=local_stack.vllm)
        yield Sso(issuer, front, idp_port)
    finally:
        front.stop()  # its gateway and Nginx; never the session stack's Redis or vLLM
        idp.stop()


@pytest.fixture(scope="module")
def endpoint(sso: Sso) -> Endpoint:
    """The SSO front, for the chat tests' page fixture (its browser context's base URL)."""
    return sso.endpoint


def token(page: Page) -> dict[str, Any]:
    stored = page.evaluate("sessionStorage.getItem('qs.sso.token')")
    assert stored, "no token in the tab's sessionStorage"
    value: dict[str, Any] = json.loads(stored)
    return value


def authorize_at_provider(page: Page, sso: Sso, subject: str) -> dict[str, list[str]]:
    """On the provider's sign-in page (the page went there itself): sign in as `subject`; back on the chat.
    Returns the authorization request's parameters."""
    page.wait_for_url(f"{sso.issuer}/oauth2/authorize?**", timeout=90_000)
    params = parse_qs(urlparse(page.url).query)
    page.locator("input[name=sub]").fill(subject)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{sso.endpoint.url}/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return params


def sign_in(page: Page, sso: Sso, subject: str) -> dict[str, list[str]]:
    # Short answers (the page's setting, in localStorage): a turn must end well inside the token's first two
    # thirds, before the page goes back to the provider, even on a busy machine.
    page.add_init_script("localStorage.setItem('qs.maxTokens', '4')")
    page.goto("/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.get_by_test_id("error")).to_contain_text("Sign in")  # asked to sign in, not shown a 401
    page.get_by_test_id("sign-in").click()
    params = authorize_at_provider(page, sso, subject)
    expect(page.get_by_test_id("account")).to_have_text(subject)
    expect(page.get_by_test_id("sign-out")).to_be_visible()
    return params


def test_the_page_signs_in_with_code_and_pkce_and_chats_as_that_identity(page: Page, sso: Sso,
                                                                          store: redis.Redis) -> None:
    token_requests: list[dict[str, list[str]]] = []
    page.on("request", lambda r: token_requests.append(parse_qs(r.post_data or ""))
            if r.url == f"{sso.issuer}/oauth2/token" else None)
    params = sign_in(page, sso, "alice@example.com")
    # The code is redeemed with the verifier whose S256 hash the authorization request carried, and no secret.
    (redeem,) = token_requests
    verifier = redeem["code_verifier"][0]
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert params["code_challenge"] == [digest] and "client_secret" not in redeem
    # A public client with PKCE: S256 challenge (43 base64url characters of a SHA-256), no secret anywhere.
    assert params["response_type"] == ["code"] and params["client_id"] == [CLIENT_ID]
    assert params["code_challenge_method"] == ["S256"] and len(params["code_challenge"][0]) == 43
    assert params["redirect_uri"] == [f"{sso.endpoint.url}/"] and params["scope"] == ["openid email"]
    assert "code" not in page.url  # the single-use code is cleared from the address bar
    assert page.evaluate("sessionStorage.getItem('qs.apiKey')") is None
    send(page, "Hello")
    wait_idle(page)
    assert_last_turn_answered_and_stored(page, store)
    session = page.evaluate("localStorage.getItem('qs.sessionId')")
    assert store.hget(f"qs:session:{session}", "owner") == b"oidc:alice@example.com"  # the token's subject


def test_the_page_signs_in_again_before_the_token_expires(page: Page, sso: Sso, store: redis.Redis) -> None:
    sign_in(page, sso, "bob@example.com")
    first = token(page)
    # Nothing clicked: the page goes back to the provider by itself before expiry (with a real provider's
    # session that round trip is silent; the mock asks again).
    authorize_at_provider(page, sso, "bob@example.com")
    second = token(page)
    assert second["bearer"] != first["bearer"] and second["expiresAt"] > first["expiresAt"]
    send(page, "Hello again")
    wait_idle(page)
    assert_last_turn_answered_and_stored(page, store)


def test_sign_out_forgets_the_token_and_ends_the_providers_session(page: Page, sso: Sso) -> None:
    sign_in(page, sso, "carol@example.com")
    page.get_by_test_id("sign-out").click()
    page.wait_for_url(f"{sso.issuer}/oauth2/end_session?**")
    assert parse_qs(urlparse(page.url).query)["post_logout_redirect_uri"] == [f"{sso.endpoint.url}/"]
    page.get_by_role("button", name="End session").click()
    page.wait_for_url(f"{sso.endpoint.url}/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.get_by_test_id("sign-in")).to_be_visible()
    expect(page.get_by_test_id("sign-out")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('qs.sso.token')") is None


def test_the_edge_tells_the_page_its_provider_and_lets_it_reach_only_that(sso: Sso) -> None:
    with httpx.Client(base_url=sso.endpoint.url, timeout=10) as http:
        config = http.get("/config.json")
        page = http.get("/")
    assert config.json() == {"sso": {"issuer": sso.issuer, "clientId": CLIENT_ID, "scopes": ["openid", "email"]}}
    assert config.headers["cache-control"] == "no-store"
    csp = dict(d.split(" ", 1) for d in page.headers["content-security-policy"].split("; "))
    assert csp["connect-src"] == f"'self' {sso.issuer}"


def id_token(issuer_url: str, client_id: str, subject: str) -> str:
    """An ID token from the running provider, by the code flow without a browser (its form, posted)."""
    redirect = "http://127.0.0.1/cb"
    query = urlencode({"response_type": "code", "client_id": client_id, "redirect_uri": redirect,
                       "scope": "openid", "state": "s"})
    with httpx.Client(base_url=issuer_url, timeout=10) as idp:
        answer = idp.post(f"/oauth2/authorize?{query}", data={"sub": subject})
        assert answer.status_code == 302, answer.text
        code = parse_qs(urlparse(answer.headers["location"]).query)["code"][0]
        tokens = idp.post("/oauth2/token", data={"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": redirect, "client_id": client_id})
        tokens.raise_for_status()
        value: str = tokens.json()["id_token"]
        return value


@pytest.mark.parametrize("case", ["ours", "another audience", "another issuer"])
def test_only_a_token_of_this_issuer_and_audience_is_accepted(sso: Sso, case: str) -> None:
    # Another issuer: the same provider reached as `localhost` names itself so in the token (same signing key,
    # so only the issuer check can refuse it).
    issuer_url = sso.issuer.replace("127.0.0.1", "localhost") if case == "another issuer" else sso.issuer
    client_id = "another-app" if case == "another audience" else CLIENT_ID
    bearer = id_token(issuer_url, client_id, "dave@example.com")
    with httpx.Client(base_url=sso.endpoint.url, timeout=10) as http:
        resp = http.get("/v1/models", headers={"Authorization": f"Bearer {bearer}"})
    if case == "ours":
        assert resp.status_code == 200, resp.text
        return
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["code"] == "invalid_token"
    assert ("audience" if case == "another audience" else "issuer") in error["message"].lower()
