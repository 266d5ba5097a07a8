"""Settings -> the chat page's config (served by the edge as /config.json) and the origins the page may call.

One source of truth: the page learns from here whether the site signs in with OIDC (issuer, client id, scopes:
a public client, so nothing secret), and the edge's CSP allows exactly that issuer's origin for the page's
fetches (the discovery document and the token endpoint). The text is rendered into nginx.conf itself, so the
ConfigMap and the local stack's disk carry it with no second file.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from stackspec.settings import StackSettings


def page_config(settings: StackSettings) -> dict[str, Any]:
    """What web/sso.js reads: `sso` is null when the site signs in with API keys only."""
    sso = settings.edge.sso
    if sso is None:
        return {"sso": None}
    return {"sso": {"issuer": settings.gateway.oidc_issuer, "clientId": sso.client_id, "scopes": list(sso.scopes)}}


def issuer_origin(settings: StackSettings) -> str | None:
    """The identity provider's origin (scheme://host[:port]) when the page signs in, else None."""
    if settings.edge.sso is None:
        return None
    parts = urlsplit(settings.gateway.oidc_issuer)
    return f"{parts.scheme}://{parts.netloc}"


def render_page_config(settings: StackSettings) -> str:
    """Compact JSON. The settings' patterns keep quotes, backslashes and `$` out of every value (it lands in an
    nginx single-quoted string); checked again here, since a stray one would end the string or expand a variable."""
    text = json.dumps(page_config(settings), separators=(",", ":"), ensure_ascii=True)
    if any(c in text for c in "'\\$"):
        raise ValueError("edge.sso / gateway.oidcIssuer: a value holds a quote, backslash or '$'; fix the value")
    return text
