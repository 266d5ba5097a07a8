"""Forwarding to vLLM with bounded retries, the four timeouts, and streams that always end cleanly.

A request may be retried on another backend until its first byte reaches the client: connection errors,
5xx answers, dropped connections and first-token timeouts all count. Once a streamed byte has gone out,
a failure ends the stream with an SSE error event in OpenAI's shape plus `data: [DONE]`.
Streams are forwarded event by event (never half an event), so that error event is always well formed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx

from app.gateway.backends.pool import Backend, BackendPool
from app.gateway.backends.routing import choose_backend
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
    try:
        data = json.loads(content)
    except ValueError:
        return error_body(status, content.decode(errors="replace")[:500] or "upstream error")
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data
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
                    piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if piece:
                        self.text.append(piece)
        return bool(choices) or not has_usage or self.forward_usage_chunk


class Proxy:
    def __init__(
        self,
        client: httpx.AsyncClient,
        pool: BackendPool,
        metrics: Metrics,
        *,
        connect_timeout: float,
        first_token_timeout: float,
        idle_timeout: float,
        total_timeout: float,
        retry_attempts: int,
    ):
        self.client, self.pool, self.metrics = client, pool, metrics
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self.retry_attempts = retry_attempts

    async def _attempts(self, affinity: str | None, attempt: Callable[[Backend], Awaitable[T]]) -> T:
        """Run `attempt` on up to `retry_attempts` distinct backends until one does not raise UpstreamFailure."""
        tried: list[Backend] = []
        failure: UpstreamFailure | None = None
        for _ in range(self.retry_attempts):
            backend = choose_backend(self.pool.all(), session_id=affinity, exclude=tried)
            if backend is None:
                break
            if failure is not None:
                self.metrics.retries.labels(failure.kind).inc()
                log.info("retrying on another backend", extra={"backend": backend.address, "after": str(failure)})
            tried.append(backend)
            try:
                result = await attempt(backend)
            except UpstreamFailure as err:
                self.pool.record_failure(backend, err.kind)
                log.warning("upstream attempt failed", extra={"backend": backend.address, "error": str(err)})
                failure = err
                continue
            self.pool.record_success(backend)
            return result
        if failure is None:
            raise ApiError(503, "No inference backend is available", code="no_backend")
        status = 504 if failure.kind == "timeout" else 502
        raise ApiError(status, f"Inference backends failed ({failure})", code="upstream_unavailable")

    def _timeout(self, read: float | None) -> httpx.Timeout:
        c = self.connect_timeout
        return httpx.Timeout(connect=c, read=read, write=c, pool=c)

    # ---- non-streaming -------------------------------------------------------------------------------

    async def complete(
        self, path: str, body: dict[str, Any], headers: dict[str, str], affinity: str | None
    ) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + self.total_timeout

        async def attempt(backend: Backend) -> tuple[int, dict[str, Any]]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError(504, "Request exceeded the total timeout", code="timeout")
            self.pool.acquire(backend)
            try:
                resp = await self.client.post(
                    backend.base_url + path, json=body, headers=headers, timeout=self._timeout(remaining)
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
                raise UpstreamFailure("connect", repr(err)) from None
            except httpx.ReadTimeout:
                self.pool.record_failure(backend, "timeout")
                raise ApiError(504, "The model did not answer within the total timeout", code="timeout") from None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
                raise UpstreamFailure("dropped", repr(err)) from None
            finally:
                self.pool.release(backend)
            if resp.status_code >= 500:
                raise UpstreamFailure("5xx", f"HTTP {resp.status_code}")
            if resp.status_code >= 400:
                return resp.status_code, _normalise_error(resp.status_code, resp.content)
            try:
                return resp.status_code, resp.json()
            except ValueError:
                raise UpstreamFailure("5xx", "invalid JSON from backend") from None

        return await self._attempts(affinity, attempt)

    # ---- streaming -----------------------------------------------------------------------------------

    async def open_stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str], affinity: str | None, account: StreamAccount
    ) -> UpstreamStream | UpstreamClientError:
        """Connect and wait for the first event (retrying elsewhere); the rest is read by `UpstreamStream`."""
        started = time.monotonic()
        deadline = started + self.total_timeout

        async def attempt(backend: Backend) -> UpstreamStream | UpstreamClientError:
            budget = min(self.first_token_timeout, deadline - time.monotonic())
            if budget <= 0:
                raise ApiError(504, "Request exceeded the total timeout", code="timeout")
            request = self.client.build_request(
                "POST", backend.base_url + path, json=body, headers=headers, timeout=self._timeout(None)
            )
            self.pool.acquire(backend)
            resp: httpx.Response | None = None
            try:
                async with asyncio.timeout(budget):
                    resp = await self.client.send(request, stream=True)
                    if resp.status_code >= 400:
                        content = await resp.aread()
                        await resp.aclose()
                        self.pool.release(backend)
                        if resp.status_code >= 500:
                            raise UpstreamFailure("5xx", f"HTTP {resp.status_code}")
                        return UpstreamClientError(resp.status_code, _normalise_error(resp.status_code, content))
                    events = sse_events(resp.aiter_raw())
                    first = await anext(events)
            except BaseException as err:
                if resp is not None and not resp.is_closed:
                    with anyio.CancelScope(shield=True):
                        await resp.aclose()
                if not isinstance(err, UpstreamFailure):
                    self.pool.release(backend)
                if isinstance(err, TimeoutError):
                    raise UpstreamFailure("timeout", f"no first token within {budget:.1f}s") from None
                if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                    raise UpstreamFailure("connect", repr(err)) from None
                if isinstance(err, httpx.TransportError | StopAsyncIteration):
                    raise UpstreamFailure("dropped", repr(err)) from None
                raise
            return UpstreamStream(self, backend, resp, events, first, account, started, deadline)

        return await self._attempts(affinity, attempt)


class UpstreamStream:
    """An open upstream SSE stream whose first event has arrived. `close()` is idempotent and safe to shield."""

    def __init__(
        self,
        proxy: Proxy,
        backend: Backend,
        resp: httpx.Response,
        events: AsyncIterator[bytes],
        first: bytes,
        account: StreamAccount,
        started: float,
        deadline: float,
    ):
        self._proxy, self.backend, self._resp, self._events = proxy, backend, resp, events
        self._first, self.account = first, account
        self.started, self._deadline = started, deadline
        self.first_token_at = time.monotonic()
        self.completed = False
        self._closed = False

    async def relay(self, before_done: Callable[[], Awaitable[bytes | None]] | None = None) -> AsyncIterator[bytes]:
        """The events for the client; a failure after the first one becomes an error event plus [DONE].

        `before_done` runs once the answer is complete and before `data: [DONE]` goes out (shielded from
        a client that leaves meanwhile): what a client was told is done has been dealt with (e.g. stored).
        It may return one more event to send before [DONE].
        """
        if self.account.observe(self._first) and not self.account.done:
            yield self._first
        try:
            while not self.account.done:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("total")
                try:
                    async with asyncio.timeout(min(self._proxy.idle_timeout, remaining)):
                        event = await anext(self._events)
                except StopAsyncIteration:
                    break
                if self.account.observe(event) and not self.account.done:
                    yield event
        except TimeoutError:
            self._proxy.pool.record_failure(self.backend, "timeout")
            yield sse_error_event("The model stopped sending tokens (timeout)", code="timeout", status=504)
            return
        except httpx.TransportError as err:
            self._proxy.pool.record_failure(self.backend, "dropped")
            log.warning("stream cut by the backend", extra={"backend": self.backend.address, "error": repr(err)})
            yield sse_error_event("The inference backend failed mid-stream; the answer is incomplete")
            return
        if not self.account.done:
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
        self._proxy.pool.release(self.backend)
        await self._resp.aclose()  # for an unfinished stream this makes vLLM abort the request
