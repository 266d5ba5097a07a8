"""Which backend serves a request.

A session sticks to one backend while it is healthy, so vLLM's prefix cache holds its history. Rendezvous
hashing gives that without shared state: every gateway replica picks the same backend for a session, and
when a backend leaves only its own sessions move. Requests without a session go to the backend with the
fewest requests in flight (ties broken at random).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence

from app.gateway.backends.pool import Backend


def rendezvous_score(session_id: str, address: str) -> int:
    digest = hashlib.blake2b(f"{session_id}|{address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose_backend(
    backends: Sequence[Backend], *, session_id: str | None, exclude: Collection[Backend] = ()
) -> Backend | None:
    candidates = [b for b in backends if b.healthy and b not in exclude]
    if not candidates:
        # Nobody looks healthy (e.g. probes not run yet): still try what we have rather than fail blind.
        candidates = [b for b in backends if b not in exclude]
    if not candidates:
        return None
    if session_id:
        return max(candidates, key=lambda b: rendezvous_score(session_id, b.address))
    return min(candidates, key=lambda b: (b.outstanding, random.random()))
