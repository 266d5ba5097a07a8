"""Several gateway processes in one pod: one per core of its CPU request (GATEWAY_PROCESSES).

One event loop uses one core, so a pod given N cores runs N processes. This supervisor binds the listening
socket once and starts N processes on it (the `spawn` start method: fresh interpreters, nothing inherited
but the socket and the environment); the kernel hands each accepted connection to one of them. Each
process is a whole gateway (its own Redis pools, upstream connections, probes and admission bound, which
GatewaySettings shares out: `in_flight_limit`, `local_limit_divisor`); the rate limits they share live in
Redis.

Signals: Kubernetes sends SIGTERM to the container's first process, this one. Every SIGTERM and SIGINT is
passed on to each process, so the drain (server.py) is the same for all of them: the first SIGTERM turns
readiness off in each, a second ends the drain, SIGINT after that forces the exit. On the first, the
supervisor closes its own copy of the listening socket, so once every process has stopped listening, new
connections are refused rather than left queued. It exits when all have exited: 0 if each did.

A process that dies on its own (not stopping) is replaced, on the same socket; one that fails to start
(uvicorn's exit code 3: the app's startup failed) stops the pod instead, since its replacement would too.
(A signal sent to the whole process group, as a terminal's Ctrl-C is, reaches each process twice: that
ends the drain at once; in-flight requests keep their grace.)

Why not `uvicorn --workers`: its supervisor runs uvicorn's plain server in each worker (not the draining
one) and passes on only the first signal (the drain's second SIGTERM and the forcing SIGINT would never
reach the workers).

Metrics: the processes share one directory (PROMETHEUS_MULTIPROC_DIR, the pod's emptyDir; a temporary
one when unset), emptied at start (it outlives a container restart) and cleaned of a process's live gauges
when it exits (metrics.py).
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from app.gateway.logging import configure_logging, log
from app.gateway.metrics import MULTIPROC_DIR_ENV, multiprocess_dir
from app.gateway.settings import GatewaySettings, load_settings

STARTUP_FAILURE = 3  # uvicorn's exit code when the app's startup fails (uvicorn.config.STARTUP_FAILURE)
_spawn = multiprocessing.get_context("spawn")


def run_process(sock: socket.socket) -> None:
    """A gateway process (the spawned child): settings from the environment it inherited, served on `sock`."""
    from app.gateway.server import serve  # here: imported after PROMETHEUS_MULTIPROC_DIR is set

    settings = load_settings()
    configure_logging(settings.log_level)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # as a single process does (__main__.py)
    if not serve(settings, sockets=[sock]):
        raise SystemExit(STARTUP_FAILURE)


def metrics_directory() -> tuple[Path, bool]:
    """The shared metrics directory, emptied; and whether we made it (then we remove it at the end)."""
    given = multiprocess_dir()
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    for stale in path.glob("*.db"):  # a previous container's processes, in the same pod's emptyDir
        stale.unlink()
    os.environ[MULTIPROC_DIR_ENV] = str(path)  # inherited by every process spawned from now on
    return path, given is None


def exit_code(process: BaseProcess) -> int:
    code = process.exitcode or 0
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


class Supervisor:
    def __init__(self, settings: GatewaySettings) -> None:
        self.count = settings.process_count
        self.listener: socket.socket | None = None
        self.processes: list[BaseProcess] = []
        self.stopping = False
        self.metrics_dir = Path()

    def start_one(self) -> BaseProcess:
        assert self.listener is not None
        process = _spawn.Process(target=run_process, args=(self.listener,), name="gateway")
        process.start()
        log.info("gateway process started", extra={"pid": process.pid})
        return process

    def pass_on(self, sig: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            if self.listener is not None:
                self.listener.close()  # the processes keep theirs until their drain ends
            log.info("stopping the gateway processes", extra={"signal": sig, "processes": self.count})
        for process in self.processes:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, sig)

    def run(self, listener: socket.socket) -> int:
        self.listener = listener
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.pass_on)
        self.processes = [self.start_one() for _ in range(self.count)]
        codes: list[int] = []
        while self.processes:
            multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=1.0)
            for index, process in reversed(list(enumerate(self.processes))):
                if process.exitcode is None:
                    continue
                assert process.pid is not None
                multiprocess.mark_process_dead(process.pid, str(self.metrics_dir))
                code = exit_code(process)
                del self.processes[index]
                if self.stopping:
                    codes.append(code)
                elif code == STARTUP_FAILURE:
                    log.error("a gateway process failed to start; stopping the others", extra={"pid": process.pid})
                    codes.append(code)
                    self.pass_on(signal.SIGTERM, None)
                    self.pass_on(signal.SIGTERM, None)  # no drain: nothing was served by a pod that never started
                else:
                    log.error("a gateway process died; starting another", extra={"pid": process.pid, "code": code})
                    self.processes.insert(index, self.start_one())
        return max(codes, default=0)


def supervise(settings: GatewaySettings) -> int:
    """Run `settings.process_count` gateway processes on one socket until they have all exited."""
    from app.gateway.server import listening_socket

    supervisor = Supervisor(settings)
    supervisor.metrics_dir, made = metrics_directory()
    try:
        return supervisor.run(listening_socket(settings))
    finally:
        if made:
            shutil.rmtree(supervisor.metrics_dir, ignore_errors=True)
