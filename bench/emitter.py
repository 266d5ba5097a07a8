"""A minimal OpenAI-compatible backend for benchmarks only: it answers at once, with a fixed number of tokens.

`python -m bench.emitter --port P [--model NAME] [--delay-ms D] [--paced MS ...]`. Never used by tests that claim
to test vLLM.

- `POST /v1/chat/completions` and `/v1/completions`: `max_tokens` tokens (default 16) of the word "tok";
  streamed as one SSE event per token (vLLM's chunk shape, role in the first, a usage chunk when
  `stream_options.include_usage`, then `data: [DONE]`) or as one JSON body.
- Per-token delay: from the model asked for, never from a request field (the gateway's allowlist refuses
  fields it does not know, rightly). `--model NAME` is paced by `--delay-ms`; each `--paced MS` serves one more
  model, `paced_model(NAME, MS)` (`NAME-paced-20ms`), at MS per token, so one emitter (and one gateway in
  front of it) serves every sweep point. An unknown model is a 404 in vLLM's shape. With 0 the stream still
  yields to the event loop between tokens, so events go out as separate writes, as a fast GPU backend's would.
- `GET /v1/models` (the gateway's readiness probe: every model served), `GET /health`.

It is a raw asyncio protocol on uvloop (no framework): one core answers tens of thousands of small requests
per second, so in a side-by-side run the emitter is never what limits the proxy under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, cast

CREATED = 1_700_000_000
WORD = "tok "


def paced_model(model: str, delay_ms: float) -> str:
    """The name under which the emitter serves `model` at `delay_ms` per token (the base name at 0)."""
    return model if not delay_ms else f"{model}-paced-{delay_ms:g}ms"


def _event(obj: dict[str, Any]) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class Templates:
    """Every byte string an answer is made of, built once per (kind, token count)."""

    def __init__(self, model: str, listed: list[str]):
        self.model = model
        self.models_body = json.dumps(
            {"object": "list", "data": [{"id": name, "object": "model", "created": CREATED, "owned_by": "bench",
                                         "max_model_len": 4096} for name in listed]}
        ).encode()
        self._cache: dict[tuple[bool, bool, int], Any] = {}

    def usage(self, n: int) -> dict[str, int]:
        return {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}

    def full(self, chat: bool, n: int) -> bytes:
        key = (chat, False, n)
        if key not in self._cache:
            text = WORD * n
            if chat:
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "length"}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "finish_reason": "length"}
                obj = "text_completion"
            body = json.dumps({"id": "cmpl-bench", "object": obj, "created": CREATED, "model": self.model,
                               "choices": [choice], "usage": self.usage(n)}, separators=(",", ":")).encode()
            self._cache[key] = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                % len(body)) + body
        data: bytes = self._cache[key]
        return data

    def stream(self, chat: bool, n: int) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """(headers + first event, middle event, last event, usage event, [DONE] + end of body)."""
        key = (chat, True, n)
        if key not in self._cache:
            obj = "chat.completion.chunk" if chat else "text_completion"
            base = {"id": "chatcmpl-bench", "object": obj, "created": CREATED, "model": self.model}

            def tok(first: bool, finish: str | None) -> bytes:
                if chat:
                    delta: dict[str, Any] = {"role": "assistant", "content": WORD} if first else {"content": WORD}
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": WORD, "logprobs": None, "finish_reason": finish}
                return _event({**base, "choices": [choice]})

            head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
            usage = _event({**base, "choices": [], "usage": self.usage(n)})
            done = b"data: [DONE]\n\n"
            self._cache[key] = (head + tok(True, None), tok(False, None), tok(False, "length"), usage,
                                b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        parts: tuple[bytes, bytes, bytes, bytes, bytes] = self._cache[key]
        return parts


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def model_not_found(name: str) -> bytes:
    body = json.dumps({"error": {"message": f"The model `{name}` does not exist.", "type": "NotFoundError",
                                 "param": "model", "code": 404}}).encode()
    return (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body


class Stream:
    """One streamed answer, driven by loop callbacks (no task per stream)."""

    __slots__ = ("conn", "delay", "i", "n", "parts", "usage")

    def __init__(self, conn: EmitterProtocol, parts: tuple[bytes, ...], n: int, delay: float, usage: bool):
        self.conn, self.parts, self.n, self.delay, self.usage = conn, parts, n, delay, usage
        self.i = 0

    def step(self) -> None:
        conn = self.conn
        if conn.transport.is_closing():  # the client went away: stop generating, like vLLM aborting
            conn.streaming = None
            return
        head, middle, last, usage, done = self.parts
        self.i += 1
        if self.i == 1:
            piece = head  # headers, role and the first token
        elif self.i < self.n:
            piece = middle
        else:
            piece = last
        if self.i >= self.n:
            conn.transport.write(piece + (usage if self.usage else b"") + done)
            conn.streaming = None
            conn.process()  # a request that arrived meanwhile
            return
        conn.transport.write(piece)
        loop = conn.loop
        if self.delay > 0:
            loop.call_later(self.delay, self.step)
        else:
            loop.call_soon(self.step)


class EmitterProtocol(asyncio.Protocol):
    def __init__(self, templates: dict[str, Templates], delays: dict[str, float], default_model: str):
        """`templates` and `delays` (seconds per token) by served model name."""
        self.templates, self.delays, self.default_model = templates, delays, default_model
        self.buffer = b""
        self.streaming: Stream | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.streaming is None:
            self.process()

    def process(self) -> None:
        while self.streaming is None:
            buf = self.buffer
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = buf[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                line_end = lower.find(b"\r\n", at)
                length = int(lower[at + 15: line_end if line_end >= 0 else None])
            if len(buf) < end + 4 + length:
                return
            body = buf[end + 4: end + 4 + length]
            self.buffer = buf[end + 4 + length:]
            self.handle(head[: head.find(b"\r\n")] if b"\r\n" in head else head, body)

    def handle(self, request_line: bytes, body: bytes) -> None:
        method, _, rest = request_line.partition(b" ")
        path = rest.partition(b" ")[0]
        t = self.templates[self.default_model]
        if method == b"GET":
            if path == b"/v1/models":
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                     % len(t.models_body) + t.models_body)
            elif path in (b"/health", b"/ping"):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            else:
                self.transport.write(NOT_FOUND)
            return
        if path not in (b"/v1/chat/completions", b"/v1/completions"):
            self.transport.write(NOT_FOUND)
            return
        try:
            req = json.loads(body)
        except ValueError:
            req = {}
        chat = path == b"/v1/chat/completions"
        n = max(1, int(req.get("max_tokens") or req.get("max_completion_tokens") or 16))
        model = str(req.get("model") or self.default_model)
        if model not in self.delays:
            self.transport.write(model_not_found(model))
            return
        t, delay = self.templates[model], self.delays[model]
        if not req.get("stream"):
            if delay > 0:
                self.loop.call_later(delay * n, self.transport.write, t.full(chat, n))
            else:
                self.transport.write(t.full(chat, n))
            return
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self.streaming = Stream(self, t.stream(chat, n), n, delay, usage)
        if delay > 0:
            self.loop.call_later(delay, self.streaming.step)
        else:
            self.streaming.step()


async def serve(port: int, model: str, delay_ms: float, host: str = "127.0.0.1",
                paced: tuple[float, ...] = ()) -> None:
    loop = asyncio.get_running_loop()
    delays = {model: delay_ms / 1000, **{paced_model(model, ms): ms / 1000 for ms in paced if ms}}
    listed = list(delays)
    templates = {name: Templates(name, listed) for name in delays}
    server = await loop.create_server(
        lambda: EmitterProtocol(templates, delays, model), host, port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emitter", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="per token, for --model")
    parser.add_argument("--paced", type=float, action="append", default=[],
                        help="also serve MODEL-paced-<MS>ms at MS per token (repeatable)")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.port, args.model, args.delay_ms, args.host, tuple(args.paced)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
