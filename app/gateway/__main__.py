"""`python -m app.gateway`: uvicorn with a graceful shutdown that drains first.

On SIGTERM: readiness turns false at once (so the Service/Nginx stops sending new requests), after
GATEWAY_SHUTDOWN_DRAIN_SECONDS the server stops accepting, and in-flight streams get up to
GATEWAY_SHUTDOWN_GRACE_SECONDS to finish. A second SIGTERM ends the drain at once (in-flight requests
keep their grace); SIGINT after that forces the exit. While draining, responses close their connection;
a request still unanswered when the grace ends gets a 503 in OpenAI's shape (app/gateway/drain.py).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from types import FrameType

import uvicorn

from app.gateway.drain import ShutdownResponses
from app.gateway.logging import configure_logging, log
from app.gateway.main import create_app
from app.gateway.settings import GatewaySettingsError, load_settings


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


def main() -> int:
    try:
        settings = load_settings()
    except GatewaySettingsError as err:
        print(err, file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: stacks to the log, for ops
    server: DrainingServer | None = None
    config = uvicorn.Config(
        ShutdownResponses(create_app(settings), draining=lambda: server is not None and server.draining),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        timeout_keep_alive=75,
        lifespan="on",
        loop="uvloop",  # libuv's event loop and the C HTTP parser: the pure-Python ones cost ~2x the CPU
        http="httptools",
    )
    server = DrainingServer(config, settings.shutdown_drain_seconds)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
