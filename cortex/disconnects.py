"""Cancel work when the HTTP client goes away, for answers that are not streamed.

A streamed response notices a disconnect when its next write fails; a whole answer
would otherwise keep a neuron generating for nobody. Used by the gateway's proxy and
by the neuron.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

__all__ = ["CUT", "cancelled_status", "unless_disconnected"]

#: Set in a request's ASGI `scope["state"]` by the server when it cancels the request
#: itself (drain_timeout ran out), so the cancellation is not taken for the client's.
CUT = "cortex.cut"


def cancelled_status(state: dict[str, object]) -> int:
    """The status a cancelled request is recorded with: 503 when the server cut it, else
    499 (the client went away), after nginx's convention."""
    return 503 if state.get(CUT) else 499

T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await work, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    finally:
        watcher.cancel()
