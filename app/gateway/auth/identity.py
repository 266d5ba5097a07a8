from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """Who is calling: owns sessions and is the unit of rate limiting."""

    subject: str  # "key:<name>", "oidc:<sub>" or "anonymous" (auth disabled)
