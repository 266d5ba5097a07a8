"""Conversation sessions in Redis.

Layout per session id:
- `qs:session:<id>` hash: `owner` (the identity that created it), `system` (its system prompt, if any)
- `qs:session:<id>:messages` list of JSON messages (user/assistant turns, oldest first)
Both carry the session TTL, refreshed on every completed turn. A session belongs to its owner; for anyone
else it does not exist (404), so ids cannot be probed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from app.gateway.errors import ApiError
from app.gateway.logging import log
from app.gateway.redis_client import RedisGuard

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,127}$")
MAX_STORED_MESSAGES = 1000  # a hard cap on the list; the token budget trims what is sent long before this


def validate_session_id(session_id: str) -> str:
    if not SESSION_ID_RE.match(session_id):
        raise ApiError(
            400,
            "Invalid session id: 8-128 characters of letters, digits, '_', '-', '.', ':' "
            "(a UUID works), starting with a letter or digit",
            code="invalid_session_id",
            param="session_id",
        )
    return session_id


def not_found(session_id: str) -> ApiError:
    return ApiError(404, f"No session '{session_id}'", code="session_not_found", param="session_id")


@dataclass
class Session:
    id: str
    owner: str
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    exists: bool = False
    unavailable: bool = False  # could not be read (Redis down): answered without history, never written


def _keys(session_id: str) -> tuple[str, str]:
    return f"qs:session:{session_id}", f"qs:session:{session_id}:messages"


class SessionStore:
    def __init__(self, redis: RedisGuard, *, ttl_seconds: int, replica_wait_ms: int = 0):
        self._redis, self.ttl = redis, ttl_seconds
        # RPO ~ 0 (GATEWAY_SESSION_REPLICA_WAIT_MS): after the MULTI, `WAIT 1 <ms>` on the same connection, so
        # a turn is acknowledged once the cross-site replica has it (or the wait timed out: logged, counted).
        self.replica_wait_ms = replica_wait_ms
        self.unreplicated_writes = 0

    async def load(self, session_id: str, owner: str) -> Session:
        """The session if `owner` owns it, an empty new one if nobody does; 404 if someone else does."""
        meta_key, msgs_key = _keys(session_id)

        async def read(r: Any) -> tuple[dict[str, str], list[str]]:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hgetall(meta_key)
                pipe.lrange(msgs_key, 0, -1)
                meta, raw = await pipe.execute()
            return meta, raw

        meta, raw = await self._redis.run("session_load", read)
        if not meta:
            return Session(session_id, owner)
        if meta.get("owner") != owner:
            raise not_found(session_id)
        return Session(
            session_id, owner, system=meta.get("system"), messages=[json.loads(m) for m in raw], exists=True
        )

    async def append(self, session: Session, new: list[dict[str, Any]], system: str | None) -> None:
        """Append a completed turn and refresh the TTL, in one MULTI; claims the session if it is new."""
        meta_key, msgs_key = _keys(session.id)

        wait_ms = self.replica_wait_ms

        async def write(r: Any) -> int | None:
            # Explicit MULTI/EXEC in a plain pipeline: one connection, so a WAIT after EXEC covers these writes.
            async with r.pipeline(transaction=not wait_ms) as pipe:
                if wait_ms:
                    pipe.execute_command("MULTI")
                pipe.hsetnx(meta_key, "owner", session.owner)
                if system is not None:
                    pipe.hset(meta_key, "system", system)
                pipe.rpush(msgs_key, *[json.dumps(m) for m in new])
                pipe.ltrim(msgs_key, -MAX_STORED_MESSAGES, -1)
                pipe.expire(meta_key, self.ttl)
                pipe.expire(msgs_key, self.ttl)
                if wait_ms:
                    pipe.execute_command("EXEC")
                    pipe.execute_command("WAIT", 1, wait_ms)
                results = await pipe.execute()
            return int(results[-1]) if wait_ms else None

        acked = await self._redis.run("session_append", write)
        if acked == 0:
            self.unreplicated_writes += 1
            log.warning("turn stored but not yet on a replica", extra={"session_id": session.id, "wait_ms": wait_ms})

    async def ttl_left(self, session_id: str) -> int:
        meta_key, _ = _keys(session_id)
        return int(await self._redis.run("session_ttl", lambda r: r.ttl(meta_key)))

    async def delete(self, session_id: str, owner: str) -> None:
        session = await self.load(session_id, owner)
        if not session.exists:
            raise not_found(session_id)
        await self._redis.run("session_delete", lambda r: r.delete(*_keys(session_id)))
