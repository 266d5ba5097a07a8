"""Sessions: `GET /v1/sessions` (the caller's own, latest first, paged), `GET` and `DELETE /v1/sessions/{id}`,
and `DELETE /v1/sessions/{id}/turns/last` (take the last turn back, to ask it again). Only the owner sees a
session; for anyone else it does not exist."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.gateway.api.context import Caller, Ctx
from app.gateway.errors import ApiError
from app.gateway.redis_client import RedisUnavailable
from app.gateway.sessions.store import TITLE_CHARS, not_found, validate_session_id

router = APIRouter()


def _unavailable() -> ApiError:
    return ApiError(503, "Session storage is unavailable; try again shortly", code="sessions_unavailable",
                    headers={"Retry-After": "2"})


class SessionListItem(BaseModel):
    id: str
    object: Literal["session"] = "session"
    title: str = Field(description=f"The first user message, whitespace folded, at most {TITLE_CHARS} characters "
                                   "(empty while the session has none)")
    message_count: int = Field(description="Stored user and assistant messages (the system prompt aside)")
    expires_at: int = Field(description="Unix time (seconds) the session expires unless used again")


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionListItem]
    first_id: str | None
    last_id: str | None
    has_more: bool = Field(description="More sessions follow: ask again with after=last_id")


class DroppedTurn(BaseModel):
    id: str
    object: Literal["session.turn.deleted"] = "session.turn.deleted"
    messages: list[dict[str, Any]] = Field(description="What was removed, oldest first: the turn's own messages "
                                                       "and its answer")


@router.get("/v1/sessions", response_model=SessionList)
async def list_sessions(
    ctx: Ctx,
    identity: Caller,
    limit: Annotated[int, Query(ge=1, le=100, description="Sessions per page")] = 20,
    after: Annotated[str | None, Query(description="The last id of the previous page")] = None,
) -> SessionList:
    """The caller's own live sessions, latest activity first."""
    if after is not None:
        validate_session_id(after)
    try:
        page = await ctx.sessions.list_for(identity.subject, limit=limit, after=after)
    except RedisUnavailable:
        raise _unavailable() from None
    items = [SessionListItem(id=s.id, title=s.title, message_count=s.message_count, expires_at=s.expires_at)
             for s in page.sessions]
    return SessionList(data=items, first_id=items[0].id if items else None,
                       last_id=items[-1].id if items else None, has_more=page.has_more)


@router.delete("/v1/sessions/{session_id}/turns/last", response_model=DroppedTurn)
async def drop_last_turn(session_id: str, ctx: Ctx, identity: Caller) -> DroppedTurn:
    """Remove the session's last turn (its answer and the messages it answered), e.g. to regenerate it."""
    validate_session_id(session_id)
    try:
        removed = await ctx.sessions.drop_last_turn(session_id, identity.subject)
    except RedisUnavailable:
        raise _unavailable() from None
    return DroppedTurn(id=session_id, messages=removed)


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
