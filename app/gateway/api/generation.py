"""`POST /v1/chat/completions` and `POST /v1/completions`."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.gateway.api.body import parse_model, read_json_object
from app.gateway.api.context import GatewayContext, context_and_caller
from app.gateway.api.disconnect import unless_client_leaves
from app.gateway.api.structured import check_structured
from app.gateway.auth.identity import Identity
from app.gateway.errors import ApiError
from app.gateway.logging import log, request_id_var
from app.gateway.proxy import StreamAccount, UpstreamClientError, UpstreamStream
from app.gateway.redis_client import RedisUnavailable
from app.gateway.schemas import ChatCompletionRequest, CompletionRequest, request_body
from app.gateway.sessions.history import answer_message, compose, content_text, message_chars
from app.gateway.sessions.store import Session, validate_session_id

router = APIRouter()

STREAM_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
SESSION_STORED_HEADER = "X-Session-Stored"  # "false" on a 200 whose turn could not be saved
CLIENT_CLOSED = 499  # as Nginx logs a request whose client closed the connection first


def upstream_body(body: dict[str, Any]) -> bytes:
    """The request for vLLM, serialised once (compact, UTF-8; what it gets is what we checked)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def resolve_model(ctx: GatewayContext, requested: str | None) -> str:
    served = [ctx.settings.model] if ctx.settings.model else [str(m.get("id")) for m in ctx.pool.models()]
    if requested is None:
        if not served:
            raise ApiError(503, "No inference backend is available", code="no_backend")
        return served[0]
    if requested not in served:
        listed = ", ".join(served) or "none right now"
        raise ApiError(404, f"The model '{requested}' does not exist; available: {listed}",
                       code="model_not_found", param="model")
    return requested


def check_max_tokens(ctx: GatewayContext, **values: int | None) -> None:
    cap = ctx.settings.max_tokens_cap
    for name, value in values.items():
        if value is not None and value > cap:
            raise ApiError(400, f"{name} is {value}; the maximum here is {cap}", code="max_tokens_too_large",
                           param=name)


def always_max_tokens(ctx: GatewayContext, body: dict[str, Any], *names: str) -> None:
    """vLLM always gets a bound: the request's own (already checked against the cap), or the cap. Without
    it only the model's length bounds an answer (`ignore_eos` or a model that never stops)."""
    if all(body.get(name) is None for name in names):
        body[names[0]] = ctx.settings.max_tokens_cap


def check_sequences(ctx: GatewayContext, sequences: int, param: str) -> int:
    """n x prompts: what one request makes vLLM generate at once. Bounded, and counted (each sequence holds
    a concurrency slot), so one request cannot take more of the GPUs than the caller's limit."""
    limit = min(ctx.settings.max_sequences_per_request, ctx.settings.rate_limit_concurrent)
    if sequences > limit:
        raise ApiError(400, f"This request asks for {sequences} sequences (n x prompts); the limit is {limit}",
                       code="too_many_sequences", param=param)
    return sequences


def check_input_size(ctx: GatewayContext, chars: int) -> None:
    limit = ctx.settings.max_content_chars
    if chars > limit:
        raise ApiError(400, f"The input has {chars} characters; the limit is {limit}", code="input_too_long",
                       param="messages")


class SSEResponse(StreamingResponse):
    """A streaming response whose upstream is closed however it ends (done, error, client gone)."""

    def __init__(self, stream: UpstreamStream, before_done: Any, finish: Any, headers: dict[str, str]):
        super().__init__(stream.relay(before_done), media_type="text/event-stream", headers=headers)
        self._stream, self._finish = stream, finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                log.info("client disconnected mid-stream", extra={"backend": self._stream.backend.address})
            return message

        try:
            await super().__call__(scope, watched_receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stream.close()
                await self._finish(self._stream)


async def _generate(
    request: Request,
    ctx: GatewayContext,
    identity: Identity,
    *,
    path: str,
    body: dict[str, Any],
    model: str,
    stream: bool,
    session: Session | None,
    new_messages: list[dict[str, Any]],
    system: str | None,
    held: AsyncExitStack,
) -> Any:
    """Relay the request to vLLM. `held` holds the caller's concurrency slots: its owner (the route's
    `async with`) releases them however this ends, unless a stream takes them over (then the stream's end
    releases them)."""
    request.state.model = model
    headers = {"X-Request-Id": request_id_var.get(), "Content-Type": "application/json"}
    route = ctx.proxy.router.route(body, session.id if session else None)
    response_headers = {"X-Request-Id": request_id_var.get()}
    if session is not None:
        response_headers["X-Session-Id"] = session.id

    async def remember(answer: dict[str, Any]) -> bool:
        """Store the turn; False (counted, logged) if it could not be. Runs before the client is told done."""
        if session is None:
            return True
        if session.unavailable:  # its owner could not be checked: writing could touch another's session
            ctx.metrics.turns_not_stored.inc()
            return False
        try:
            await ctx.sessions.append(session, [*new_messages, answer], system)
        except RedisUnavailable:
            ctx.metrics.turns_not_stored.inc()
            log.warning("turn not stored: redis unavailable", extra={"session_id": session.id})
            return False
        return True

    def count_usage(usage: dict[str, Any] | None) -> None:
        if usage:
            ctx.metrics.tokens.labels("prompt", model).inc(int(usage.get("prompt_tokens") or 0))
            ctx.metrics.tokens.labels("completion", model).inc(int(usage.get("completion_tokens") or 0))

    if not stream:
        answered, result = await unless_client_leaves(
            request.receive, ctx.proxy.complete(path, upstream_body(body), headers, route))
        await held.aclose()  # vLLM is done: storing the turn need not hold the caller's slots
        if result is None or not answered:
            log.info("client disconnected before the answer: request cancelled")
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the access log and metrics do
        status, data, raw = result
        if status == 200:
            count_usage(data.get("usage"))
            choices = data.get("choices") or [{}]
            if not await remember(answer_message((choices[0] or {}).get("message") or {})):
                response_headers[SESSION_STORED_HEADER] = "false"
            # vLLM's own bytes: parsed above for usage and the session, never serialised again
            return Response(raw, status_code=status, headers=response_headers, media_type="application/json")
        return JSONResponse(data, status_code=status, headers=response_headers)

    client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    account = StreamAccount(collect_text=session is not None, forward_usage_chunk=client_wants_usage)
    answered, opened = await unless_client_leaves(
        request.receive, ctx.proxy.open_stream(path, upstream_body(body), headers, route, account))
    if opened is None or not answered:  # gone while vLLM queued or prefilled: nothing was sent yet
        log.info("client disconnected before the first token: request cancelled")
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(opened, UpstreamClientError):
        return JSONResponse(opened.body, status_code=opened.status, headers=response_headers)
    ctx.metrics.ttft.labels(model).observe(opened.first_token_at - opened.started)
    ctx.metrics.active_streams.inc()
    streaming = held.pop_all()  # the slots now live as long as the stream, not the route

    async def store_before_done() -> bytes | None:
        """The answer is complete: store the turn before `[DONE]`; if that fails, say so in the stream."""
        if await remember(opened.account.answer()):
            return None
        assert session is not None
        return session_not_stored_event(session.id)

    async def finish(done: UpstreamStream) -> None:
        ctx.metrics.active_streams.dec()
        await streaming.aclose()
        count_usage(done.account.usage)
        if not done.completed:
            log.info("stream ended before completion", extra={"backend": done.backend.address})

    return SSEResponse(opened, store_before_done, finish, {**STREAM_HEADERS, **response_headers})


def session_not_stored_event(session_id: str) -> bytes:
    """A chunk with no choices (clients skip it, like the usage chunk) that says the turn was not saved."""
    notice = {"object": "chat.completion.chunk", "choices": [],
              "session": {"id": session_id, "stored": False,
                          "message": "This turn was answered but not saved to the session (storage unavailable)"}}
    return f"data: {json.dumps(notice)}\n\n".encode()


def _session_id(request: Request, raw: dict[str, Any]) -> str | None:
    from_body = raw.pop("session_id", None)
    value = request.headers.get("x-session-id") or from_body
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "session_id must be a string", code="invalid_session_id", param="session_id")
    return validate_session_id(value)


@router.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Any:
    ctx, identity = await context_and_caller(request)
    raw = await read_json_object(request, ctx.settings.max_body_bytes)
    session_id = _session_id(request, raw)
    parsed = parse_model(ChatCompletionRequest, raw)
    if len(parsed.messages) > ctx.settings.max_messages:
        raise ApiError(400, f"{len(parsed.messages)} messages; the limit is {ctx.settings.max_messages}",
                       code="too_many_messages", param="messages")
    messages = [m.model_dump(exclude_none=True) for m in parsed.messages]
    check_input_size(ctx, sum(message_chars(m) for m in messages))
    check_structured(ctx.settings, parsed, raw)
    check_max_tokens(ctx, max_tokens=parsed.max_tokens, max_completion_tokens=parsed.max_completion_tokens)
    always_max_tokens(ctx, raw, "max_tokens", "max_completion_tokens")
    sequences = check_sequences(ctx, parsed.n, "n")
    model = resolve_model(ctx, parsed.model)

    async with AsyncExitStack() as held:
        held.push_async_callback((await ctx.limiter.admit(identity.subject, sequences)).release)
        session: Session | None = None
        sent = messages
        system = next((content_text(m) for m in messages if m["role"] in ("system", "developer")), None)
        new_messages = [m for m in messages if m["role"] not in ("system", "developer")]
        if session_id is not None:
            try:
                # Claims a new id for this caller atomically (404 if another holds it; 429 over quota).
                session = await ctx.sessions.open_turn(session_id, identity.subject)
            except RedisUnavailable:
                log.warning("session unavailable: answering without history", extra={"session_id": session_id})
                session = Session(session_id, identity.subject, unavailable=True)
            if not session.unavailable:
                sent = compose(
                    stored_system=session.system,
                    history=session.messages,
                    request_messages=messages,
                    budget=ctx.settings.history_token_budget,
                )
        body = {**raw, "model": model, "messages": sent}
        return await _generate(
            request, ctx, identity, path="/v1/chat/completions", body=body, model=model, stream=parsed.stream,
            session=session, new_messages=new_messages, system=system, held=held,
        )


@router.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
async def completions(request: Request) -> Any:
    ctx, identity = await context_and_caller(request)
    raw = await read_json_object(request, ctx.settings.max_body_bytes)
    if request.headers.get("x-session-id") or "session_id" in raw:
        raise ApiError(400, "Sessions apply to /v1/chat/completions only", code="invalid_session_id",
                       param="session_id")
    parsed = parse_model(CompletionRequest, raw)
    prompt = parsed.prompt
    # str | list[str] | list[int] (one tokenised prompt) | list[list[int]]
    prompts: list[Any] = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else list(prompt)
    check_input_size(ctx, sum(len(p) for p in prompts))
    check_max_tokens(ctx, max_tokens=parsed.max_tokens)
    always_max_tokens(ctx, raw, "max_tokens")
    sequences = check_sequences(ctx, parsed.n * len(prompts), "n" if len(prompts) == 1 else "prompt")
    model = resolve_model(ctx, parsed.model)
    async with AsyncExitStack() as held:
        held.push_async_callback((await ctx.limiter.admit(identity.subject, sequences)).release)
        return await _generate(
            request, ctx, identity, path="/v1/completions", body={**raw, "model": model}, model=model,
            stream=parsed.stream, session=None, new_messages=[], system=None, held=held,
        )
