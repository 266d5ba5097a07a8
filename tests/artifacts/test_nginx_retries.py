"""No replayed POSTs: real Nginx on the rendered config, in front of two stand-in gateways on raw sockets.

A chat turn is generated (and stored) by whichever gateway reads it. Nginx may try another gateway only when
the connection failed before the request was sent (refused: a gateway gone in a rolling restart). A gateway
that read the request and then died must not get its turn replayed on the other one: the client gets a clean
error (503 in OpenAI's shape, `Retry-After`) and may retry itself. The stand-ins are plain sockets because the
fault is the point: one reads the whole request, records it, and resets the connection without answering.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from localstack.processes import free_port
from localstack.services import NginxHandle, start_nginx
from stackspec.render.nginx import WEB_DIR, render_nginx_conf
from tests.artifacts.conftest import stack_settings

CHAT = "/v1/chat/completions"


@dataclass
class StandIn:
    """A gateway stand-in: records the marker of every request it read in full, then `reply`s on the socket."""

    reply: Callable[[socket.socket], bool]  # False: the connection is gone
    port: int = field(default_factory=free_port)
    markers: list[str] = field(default_factory=list)
    _server: socket.socket | None = None

    def start(self) -> StandIn:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def _serve(self) -> None:
        assert self._server is not None
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            while True:  # Nginx keeps upstream connections alive: one request after another
                body = _read_request(conn)
                if body is None:
                    return
                self.markers.append(json.loads(body)["messages"][0]["content"])
                if not self.reply(conn):
                    return


def _read_request(conn: socket.socket) -> bytes | None:
    """One HTTP/1.1 request's body (Nginx sends Content-Length here), or None at the connection's end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    assert lengths, f"no Content-Length from Nginx: {head!r}"
    while len(body) < int(lengths[0]):
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return body


def answer(conn: socket.socket) -> bool:
    body = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    return True


def die(conn: socket.socket) -> bool:
    """The process is gone after reading: the kernel resets the connection, no response at all."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False  # leaving `with conn` closes it: with linger 0, a reset


def edge(workdir: Path, upstreams: tuple[str, ...]) -> NginxHandle:
    settings = stack_settings("dev")
    assert not settings.edge.tls.enabled
    port = free_port()
    text = render_nginx_conf(settings, listen=f"127.0.0.1:{port}", gateway_upstreams=upstreams,
                             web_root=str(WEB_DIR), local_prefix=str(workdir))
    return start_nginx(workdir, conf_text=text, port=port, env_var=None)


@pytest.fixture
def healthy() -> Iterator[StandIn]:
    server = StandIn(answer).start()
    yield server
    server.stop()


def chat(url: str, marker: str) -> httpx.Response:
    return httpx.post(f"{url}{CHAT}", json={"model": "m", "messages": [{"role": "user", "content": marker}]},
                      timeout=30)


def test_a_gateway_that_read_the_turn_and_died_is_not_replayed_on_another(workdir: Path, healthy: StandIn) -> None:
    dying = StandIn(die).start()
    nginx = edge(workdir, (f"127.0.0.1:{dying.port}", f"127.0.0.1:{healthy.port}"))
    try:
        sent: list[tuple[str, httpx.Response]] = []
        # Round robin (per worker) reaches the dying gateway within a few requests; each one is checked.
        for _ in range(8):
            marker = uuid.uuid4().hex
            sent.append((marker, chat(nginx.url, marker)))
            if dying.markers:
                break
        assert dying.markers, "no request reached the gateway that dies"
        for marker, resp in sent:
            if marker in dying.markers:
                # Read once, by the gateway that died: a clean, retryable error, and no second generation.
                assert dying.markers.count(marker) == 1 and marker not in healthy.markers
                assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
                assert resp.json()["error"]["code"] == "gateway_unavailable"
            else:
                assert resp.status_code == 200 and healthy.markers.count(marker) == 1
    finally:
        nginx.stop()
        dying.stop()


def test_a_refused_connection_is_tried_on_the_next_gateway(workdir: Path, healthy: StandIn) -> None:
    """Nothing was sent to a gateway that refused the connection (gone in a rolling restart): the next one
    answers, once."""
    gone = free_port()  # nothing listens: connection refused
    nginx = edge(workdir, (f"127.0.0.1:{gone}", f"127.0.0.1:{healthy.port}"))
    try:
        for _ in range(4):  # both workers' round robin start on the refusing gateway at least once
            marker = uuid.uuid4().hex
            resp = chat(nginx.url, marker)
            assert resp.status_code == 200, resp.text
            assert healthy.markers.count(marker) == 1
    finally:
        nginx.stop()
