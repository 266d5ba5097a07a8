"""Two gateway processes in one pod (GATEWAY_PROCESSES=2, app/gateway/supervisor.py): one identity's limits
hold across both, /metrics adds both up, and one SIGTERM drains both.

Which process accepts a connection is the kernel's choice; to know that each process served, a test steers
connections: it stops the other process (SIGSTOP, waited for until the kernel reports it stopped), so the
one running is the only one accepting from the shared socket; then continues it (SIGCONT).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import redis

from localstack.services import RedisHandle
from tests.gateway.conftest import (
    Fleet,
    Gateway,
    StartGateway,
    assert_whole_stream,
    auth,
    chat_body,
    refuses_new_connections,
    vllm_metric,
)
from tests.waiting import metric, samples, wait_until, wait_until_async

CHAT = "/v1/chat/completions"


def two_processes(start_gw: StartGateway, **overrides: str) -> tuple[Gateway, list[int]]:
    """A gateway of two processes (a pod given two cores), once both serve; and the processes' pids."""
    gw = start_gw(processes="2", cpu_cores="2", **overrides)

    def lines(msg: str) -> list[dict[str, object]]:
        return [line for line in map(_json_line, gw.log().splitlines()) if line.get("msg") == msg]

    wait_until(lambda: len(lines("Application startup complete.")) == 2, "both gateway processes serve", within=60)
    pids = [int(str(line["pid"])) for line in lines("gateway process started")]
    assert len(pids) == 2
    return gw, pids


def _json_line(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def is_stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"  # the state, after the command name (which may hold spaces)


@contextlib.contextmanager
def only(pids: list[int], serving: int) -> Iterator[None]:
    """Every process but `serving` stopped: new connections are accepted by `serving` alone."""
    others = [pid for pid in pids if pid != serving]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        for pid in others:
            wait_until(functools.partial(is_stopped, pid), f"process {pid} is stopped", within=10)
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


class Stream:
    """A streamed chat served by one process: its response and the text read so far."""

    def __init__(self, resp: httpx.Response) -> None:
        self.resp, self.received = resp, ""
        self._chunks = resp.aiter_text()

    async def read_first(self) -> None:
        self.received += await anext(self._chunks)

    async def read_rest(self) -> None:
        async for text in self._chunks:
            self.received += text


@contextlib.asynccontextmanager
async def stream_on(gw: Gateway, pids: list[int], pid: int, body: dict[str, object],
                    key: str) -> AsyncIterator[Stream]:
    """A streamed chat sent while only process `pid` runs, its first chunk read; left unread, it is closed
    (a client disconnect) when the block ends."""
    async with gw.client() as client, contextlib.AsyncExitStack() as open_streams:
        with only(pids, pid):
            resp = await open_streams.enter_async_context(client.stream("POST", CHAT, headers=auth(key), json=body))
            stream = Stream(resp)
            if resp.status_code == 200:
                await stream.read_first()
        yield stream  # with every process running again


async def test_one_identitys_concurrency_limit_holds_across_both_processes(
    start_gw: StartGateway, fleet: Fleet, redis_server: RedisHandle
) -> None:
    # Carol may have 2 sequences in flight. Her first stream is served by one process, her second by the
    # other; a third is refused by either: each counts the other's slot (in Redis), neither its own share.
    paced = fleet.paced()
    gw, pids = two_processes(start_gw, backends=f"127.0.0.1:{paced.port}", rate_limit_concurrent="2")
    slots = redis.Redis(port=redis_server.port, password=redis_server.password)
    key = "qs:rl:slots:key:carol"
    long_stream = chat_body("hold a slot", max_tokens=1000, ignore_eos=True, stream=True)
    async with contextlib.AsyncExitStack() as held:
        for pid in pids:
            stream = await held.enter_async_context(stream_on(gw, pids, pid, long_stream, "carol"))
            assert stream.resp.status_code == 200, await stream.resp.aread()
        assert slots.zcard(key) == 2  # precondition: both slots taken, one by each process
        for pid in pids:  # whichever process is scraped, in flight is the pod's: one on each, summed
            with only(pids, pid):
                assert metric(gw.url, "gateway_in_flight_requests") == 2
        for pid in pids:
            with only(pids, pid):
                async with gw.client() as http:
                    third = await http.post(CHAT, headers=auth("carol"), json=chat_body())
            assert third.status_code == 429, third.text
            assert third.json()["error"]["code"] == "concurrency_limit_exceeded"
        # Another identity is not limited by carol's slots, on either process.
        for pid in pids:
            with only(pids, pid):
                async with gw.client() as http:
                    assert (await http.post(CHAT, headers=auth("bob"), json=chat_body())).status_code == 200
        # Leaving the streams (disconnects) frees both slots.
    await wait_until_async(lambda: asyncio.to_thread(lambda: slots.zcard(key) == 0),
                           "the streams' slots are released", within=30)


def test_metrics_add_up_across_both_processes(start_gw: StartGateway) -> None:
    gw, pids = two_processes(start_gw)
    served = dict(zip(pids, (3, 5), strict=True))
    for pid, count in served.items():
        with only(pids, pid), httpx.Client(base_url=gw.url, timeout=60) as http:
            for _ in range(count):
                resp = http.post(CHAT, headers=auth("alice"), json=chat_body())
                assert resp.status_code == 200, resp.text
    # Each process writes its own files (prometheus_client's multiprocess mode), in the supervisor's directory.
    metric_files = {p.name for p in gw.handle.process.log_path.parent.glob("gateway-metrics-*/*.db")}
    assert {f"counter_{pid}.db" for pid in pids} <= metric_files
    for pid in pids:  # whichever process answers the scrape, it reports both processes' requests
        with only(pids, pid):
            assert metric(gw.url, "gateway_requests_total", route=CHAT, status="200") == sum(served.values())
            # Histograms add up too; gauges combine by their mode.
            assert metric(gw.url, "gateway_request_duration_seconds_count", route=CHAT) == sum(served.values())
            # A verdict is the worst process's: both see both backends healthy, so 1 each (a sum would say 2).
            healthy = samples(gw.url, "gateway_backend_healthy")
            assert len(healthy) == 2 and all(value == 1.0 for _, value in healthy)
            text = httpx.get(f"{gw.url}/metrics", timeout=10).text
            assert "gateway_in_flight_requests 0.0" in text and "pid=" not in text  # one sum, not one per process


async def test_one_sigterm_drains_both_processes(start_gw: StartGateway, fleet: Fleet) -> None:
    # A stream in flight on each process; SIGTERM to the supervisor (what the kubelet signals): readiness goes
    # false in both, both streams finish whole, the listener closes for all, the pod exits 0. The drain is far
    # longer than the test: its end is the second SIGTERM, sent when the checks are done.
    paced = fleet.paced()
    gw, pids = two_processes(start_gw, backends=f"127.0.0.1:{paced.port}", shutdown_drain_seconds="600",
                             shutdown_grace_seconds="60")
    body = chat_body("a long goodbye", max_tokens=400, ignore_eos=True, stream=True,
                     stream_options={"include_usage": True})
    streams: list[Stream] = []
    async with contextlib.AsyncExitStack() as held:
        for pid in pids:
            stream = await held.enter_async_context(stream_on(gw, pids, pid, body, "alice"))
            assert stream.resp.status_code == 200
            assert "[DONE]" not in stream.received  # precondition: still being generated
            streams.append(stream)
        os.kill(gw.handle.pid, signal.SIGTERM)
        for pid in pids:  # each process turned its readiness off, and closes the connections it answers
            with only(pids, pid):
                async def draining() -> bool:
                    async with httpx.AsyncClient(base_url=gw.url) as probe:
                        ready = await probe.get("/readyz")
                    return ready.status_code == 503 and ready.json()["draining"] is True \
                        and ready.headers["connection"] == "close"

                await wait_until_async(draining, f"process {pid} drains on the pod's SIGTERM", within=10)
        os.kill(gw.handle.pid, signal.SIGTERM)  # a second signal ends the drain now, in both

        await wait_until_async(lambda: refuses_new_connections(gw.url), "the listener closes after the drain",
                               within=30)
        running = await asyncio.to_thread(vllm_metric, paced, "vllm:num_requests_running")
        assert running >= 1  # precondition: vLLM is still generating when the listener closes
        await asyncio.gather(*(stream.read_rest() for stream in streams))
    for stream in streams:
        assert_whole_stream(stream.received, 400)
    popen = gw.handle.process.popen
    assert popen is not None
    assert await asyncio.to_thread(popen.wait, 60) == 0
    left = await asyncio.to_thread(lambda: [pid for pid in pids if Path(f"/proc/{pid}").exists()])
    assert left == []  # the supervisor exits after its processes

