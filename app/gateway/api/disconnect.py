"""Cancel a non-streamed request's work when its client goes away.

Starlette cancels a streamed response when the client disconnects, but an ordinary endpoint runs to its
end: a client that gave up on a 4000-token answer would keep a GPU generating it for minutes. Here the
work runs beside a watcher of the connection; whichever ends first wins. Cancelling the work closes its
connection to vLLM, and vLLM aborts a request whose client closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


async def _disconnected(receive: Receive) -> None:
    # With the body read, the server's next message is the disconnect (or nothing until we answer).
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(receive: Receive, work: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
    """(True, work's result), or (False, None) if the client disconnected first and the work was cancelled.
    The work's own exceptions propagate unchanged."""
    task = asyncio.ensure_future(work)  # copies the context: the request id stays on its log lines
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done() and not watcher.done():  # we ourselves were cancelled
            task.cancel()
    if task.done():  # an answer that is ready wins over a disconnect seen at the same moment
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False, None
