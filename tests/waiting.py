"""Waiting for a condition (never for a fixed time) and reading a server's Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(base_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named `name` at `base_url`/metrics, e.g. `vllm:num_requests_running`
    or `vllm:request_success_total` (the sample name as exported, counters with their `_total`)."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def metric(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 while the series does not exist)."""
    return sum(v for found, v in samples(base_url, name) if all(found.get(k) == x for k, x in labels.items()))


def wait_until(check: Callable[[], bool], what: str, within: float = 30.0, interval: float = 0.05) -> None:
    """Poll `check` until it holds; fail naming `what` once `within` seconds have passed."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        time.sleep(interval)


async def wait_until_async(
    check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0, interval: float = 0.05
) -> None:
    """`wait_until` for async checks (the event loop keeps running other tasks meanwhile)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(interval)
