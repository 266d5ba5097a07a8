"""One gateway process: uvicorn with a graceful shutdown that drains first.

On SIGTERM: readiness turns false at once (so the Service/Nginx stops sending new requests), after
GATEWAY_SHUTDOWN_DRAIN_SECONDS the server stops accepting, and in-flight streams get up to
GATEWAY_SHUTDOWN_GRACE_SECONDS to finish. A second SIGTERM ends the drain at once (in-flight requests
keep their grace); SIGINT after that forces the exit. While draining, responses close their connection;
a request still unanswered when the grace ends gets a 503 in OpenAI's shape (app/gateway/drain.py).
With several processes per pod (supervisor.py) each one runs this, on the listening socket they share.
"""

from __future__ import annotations

import signal
import socket
import threading
from types import FrameType

import uvicorn

from app.gateway.drain import ShutdownResponses
from app.gateway.logging import log
from app.gateway.main import create_app
from app.gateway.settings import GatewaySettings

BACKLOG = 2048  # uvicorn's default: connections the kernel queues before a process accepts them


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float):
        super().__init__(config)
        self._drain_seconds = drain_seconds
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # second signal: stop accepting now; SIGINT after that forces the exit
            # Not uvicorn's handle_exit: it would record the signal and re-raise it once the server has
            # stopped, so a clean drain would end as "killed by SIGTERM" (exit -15), not exit 0.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        app = getattr(self.config.app, "app", self.config.app)  # the FastAPI app inside ShutdownResponses
        ctx = getattr(getattr(app, "state", None), "ctx", None)
        if ctx is not None:
            ctx.draining = True
        log.info("draining: readiness is now false", extra={"signal": sig, "drain_seconds": self._drain_seconds})
        timer = threading.Timer(self._drain_seconds, lambda: setattr(self, "should_exit", True))
        timer.daemon = True
        timer.start()


def listening_socket(settings: GatewaySettings) -> socket.socket:
    """The gateway's listening socket, bound as uvicorn binds it; inheritable, for several processes to share."""
    # The app is only named: this Config binds the socket and is then dropped (each process makes its own).
    return uvicorn.Config("app.gateway.main:app", host=settings.host, port=settings.port, backlog=BACKLOG).bind_socket()


def serve(settings: GatewaySettings, sockets: list[socket.socket] | None = None) -> bool:
    """Serve until shut down (on `sockets`, or binding host:port itself); False if the app never started."""
    server: DrainingServer | None = None
    config = uvicorn.Config(
        ShutdownResponses(create_app(settings), draining=lambda: server is not None and server.draining),
        host=settings.host,
        port=settings.port,
        backlog=BACKLOG,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        timeout_keep_alive=75,
        lifespan="on",
        loop="uvloop",  # libuv's event loop and the C HTTP parser: the pure-Python ones cost ~2x the CPU
        http="httptools",
    )
    server = DrainingServer(config, settings.shutdown_drain_seconds)
    server.run(sockets)
    return server.started
