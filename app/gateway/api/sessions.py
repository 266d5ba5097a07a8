"""`GET` and `DELETE /v1/sessions/{id}`: only the owner sees a session; for anyone else it does not exist."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.gateway.api.context import Caller, Ctx
from app.gateway.errors import ApiError
from app.gateway.redis_client import RedisUnavailable
from app.gateway.sessions.store import not_found, validate_session_id

router = APIRouter()


def _unavailable() -> ApiError:
    return ApiError(503, "Session storage is unavailable; try again shortly", code="sessions_unavailable",
                    headers={"Retry-After": "2"})


@router.get("/v1/sessions/{session_id}")
async def get_session(
    session_id: str, ctx: Ctx, identity: Caller
) -> dict[str, Any]:
    validate_session_id(session_id)
    try:
        session = await ctx.sessions.load(session_id, identity.subject)
        if not session.exists:
            raise not_found(session_id)
        ttl = await ctx.sessions.ttl_left(session_id)
    except RedisUnavailable:
        raise _unavailable() from None
    return {
        "id": session.id,
        "object": "session",
        "system": session.system,
        "messages": session.messages,
        "expires_in": ttl,
    }


@router.delete("/v1/sessions/{session_id}")
async def delete_session(
    session_id: str, ctx: Ctx, identity: Caller
) -> dict[str, Any]:
    validate_session_id(session_id)
    try:
        await ctx.sessions.delete(session_id, identity.subject)
    except RedisUnavailable:
        raise _unavailable() from None
    return {"id": session_id, "object": "session.deleted", "deleted": True}
