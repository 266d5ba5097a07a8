"""A closed-loop HTTP/1.1 load generator on raw asyncio protocols (uvloop): cheap enough to drive 1,000 streams.

Each of `concurrency` keep-alive connections sends one request, reads the whole answer, records it and
sends the next, until the point's duration is up (requests in flight then finish). Per request: status,
end-to-end latency, and for streams the time to the first content token and the number of SSE events.
No HTTP library: a status line, headers, then `Content-Length` or chunked framing; SSE events are counted
as `data:` lines, TTFT is the first `"content":"x` / `"text":"x` in the body.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import cast

FIRST_TOKEN = re.compile(rb'"(?:content|text)":\s*"[^"]')
CHUNKED_END = b"\r\n0\r\n\r\n"


@dataclass
class Result:
    status: int
    latency: float
    ttft: float | None
    events: int
    retry_after: float | None = None  # a refusal's Retry-After header, in seconds


@dataclass
class PointResult:
    concurrency: int
    elapsed: float
    results: list[Result] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _Conn(asyncio.Protocol):
    __slots__ = ("chunked", "done", "end", "events", "head", "length", "lost", "received", "retry_after", "start",
                 "status", "stream", "tail", "transport", "ttft")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[Result] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection closed mid-response: {exc!r}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, raw: bytes, stream: bool) -> asyncio.Future[Result]:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.head = b""
        self.status = 0
        self.stream = stream
        self.chunked = False
        self.length = -1
        self.received = 0
        self.events = 0
        self.ttft: float | None = None
        self.tail = b""
        self.end = b""
        self.retry_after: float | None = None
        self.start = time.perf_counter()
        self.transport.write(raw)
        return self.done

    def data_received(self, data: bytes) -> None:
        if self.done is None or self.done.done():
            return
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].lower(), self.head[end + 4:]
            self.status = int(head[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                self.length = int(head[at + 15: line_end if line_end >= 0 else None])
            at = head.find(b"retry-after:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                self.retry_after = float(head[at + 12: line_end if line_end >= 0 else None])
        if self.stream:
            joined = self.tail + data
            self.events += joined.count(b"data:")
            if self.ttft is None and FIRST_TOKEN.search(joined):
                self.ttft = time.perf_counter() - self.start
            self.tail = joined[-6:]
        if self.chunked:
            self.end = (self.end + data)[-7:]
            if self.end == CHUNKED_END:
                self._finish()
        else:
            self.received += len(data)
            if self.received >= self.length:
                self._finish()

    def _finish(self) -> None:
        assert self.done is not None
        now = time.perf_counter()
        self.done.set_result(Result(self.status, now - self.start, self.ttft, self.events, self.retry_after))


def request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_point(
    host: str, port: int, raw: bytes, *, concurrency: int, duration: float, stream: bool,
    drain_timeout: float = 60.0, honour_retry_after: bool = False,
) -> PointResult:
    """`concurrency` connections in a closed loop for `duration` seconds; in-flight requests then finish.
    With `honour_retry_after`, a connection refused with Retry-After waits that long (at most 1 s) before its
    next request, as OpenAI's clients do; otherwise refusals would come back as fast as they are answered."""
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    opened = await asyncio.gather(
        *(loop.create_connection(_Conn, host, port) for _ in range(concurrency)), return_exceptions=True
    )
    point = PointResult(concurrency, 0.0)
    for item in opened:
        if isinstance(item, BaseException):
            point.errors.append(f"connect: {item!r}")
        else:
            conns.append(item[1])
    start = time.perf_counter()
    stop_at = start + duration

    async def worker(conn: _Conn) -> None:
        while time.perf_counter() < stop_at:
            try:
                res = await asyncio.wait_for(conn.send(raw, stream), drain_timeout)
            except (ConnectionError, TimeoutError) as err:
                point.errors.append(repr(err))
                return
            point.results.append(res)
            if res.status != 200:
                point.errors.append(f"HTTP {res.status}")
                if honour_retry_after and res.retry_after:
                    await asyncio.sleep(min(res.retry_after, 1.0, max(0.0, stop_at - time.perf_counter())))

    await asyncio.gather(*(worker(c) for c in conns))
    point.elapsed = time.perf_counter() - start
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return point
