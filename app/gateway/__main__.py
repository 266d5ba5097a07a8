"""`python -m app.gateway`: the gateway's processes, each uvicorn with a graceful shutdown that drains first.

One process (GATEWAY_PROCESSES resolved to 1: a CPU request of at most one core) runs the server itself
(server.py); more run under a supervisor that shares one listening socket among them and passes every signal
on to each (supervisor.py). The drain is the same either way: see server.py.
"""

from __future__ import annotations

import faulthandler
import signal
import sys

from app.gateway.logging import configure_logging
from app.gateway.settings import GatewaySettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except GatewaySettingsError as err:
        print(err, file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: stacks to the log, for ops
    if settings.process_count > 1:
        from app.gateway.supervisor import supervise

        return supervise(settings)
    from app.gateway.server import serve

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
