"""JWTs from the company's OIDC provider: signature from its JWKS, plus issuer, audience and expiry.

The JWKS is cached for `cache_seconds`; once expired, a token signed by a cached key is verified at once
while the JWKS is fetched again in the background. A token whose `kid` is unknown waits for a refetch (the
provider rotated its keys), at most once per `min_refresh_seconds` so garbage tokens cannot hammer it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt

from app.gateway.logging import log

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class InvalidToken(Exception):
    pass


class OidcVerifier:
    def __init__(
        self,
        client: aiohttp.ClientSession,
        *,
        issuer: str,
        audience: str,
        jwks_url: str,
        cache_seconds: float,
        min_refresh_seconds: float,
    ):
        self._client = client
        self.issuer, self.audience, self.jwks_url = issuer, audience, jwks_url
        self._cache_seconds, self._min_refresh = cache_seconds, min_refresh_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.fetches = 0

    def _current(self, *, force: bool) -> bool:
        age = time.monotonic() - self._fetched_at
        return age < self._min_refresh or (not force and age < self._cache_seconds)

    async def _refresh(self, *, force: bool) -> None:
        if self._current(force=force):  # the common case takes no lock: never queues behind a fetch
            return
        async with self._lock:
            if self._current(force=force):  # fetched meanwhile by the caller we queued behind
                return
            try:
                async with self._client.get(self.jwks_url, timeout=aiohttp.ClientTimeout(total=5.0)) as resp:
                    resp.raise_for_status()
                    document = await resp.json(content_type=None)
                keys: dict[str, jwt.PyJWK] = {}
                for jwk in document.get("keys", []):
                    try:
                        keys[str(jwk.get("kid", ""))] = jwt.PyJWK(jwk)
                    except jwt.PyJWTError:
                        continue  # a key type we do not use
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as err:
                log.warning("JWKS fetch failed; keeping cached keys", extra={"error": str(err)})
                self._fetched_at = time.monotonic()  # back off as if we had fetched
                return
            self._keys, self._fetched_at = keys, time.monotonic()
            self.fetches += 1

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self._refresh(force=False))

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:
            raise InvalidToken(f"malformed token: {err}") from None
        kid = str(header.get("kid", ""))
        if kid in self._keys:
            # A known key is used at once; an expired cache is refreshed beside the request (a slow or
            # down identity provider must not stall every authenticated request for the fetch timeout).
            if not self._current(force=False):
                self._refresh_in_background()
        else:  # a key we have not seen (first request, rotation): only a fetch can tell
            await self._refresh(force=True)
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("token signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=30,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as err:
            raise InvalidToken(str(err)) from None
        return claims
