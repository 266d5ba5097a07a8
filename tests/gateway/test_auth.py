"""API keys (stored as hashes) and OIDC JWTs (JWKS cached, rotated); failures are 401 in OpenAI's shape."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.gateway.auth.oidc import OidcVerifier
from tests.gateway.conftest import AUDIENCE, ISSUER, MODEL, Gateway, JwksServer, StartGateway, auth, chat_body
from tests.waiting import wait_until_async


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(gw: Gateway, headers: dict[str, str]) -> httpx.Response:
    async with gw.client() as http:
        return await http.post("/v1/chat/completions", headers=headers, json=chat_body())


def assert_401(resp: httpx.Response, code: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"] == "Bearer"
    error = resp.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer sk-not-a-key"}, "invalid_api_key"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, "invalid_api_key"),
        ({"Authorization": "Bearer"}, "invalid_api_key"),
        ({"Authorization": "Bearer a.b.c"}, "invalid_token"),  # JWT-shaped garbage
    ],
)
async def test_bad_credentials(gw: Gateway, headers: dict[str, str], code: str) -> None:
    assert_401(await post(gw, headers), code)


async def test_models_need_auth_but_probes_do_not(gw: Gateway) -> None:
    async with gw.client() as http:
        assert_401(await http.get("/v1/models"), "missing_api_key")
        assert (await http.get("/v1/models", headers=auth("bob"))).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(path)).status_code == 200


async def test_openai_client_raises_authentication_error(gw: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


async def test_valid_jwt_is_accepted_and_owns_its_sessions(gw: Gateway, jwks: JwksServer) -> None:
    token = jwks.token(sub="jwt-user")
    async with gw.client() as http:
        headers = {**bearer(token), "X-Session-Id": "jwt-session-0001"}
        assert (await http.post("/v1/chat/completions", headers=headers, json=chat_body())).status_code == 200
        mine = await http.get("/v1/sessions/jwt-session-0001", headers=bearer(jwks.token(sub="jwt-user")))
        other = await http.get("/v1/sessions/jwt-session-0001", headers=bearer(jwks.token(sub="someone-else")))
    assert mine.status_code == 200
    assert other.status_code == 404


async def test_invalid_jwts(gw: Gateway, jwks: JwksServer) -> None:
    now = int(time.time())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "expired": jwks.token(exp=now - 120),
        "wrong audience": jwks.token(aud="another-service"),
        "wrong issuer": jwks.token(iss="https://evil.example"),
        "forged signature": jwks.token(key=stranger),
        "unknown key id": jwks.token(kid="nobody", key=stranger),
        "no subject": jwks.token(sub=None),
    }
    for name, token in cases.items():
        resp = await post(gw, bearer(token))
        assert resp.status_code == 401, name
        assert_401(resp, "invalid_token")
    assert ISSUER and AUDIENCE


async def test_key_rotation_refetches_the_jwks(gw: Gateway, jwks: JwksServer) -> None:
    assert (await post(gw, bearer(jwks.token()))).status_code == 200
    fetches = jwks.fetches
    new_kid = jwks.rotate()
    resp = await post(gw, bearer(jwks.token(kid=new_kid)))
    assert resp.status_code == 200, resp.text
    assert jwks.fetches == fetches + 1  # fetched once for the unknown kid, then cached
    assert (await post(gw, bearer(jwks.token(kid=new_kid)))).status_code == 200
    assert jwks.fetches == fetches + 1


async def test_a_slow_identity_provider_never_holds_up_a_cached_key() -> None:
    """The JWKS cache has expired and the provider hangs: a token signed by a cached key is still verified
    at once (the refetch runs beside it, for less than aiohttp's 5 s fetch timeout here) and the keys are
    refreshed once the provider answers."""
    provider = JwksServer()
    try:
        async with aiohttp.ClientSession() as client:
            verifier = OidcVerifier(client, issuer=ISSUER, audience=AUDIENCE, jwks_url=provider.url,
                                    cache_seconds=0, min_refresh_seconds=0)  # expired as soon as fetched
            token = provider.token()
            assert (await verifier.verify(token))["sub"] == "user-1"
            assert verifier.fetches == 1
            provider.answering.clear()
            claims = await asyncio.wait_for(verifier.verify(token), timeout=4)
            assert claims["sub"] == "user-1" and verifier.fetches == 1

            async def refetch_asked() -> bool:
                return provider.asked == 2

            async def refetched() -> bool:
                return verifier.fetches == 2

            await wait_until_async(refetch_asked, "the expired cache is refetched meanwhile", within=5)
            provider.answering.set()
            await wait_until_async(refetched, "the refetch completes once the provider answers", within=10)
    finally:
        provider.answering.set()
        provider.close()


async def test_auth_disabled_for_local_development(start_gw: StartGateway) -> None:
    open_gw = start_gw(auth_enabled="false", api_key_hashes="{}")
    assert (await post(open_gw, {})).status_code == 200
    assert "AUTH IS DISABLED" in open_gw.log()
