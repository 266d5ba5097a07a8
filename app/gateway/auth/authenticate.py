"""`Authorization: Bearer <API key | JWT>` -> Identity, or 401 in OpenAI's error shape.

API keys are stored only as sha256 digests (GATEWAY_API_KEY_HASHES); the presented key is hashed and
looked up, so the gateway never holds a plain key.
"""

from __future__ import annotations

import hashlib

from app.gateway.auth.identity import Identity
from app.gateway.auth.oidc import InvalidToken, OidcVerifier
from app.gateway.errors import ApiError
from app.gateway.metrics import Metrics

ANONYMOUS = Identity("anonymous")


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


class Authenticator:
    def __init__(
        self,
        *,
        enabled: bool,
        key_hashes: dict[str, str],
        oidc: OidcVerifier | None,
        metrics: Metrics,
    ):
        self.enabled = enabled
        self._key_hashes = key_hashes
        self._oidc = oidc
        self._metrics = metrics

    async def authenticate(self, authorization: str | None) -> Identity:
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            self._metrics.auth_failures.labels("missing").inc()
            raise _unauthorized(
                "Missing credentials: send 'Authorization: Bearer <API key or token>'", "missing_api_key"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._metrics.auth_failures.labels("scheme").inc()
            raise _unauthorized("Authorization must be 'Bearer <API key or token>'", "invalid_api_key")
        if token.count(".") == 2 and self._oidc is not None:
            try:
                claims = await self._oidc.verify(token)
            except InvalidToken as err:
                self._metrics.auth_failures.labels("jwt").inc()
                raise _unauthorized(f"Invalid token: {err}", "invalid_token") from None
            return Identity(f"oidc:{claims['sub']}")
        name = self._key_hashes.get(hashlib.sha256(token.encode()).hexdigest())
        if name is None:
            self._metrics.auth_failures.labels("api_key").inc()
            raise _unauthorized("Incorrect API key provided", "invalid_api_key")
        return Identity(f"key:{name}")
