"""Forwarding to vLLM with bounded retries, the four timeouts, and streams that always end cleanly.

A request may be retried on another backend until its first byte reaches the client: connection errors,
5xx answers, dropped connections and first-token timeouts all count. Once a streamed byte has gone out,
a failure ends the stream with an SSE error event in OpenAI's shape plus `data: [DONE]`.
Streams are relayed as the upstream's bytes, cut only at event boundaries (never half an event), so that
error event is always well formed; a block is parsed only where it holds the usage chunk, `[DONE]` or, for a
session, the answer's text (`StreamAccount.scan`). The upstream client is one shared aiohttp session.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import anyio

from app.gateway.backends.pool import Backend, BackendPool
from app.gateway.backends.routing import Route, Router
from app.gateway.errors import ApiError, error_body, sse_error_event
from app.gateway.logging import log
from app.gateway.metrics import Metrics

T = TypeVar("T")


class UpstreamFailure(Exception):
    """A failure before any byte reached the client: safe to retry elsewhere."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass
class UpstreamClientError:
    """vLLM refused the request (4xx): the client's fault, passed through in OpenAI's shape."""

    status: int
    body: dict[str, Any]


def _normalise_error(status: int, content: bytes) -> dict[str, Any]:
    """vLLM's refusal in OpenAI's shape. vLLM 0.32 says `"type": "BadRequestError", "code": 400`; OpenAI's
    clients expect the type for the status (`invalid_request_error`) and a string code or null."""
    try:
        data = json.loads(content)
    except ValueError:
        return error_body(status, content.decode(errors="replace")[:500] or "upstream error")
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        code, param = error.get("code"), error.get("param")
        return error_body(status, str(error.get("message") or "upstream error")[:2000],
                          code=code if isinstance(code, str) else None,
                          param=param if isinstance(param, str) else None)
    if isinstance(data, dict) and "message" in data:  # older vLLM: {"object": "error", "message": ...}
        return error_body(status, str(data["message"]), param=data.get("param"))
    return error_body(status, str(data)[:500])


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Re-frame a byte stream into complete SSE events (each ending in a blank line)."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) >= 0:
            event, buffer = buffer[: end + 2], buffer[end + 2 :]
            yield event
    if buffer.strip():
        yield buffer.rstrip(b"\n") + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"


def split_block(buffer: bytes) -> tuple[bytes, bytes]:
    """(the complete events at the front of `buffer`, the partial event after them)."""
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n") if not buffer.endswith(b"\r") else (
            buffer[:-1].replace(b"\r\n", b"\n") + b"\r")
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return b"", buffer
    return buffer[: end + 2], buffer[end + 2 :]


def event_data(event: bytes) -> bytes:
    return b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))


@dataclass
class StreamAccount:
    """What we learn from the stream: done or not, usage (final chunk only), and the text if a session needs it."""

    collect_text: bool
    forward_usage_chunk: bool
    done: bool = False
    usage: dict[str, Any] | None = None
    text: list[str] = field(default_factory=list)
    # The first choice's tool calls, stitched from their deltas by `index` (id and name arrive once,
    # arguments in fragments), for a session to store; the client gets the deltas untouched.
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def _stitch(self, deltas: list[Any]) -> None:
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            call = self.tool_calls.setdefault(int(delta.get("index") or 0),
                                              {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] = delta.get("id") or call["id"]
            function = delta.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""

    def answer(self) -> dict[str, Any]:
        """The assistant message the stream made (OpenAI's shape), as a session stores it."""
        text = "".join(self.text)
        if not self.tool_calls:
            return {"role": "assistant", "content": text}
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {"role": "assistant", "content": text or None, "tool_calls": calls}

    def observe(self, event: bytes) -> bool:
        """Returns whether to forward the event to the client."""
        data = event_data(event)
        if data == b"[DONE]":
            self.done = True
            return True
        has_usage = b'"usage":{' in data or b'"usage": {' in data
        if not (self.collect_text or has_usage):
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            return True
        if not isinstance(chunk, dict):
            return True
        if has_usage and isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if self.collect_text:
            for choice in choices:
                if choice.get("index", 0) == 0:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") or choice.get("text")
                    if piece:
                        self.text.append(piece)
                    if delta.get("tool_calls"):
                        self._stitch(delta["tool_calls"])
        return bool(choices) or not has_usage or self.forward_usage_chunk

    def scan(self, block: bytes) -> bytes:
        """A block of complete events -> the bytes to forward. Only a block that may hold `[DONE]`, the usage
        chunk or (for a session) text is taken apart; every other block passes through as it came."""
        if not self.collect_text and b"[DONE]" not in block and b'"usage":{' not in block \
                and b'"usage": {' not in block:
            return block
        out: list[bytes] = []
        for event in block.split(b"\n\n"):
            if not event:
                continue
            event += b"\n\n"
            if self.observe(event) and not self.done:  # [DONE] itself is sent by the relay, after before_done
                out.append(event)
            if self.done:
                break
        return b"".join(out)


def _total(seconds: float | None, connect: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds, connect=connect, sock_connect=connect)


_CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def _connect_kind(err: BaseException) -> str:
    """A refused connection is the backend's answer; a connect timeout may be our own loop running late."""
    return "connect_timeout" if isinstance(err, aiohttp.ConnectionTimeoutError) else "connect"


class Proxy:
    def __init__(
        self,
        client: aiohttp.ClientSession,
        pool: BackendPool,
        metrics: Metrics,
        *,
        router: Router,
        connect_timeout: float,
        first_token_timeout: float,
        idle_timeout: float,
        total_timeout: float,
        retry_attempts: int,
    ):
        self.client, self.pool, self.metrics, self.router = client, pool, metrics, router
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self.retry_attempts = retry_attempts
        self._stream_timeout = _total(None, connect_timeout)  # streams: our own first-token/idle/total clocks

    async def _attempts(self, route: Route, attempt: Callable[[Backend], Awaitable[T]]) -> T:
        """Run `attempt` on up to `retry_attempts` backends until one does not raise UpstreamFailure: each backend
        once, then again one still healthy whose connection was dropped before it answered (with one backend
        left, a kept-alive connection it closed as we reused it must not fail the request). The router picks
        each; an attempt's prompt counts as its backend's queued prefill until the attempt returns (a stream's
        first event, or the whole answer) or fails."""
        tried: list[Backend] = []
        dropped: list[Backend] = []
        failure: UpstreamFailure | None = None
        for _ in range(self.retry_attempts):
            decision = self.router.choose(route, exclude=tried)
            if decision is None:
                decision = self.router.choose(route, among=[b for b in dropped if b.healthy])
                if decision is None:
                    break
                dropped.remove(decision.backend)
            backend = decision.backend
            if failure is not None:
                self.metrics.retries.labels(failure.kind).inc()
                log.info("retrying the request", extra={"backend": backend.address, "after": str(failure)})
            tried.append(backend)
            queued = self.router.started(decision, route)
            try:
                result = await attempt(backend)
            except UpstreamFailure as err:
                self.pool.record_failure(backend, err.kind)
                if err.kind == "dropped":
                    dropped.append(backend)
                log.warning("upstream attempt failed", extra={"backend": backend.address, "error": str(err)})
                failure = err
                continue
            finally:
                self.router.prefilled(backend, queued)
            self.pool.record_success(backend)
            return result
        if failure is None:
            raise ApiError(503, "No inference backend is available", code="no_backend")
        status = 504 if failure.kind == "timeout" else 502
        raise ApiError(status, f"Inference backends failed ({failure})", code="upstream_unavailable")

    # ---- non-streaming -------------------------------------------------------------------------------

    async def complete(
        self, path: str, body: bytes, headers: dict[str, str], route: Route
    ) -> tuple[int, dict[str, Any], bytes]:
        """(status, the parsed answer, its bytes as vLLM sent them) — a 4xx normalised to OpenAI's shape."""
        deadline = time.monotonic() + self.total_timeout

        async def attempt(backend: Backend) -> tuple[int, dict[str, Any], bytes]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError(504, "Request exceeded the total timeout", code="timeout")
            self.pool.acquire(backend)
            try:
                async with self.client.post(
                    backend.base_url + path, data=body, headers=headers,
                    timeout=_total(remaining, self.connect_timeout),
                ) as resp:
                    status, content = resp.status, await resp.read()
            except _CONNECT_ERRORS as err:
                raise UpstreamFailure(_connect_kind(err), repr(err)) from None
            except TimeoutError:
                self.pool.record_failure(backend, "timeout")
                raise ApiError(504, "The model did not answer within the total timeout", code="timeout") from None
            except aiohttp.ClientError as err:
                raise UpstreamFailure("dropped", repr(err)) from None
            finally:
                self.pool.release(backend)
            if status >= 500:
                raise UpstreamFailure("5xx", f"HTTP {status}")
            if status >= 400:
                return status, _normalise_error(status, content), b""
            try:
                data = json.loads(content)
            except ValueError:
                raise UpstreamFailure("5xx", "invalid JSON from backend") from None
            if not isinstance(data, dict):
                raise UpstreamFailure("5xx", "invalid JSON from backend")
            return status, data, content

        return await self._attempts(route, attempt)

    # ---- streaming -----------------------------------------------------------------------------------

    async def open_stream(
        self, path: str, body: bytes, headers: dict[str, str], route: Route, account: StreamAccount
    ) -> UpstreamStream | UpstreamClientError:
        """Connect and wait for the first event (retrying elsewhere); the rest is read by `UpstreamStream`."""
        started = time.monotonic()
        deadline = started + self.total_timeout

        async def attempt(backend: Backend) -> UpstreamStream | UpstreamClientError:
            budget = min(self.first_token_timeout, deadline - time.monotonic())
            if budget <= 0:
                raise ApiError(504, "Request exceeded the total timeout", code="timeout")
            self.pool.acquire(backend)
            resp: aiohttp.ClientResponse | None = None
            released = False
            try:
                async with asyncio.timeout(budget):
                    resp = await self.client.post(
                        backend.base_url + path, data=body, headers=headers, timeout=self._stream_timeout
                    )
                    if resp.status >= 400:
                        content = await resp.read()
                        resp.release()
                        self.pool.release(backend)
                        released = True
                        if resp.status >= 500:
                            raise UpstreamFailure("5xx", f"HTTP {resp.status}")
                        return UpstreamClientError(resp.status, _normalise_error(resp.status, content))
                    first, rest = b"", b""
                    while not first:
                        chunk = await resp.content.readany()
                        if not chunk:
                            raise UpstreamFailure("dropped", "the stream ended before its first event")
                        first, rest = split_block(rest + chunk)
            except BaseException as err:
                if resp is not None:
                    resp.close()
                if not released:
                    self.pool.release(backend)
                if isinstance(err, _CONNECT_ERRORS):
                    raise UpstreamFailure(_connect_kind(err), repr(err)) from None
                if isinstance(err, TimeoutError):
                    raise UpstreamFailure("timeout", f"no first token within {budget:.1f}s") from None
                if isinstance(err, aiohttp.ClientError):
                    raise UpstreamFailure("dropped", repr(err)) from None
                raise
            return UpstreamStream(self, backend, resp, first, rest, account, started, deadline)

        return await self._attempts(route, attempt)


class UpstreamStream:
    """An open upstream SSE stream whose first event has arrived. `close()` is idempotent and safe to shield.

    The idle and total timeouts are one timer per stream that wakes only when it could have expired (reads
    just note the time), and ends the read with a TimeoutError: no timer set and cancelled per chunk.
    """

    def __init__(
        self,
        proxy: Proxy,
        backend: Backend,
        resp: aiohttp.ClientResponse,
        first: bytes,
        rest: bytes,
        account: StreamAccount,
        started: float,
        deadline: float,
    ):
        self._proxy, self.backend, self._resp = proxy, backend, resp
        self._first, self._rest, self.account = first, rest, account
        self.started, self._deadline = started, deadline
        self.first_token_at = time.monotonic()
        self.completed = False
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._last_read = self._loop.time()
        self._deadline_loop = self._loop.time() + (deadline - time.monotonic())
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False

    def _arm(self) -> None:
        at = min(self._last_read + self._proxy.idle_timeout, self._deadline_loop)
        self._timer = self._loop.call_at(at, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._deadline_loop or now - self._last_read >= self._proxy.idle_timeout:
            self._timed_out = True
            self._resp.content.set_exception(TimeoutError("idle" if now < self._deadline_loop else "total"))
        elif not self._closed:
            self._arm()

    async def relay(self, before_done: Callable[[], Awaitable[bytes | None]] | None = None) -> AsyncIterator[bytes]:
        """The events for the client; a failure after the first one becomes an error event plus [DONE].

        `before_done` runs once the answer is complete and before `data: [DONE]` goes out (shielded from
        a client that leaves meanwhile): what a client was told is done has been dealt with (e.g. stored).
        It may return one more event to send before [DONE].
        """
        account = self.account
        out = account.scan(self._first)
        if out:
            yield out
        content, rest, loop = self._resp.content, self._rest, self._loop
        self._arm()
        try:
            while not account.done:
                chunk = await content.readany()
                if not chunk:
                    break
                self._last_read = loop.time()
                block, rest = split_block(rest + chunk if rest else chunk)
                if block:
                    out = account.scan(block)
                    if out:
                        yield out
        except TimeoutError:
            self._proxy.pool.record_failure(self.backend, "timeout")
            yield sse_error_event("The model stopped sending tokens (timeout)", code="timeout", status=504)
            return
        except aiohttp.ClientError as err:
            self._proxy.pool.record_failure(self.backend, "dropped")
            log.warning("stream cut by the backend", extra={"backend": self.backend.address, "error": repr(err)})
            yield sse_error_event("The inference backend failed mid-stream; the answer is incomplete")
            return
        finally:
            if self._timer is not None:
                self._timer.cancel()
        if not account.done:
            if rest.strip():  # a last event without its blank line
                out = account.scan(rest.rstrip(b"\n") + b"\n\n")
                if out:
                    yield out
        if not account.done:
            self._proxy.pool.record_failure(self.backend, "dropped")
            yield sse_error_event("The inference backend ended the stream early; the answer is incomplete")
            return
        self.completed = True
        if before_done is not None:
            with anyio.CancelScope(shield=True):
                extra = await before_done()
            if extra:
                yield extra
        yield DONE_EVENT

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._proxy.pool.release(self.backend)
        if self.completed:
            self._resp.release()  # read to [DONE]: the connection goes back to the pool
        else:
            self._resp.close()  # an unfinished stream: closing the connection makes vLLM abort the request
