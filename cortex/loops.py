"""How a server process runs: on which event loop, and with a settled heap.

The loop is uvloop when it is installed, else asyncio's own: uvloop's C transports
cut the gateway's CPU per streamed chunk by about a quarter (docs/benchmarks.md), and
the apps work on either. Kept apart from cortex.gateway.server so that the CLIs can offer
`--loop` without importing a server.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["LOOPS", "run", "settle_heap"]

#: What `cortex serve --loop` and `neuron serve --loop` accept.
LOOPS = ("auto", "uvloop", "asyncio")


def run(main: Coroutine[Any, Any, None], loop: str = "auto") -> None:
    """Run `main` to completion on the loop asked for (`auto`: uvloop if importable)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def settle_heap() -> None:
    """Hide everything built at start-up (modules, plugins, config) from the garbage
    collector, so a full collection scans only what requests left behind: gen-2 pauses
    under load drop from 20-45 ms to about 4 (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
