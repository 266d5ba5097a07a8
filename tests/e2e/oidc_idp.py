"""A real OpenID Connect provider for the SSO tests: `oidc-provider-mock` (PyPI) in its own process.

`python -m tests.e2e.oidc_idp --port P --origin http://127.0.0.1:Q --token-max-age S`. Any client id is
accepted (a public client, no registration); the sign-in page asks for a subject. The provider's token and
discovery endpoints answer the page's origin with CORS (flask-cors), as a real provider's "web origins" setting
does for a browser app; the mock itself sends none. Plain HTTP on loopback (AUTHLIB_INSECURE_TRANSPORT).

oidc-provider-mock 0.3.4 takes the code only from confidential clients (client_secret_basic/post) and ignores
PKCE: here its code grant also admits public clients (authlib's "none" method: a client id, no secret), as a
provider configured for a browser app does. PKCE is therefore checked by the tests on the page's side (the
challenge is the S256 of the verifier the page sends), not by this provider. Its ID tokens also name no `kid`
while its JWKS does (every real provider puts it in the header, and the gateway selects the key by it): here
they carry their key's id.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import flask_cors
import oidc_provider_mock
from oidc_provider_mock import _app as mock_app


def _with_kid(get_jwt_config: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def get_jwt_config_with_kid(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        config = get_jwt_config(self, *args, **kwargs)
        return config | {"kid": config["key"]["kid"]}
    return get_jwt_config_with_kid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--origin", required=True, help="the chat page's origin (CORS)")
    parser.add_argument("--token-max-age", type=int, required=True, help="seconds")
    args = parser.parse_args()
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    mock_app.AuthorizationCodeGrant.TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]
    mock_app.OpenIDCode.get_jwt_config = _with_kid(mock_app.OpenIDCode.get_jwt_config)
    app = oidc_provider_mock.app(
        access_token_max_age=timedelta(seconds=args.token_max_age), issue_refresh_token=False)
    flask_cors.CORS(app, origins=[args.origin])
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
