"""Conversation sessions in Redis.

Layout per session id:
- `qs:session:<id>` hash: `owner` (the identity that claimed it), `system` (its system prompt, if any),
  `bytes` (what its stored messages and system prompt take)
- `qs:session:<id>:messages` list of JSON messages (user/assistant turns, oldest first)
Per identity (the quotas): `qs:owner:<identity>:sessions` (sorted set: session id -> expiry, ms) and
`qs:owner:<identity>:bytes` (hash: session id -> bytes).
Everything carries the session TTL, refreshed on every completed turn. A session belongs to its owner;
for anyone else it does not exist (404), so ids cannot be probed.

Listing (`list_for`) reads the owner's index newest first (the score is the expiry, and every turn moves it
TTL ahead: latest activity first); `drop_last_turn` takes the last turn off the end (to answer it again).

Ownership is claimed atomically when a session is first used (`open_turn`: one script checks the owner,
claims a new id and checks the identity's quotas), and every append checks the owner in the same script
that appends, so two identities racing on one new id cannot both write to it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from app.gateway.errors import ApiError
from app.gateway.logging import log
from app.gateway.redis_client import RedisGuard, RedisReadOnly, RedisUnavailable
from app.gateway.sessions.history import content_text

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,127}$")
MAX_STORED_MESSAGES = 1000  # a hard cap on the list; the token budget trims what is sent long before this
TITLE_CHARS = 80  # a listed session's title: its first user message, cut here
TITLE_SCAN = 4  # messages read from a listed session's start to find its first user message


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


def _owner_keys(owner: str) -> tuple[str, str]:
    return f"qs:owner:{owner}:sessions", f"qs:owner:{owner}:bytes"


class SessionConflict(RedisUnavailable):
    """The session belongs to someone else (claimed meanwhile): the turn is not stored."""


# Forget the identity's sessions that expired (their index entries and sizes). Shared by the scripts.
_PRUNE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #gone > 0 then
  redis.call('HDEL', KEYS[4], unpack(gone))
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
"""

# KEYS: meta, messages, owner's index, owner's sizes. ARGV: owner, ttl (ms), max sessions, max bytes, id.
# {0}: someone else's; {-1}: the owner has its maximum of sessions; {-2, used}: its bytes quota is used up;
# {1, has_system, system, messages...}: the session, claimed now if it was new.
_OPEN_TURN = _PRUNE + """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return {0} end
if not owner then
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return {-1} end
  local ttl = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'bytes', 0)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
  redis.call('HSET', KEYS[4], ARGV[5], 0)
  redis.call('PEXPIRE', KEYS[3], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
local used = 0
for _, v in ipairs(redis.call('HVALS', KEYS[4])) do used = used + tonumber(v) end
if used >= tonumber(ARGV[4]) then return {-2, used} end
local system = redis.call('HGET', KEYS[1], 'system')
local out = {1, system and '1' or '0', system or ''}
for _, m in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do out[#out + 1] = m end
return out
"""

# KEYS as above. ARGV: owner, ttl (ms), max stored messages, id, has system ('1'/'0'), system, messages...
# 0: someone else's (nothing written); 1: appended, TTLs and the owner's size refreshed.
_APPEND = _PRUNE + """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[2])
local size = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
if not owner then redis.call('HSET', KEYS[1], 'owner', ARGV[1]) end
if ARGV[5] == '1' then
  size = size - string.len(redis.call('HGET', KEYS[1], 'system') or '') + string.len(ARGV[6])
  redis.call('HSET', KEYS[1], 'system', ARGV[6])
end
for i = 7, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
  size = size + string.len(ARGV[i])
end
local over = redis.call('LLEN', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  for _, m in ipairs(redis.call('LRANGE', KEYS[2], 0, over - 1)) do size = size - string.len(m) end
  redis.call('LTRIM', KEYS[2], over, -1)
end
redis.call('HSET', KEYS[1], 'bytes', size)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
redis.call('HSET', KEYS[4], ARGV[4], size)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
return 1
"""

# KEYS as above. ARGV: owner, id. 0: not this owner's (or no such session); 1: deleted.
_DELETE = _PRUNE + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
return 1
"""


# KEYS: meta, messages, owner's sizes. ARGV: owner, id. {0}: not this owner's (or no such session); {-1}: the
# session does not end with an answer; {1, removed...}: the trailing assistant message and everything after the
# answer before it (the turn's own messages), removed, oldest first.
_DROP_LAST_TURN = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {0} end
local last = redis.call('LINDEX', KEYS[2], -1)
if not last or cjson.decode(last)['role'] ~= 'assistant' then return {-1} end
local removed = {}
local size = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
repeat
  local m = redis.call('RPOP', KEYS[2])
  table.insert(removed, 1, m)
  size = size - string.len(m)
  local before = redis.call('LINDEX', KEYS[2], -1)
until not before or cjson.decode(before)['role'] == 'assistant'
redis.call('HSET', KEYS[1], 'bytes', size)
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], ARGV[2], size) end
local out = {1}
for _, m in ipairs(removed) do out[#out + 1] = m end
return out
"""


@dataclass(frozen=True)
class SessionSummary:
    id: str
    title: str  # the first user message, whitespace folded, at most TITLE_CHARS characters ("" if none yet)
    message_count: int
    expires_at: int  # unix seconds


@dataclass(frozen=True)
class SessionPage:
    sessions: list[SessionSummary]
    has_more: bool


def title_of(messages: list[dict[str, Any]]) -> str:
    first = next((m for m in messages if m.get("role") == "user"), None)
    text = " ".join(content_text(first).split()) if first else ""
    return text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS - 1].rstrip() + "…"


def not_listed(after: str) -> ApiError:
    return ApiError(400, f"'after' must be the id of one of your live sessions; '{after}' is not "
                    "(it may have expired or been deleted): list again from the start",
                    code="invalid_cursor", param="after")


def quota_exceeded(message: str) -> ApiError:
    return ApiError(429, message, code="session_quota_exceeded", param="session_id",
                    headers={"Retry-After": "60"})


class SessionStore:
    def __init__(
        self,
        redis: RedisGuard,
        *,
        ttl_seconds: int,
        replica_wait_ms: int = 0,
        max_sessions_per_owner: int = 100,
        max_bytes_per_owner: int = 16 * 1024 * 1024,
    ):
        self._redis, self.ttl = redis, ttl_seconds
        # RPO ~ 0 (GATEWAY_SESSION_REPLICA_WAIT_MS): after the append, `WAIT 1 <ms>` on the same connection, so
        # a turn is acknowledged once the cross-site replica has it (or the wait timed out: logged, counted).
        self.replica_wait_ms = replica_wait_ms
        self.max_sessions, self.max_bytes = max_sessions_per_owner, max_bytes_per_owner
        self.unreplicated_writes = 0

    def _all_keys(self, session_id: str, owner: str) -> list[str]:
        return [*_keys(session_id), *_owner_keys(owner)]

    async def load(self, session_id: str, owner: str) -> Session:
        """The session if `owner` owns it, an empty new one if nobody does; 404 if someone else does.
        Reads only (a standby's read-only replica serves it)."""
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

    async def open_turn(self, session_id: str, owner: str) -> Session:
        """The session for a new turn: claimed for `owner` if it is new (atomically: of two identities racing
        on a new id, one gets it and the other a 404), within the owner's quotas (429 when over). On a
        read-only replica (a standby) the history is read and nothing is claimed."""
        if self._redis.read_only:
            return await self.load(session_id, owner)
        args: list[str | int] = [owner, self.ttl * 1000, self.max_sessions, self.max_bytes, session_id]
        try:
            reply = await self._redis.run(
                "session_load",
                lambda r: r.eval(_OPEN_TURN, 4, *self._all_keys(session_id, owner), *args))
        except RedisReadOnly:
            return await self.load(session_id, owner)
        verdict = int(reply[0])
        if verdict == 0:
            raise not_found(session_id)
        if verdict == -1:
            raise quota_exceeded(f"This identity has {self.max_sessions} live sessions, its maximum; delete one "
                                 "(DELETE /v1/sessions/{id}) or wait for one to expire")
        if verdict == -2:
            raise quota_exceeded(f"This identity's sessions hold {int(reply[1])} bytes; the quota is "
                                 f"{self.max_bytes}. Delete a session or wait for one to expire")
        system = reply[2] if reply[1] == "1" else None
        messages = [json.loads(m) for m in reply[3:]]
        return Session(session_id, owner, system=system, messages=messages,
                       exists=bool(messages) or system is not None)

    async def append(self, session: Session, new: list[dict[str, Any]], system: str | None) -> None:
        """Append a completed turn and refresh the TTLs, in one script that first checks the owner (claims
        the session if nobody owns it); SessionConflict if someone else does."""
        wait_ms = self.replica_wait_ms
        keys = self._all_keys(session.id, session.owner)
        args: list[Any] = [session.owner, self.ttl * 1000, MAX_STORED_MESSAGES, session.id,
                           "1" if system is not None else "0", system or "", *[json.dumps(m) for m in new]]

        async def write(r: Any) -> tuple[int, int | None]:
            # One connection (a plain pipeline), so a WAIT after the script covers its writes.
            async with r.pipeline(transaction=False) as pipe:
                pipe.eval(_APPEND, len(keys), *keys, *args)
                if wait_ms:
                    pipe.execute_command("WAIT", 1, wait_ms)
                results = await pipe.execute()
            return int(results[0]), (int(results[1]) if wait_ms else None)

        appended, acked = await self._redis.run("session_append", write)
        if not appended:
            log.warning("turn not stored: the session belongs to another identity", extra={"session_id": session.id})
            raise SessionConflict("the session belongs to another identity")
        if acked == 0:
            self.unreplicated_writes += 1
            log.warning("turn stored but not yet on a replica", extra={"session_id": session.id, "wait_ms": wait_ms})

    async def list_for(self, owner: str, *, limit: int, after: str | None = None) -> SessionPage:
        """The owner's live sessions, latest activity first: `limit` of them, from the one after `after` (an id
        from the previous page; 400 if it is not one of the owner's live sessions). Reads only (a standby's
        read-only replica serves it). A session touched between two pages moves to the top: paging by
        position may then show one twice or skip one, as any list that changes while it is read."""
        index, _ = _owner_keys(owner)
        now_ms = int(time.time() * 1000)

        async def read_index(r: Any) -> tuple[list[tuple[str, float]], bool] | None:
            start = 0
            if after is not None:
                rank = await r.zrevrank(index, after)
                score = await r.zscore(index, after) if rank is not None else None
                if rank is None or score is None or score <= now_ms:
                    return None
                start = rank + 1
            entries = await r.zrevrange(index, start, start + limit, withscores=True)
            live = [(sid, score) for sid, score in entries if score > now_ms]  # expired: pruned on a write
            return live[:limit], len(live) > limit

        found = await self._redis.run("session_list", read_index)
        if found is None:
            raise not_listed(str(after))
        entries, has_more = found

        async def read_sessions(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                for sid, _ in entries:
                    meta_key, msgs_key = _keys(sid)
                    pipe.hget(meta_key, "owner")
                    pipe.llen(msgs_key)
                    pipe.lrange(msgs_key, 0, TITLE_SCAN - 1)
                return list(await pipe.execute())

        replies = await self._redis.run("session_list", read_sessions) if entries else []
        sessions = []
        for i, (sid, score) in enumerate(entries):
            stored_owner, count, head = replies[3 * i: 3 * i + 3]
            if stored_owner != owner:  # deleted or expired since the index was read
                continue
            sessions.append(SessionSummary(sid, title_of([json.loads(m) for m in head]), int(count),
                                           int(score // 1000)))
        return SessionPage(sessions, has_more)

    async def drop_last_turn(self, session_id: str, owner: str) -> list[dict[str, Any]]:
        """Take the session's last turn off its end (its trailing answer and the messages it answered), so that
        it can be asked again; returns what was removed. 404 if not the owner's, 409 if there is no answer."""
        meta_key, msgs_key = _keys(session_id)
        _, sizes = _owner_keys(owner)
        reply = await self._redis.run(
            "session_drop_turn", lambda r: r.eval(_DROP_LAST_TURN, 3, meta_key, msgs_key, sizes, owner, session_id))
        if int(reply[0]) == 0:
            raise not_found(session_id)
        if int(reply[0]) == -1:
            raise ApiError(409, "The session does not end with an answer: there is no last turn to take back",
                           code="no_answer_to_drop", param="session_id")
        return [json.loads(m) for m in reply[1:]]

    async def ttl_left(self, session_id: str) -> int:
        meta_key, _ = _keys(session_id)
        return int(await self._redis.run("session_ttl", lambda r: r.ttl(meta_key)))

    async def delete(self, session_id: str, owner: str) -> None:
        keys = self._all_keys(session_id, owner)
        deleted = await self._redis.run("session_delete", lambda r: r.eval(_DELETE, 4, *keys, owner, session_id))
        if not int(deleted):
            raise not_found(session_id)
