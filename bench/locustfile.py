"""Locust load for a deployed site or the local stack: chat completions at a target rate, TTFT against the SLO.

Run it through `make loadtest URL=… RPS=… [STREAM=1] [KEY=…]` (bench/loadtest.py picks the user count and
passes these as LOADTEST_* variables). Each user sends at a constant rate; streaming requests report their
time to the first content token as a separate entry ("TTFT"), and at the end the run prints P95 TTFT (or P95
latency, non-streaming) against the SLO and exits 1 when it is missed or requests failed.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import HttpUser, constant_throughput, events, task
from locust.env import Environment

SLO_SECONDS = float(os.environ.get("LOADTEST_SLO_SECONDS", "1.5"))
STREAM = os.environ.get("LOADTEST_STREAM", "") not in ("", "0", "false")
KEY = os.environ.get("LOADTEST_KEY", "")
MODEL = os.environ.get("LOADTEST_MODEL", "")
MAX_TOKENS = int(os.environ.get("LOADTEST_MAX_TOKENS", "64"))
PER_USER_RPS = float(os.environ.get("LOADTEST_PER_USER_RPS", "1"))
PATH = "/v1/chat/completions"


class ChatUser(HttpUser):
    wait_time = constant_throughput(PER_USER_RPS)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": "Write a short paragraph about load testing."}],
            "max_tokens": MAX_TOKENS, "stream": STREAM,
        }
        if MODEL:
            body["model"] = MODEL
        return body

    @task
    def chat(self) -> None:
        if not STREAM:
            with self.client.post(PATH, json=self._body(), headers=self.headers, name=PATH,
                                  catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
            return
        start = time.perf_counter()
        ttft: float | None = None
        with self.client.post(PATH, json=self._body(), headers=self.headers, name=f"{PATH} (stream)",
                              stream=True, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            done = False
            for line in resp.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                if ttft is None:
                    chunk = json.loads(data)
                    if "error" in chunk:
                        resp.failure(f"error event: {chunk['error'].get('message')}")
                        return
                    delta = ((chunk.get("choices") or [{}])[0].get("delta") or {})
                    if delta.get("content"):
                        ttft = time.perf_counter() - start
            if not done:
                resp.failure("stream ended without [DONE]")
                return
        if ttft is not None:
            events.request.fire(request_type="TTFT", name=PATH, response_time=ttft * 1000, response_length=0,
                                exception=None, context={})


@events.quitting.add_listener
def report(environment: Environment, **_: Any) -> None:
    stats = environment.stats
    requests = stats.get(f"{PATH} (stream)" if STREAM else PATH, "POST")
    entry, what = (stats.get(PATH, "TTFT"), "TTFT") if STREAM else (requests, "latency")
    total = stats.total
    if entry.num_requests == 0:
        print(f"\nno successful requests ({total.num_failures} failures): SLO not measured")
        environment.process_exit_code = 1
        return
    p95 = entry.get_response_time_percentile(0.95) / 1000
    p50 = entry.get_response_time_percentile(0.5) / 1000
    met = p95 < SLO_SECONDS and total.num_failures == 0
    print(f"\n{what}: p50 {p50:.3f} s, P95 {p95:.3f} s over {entry.num_requests} requests "
          f"({requests.total_rps:.1f} req/s achieved, {total.num_failures} failures); "
          f"SLO P95 {what} < {SLO_SECONDS} s: {'met' if met else 'MISSED'}")
    environment.process_exit_code = 0 if met else 1
