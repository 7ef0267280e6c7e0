"""Serving: the gateway (and, in embedded mode, a neuron beside it) under hypercorn.

One event loop runs every app; SIGINT/SIGTERM stop them gracefully and SIGHUP
reloads the gateway's configuration.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Sequence
from typing import Any

from cortex.config import split_listen
from cortex.errors import CortexError
from cortex.metrics import metrics_app

__all__ = ["Served", "serve"]

log = logging.getLogger("cortex.server")


class Served:
    """One ASGI app and the address it listens on."""

    def __init__(self, app: Any, listen: str, *, name: str) -> None:
        self.app, self.listen, self.name = app, listen, name


def _bind(listen: str) -> str:
    host, port = split_listen(listen)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _reachable(listen: str, timeout: float) -> bool:
    host, port = split_listen(listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return True
    return False


async def _reload(gateway: Any) -> None:
    try:
        summary = await gateway.reload()
    except CortexError as exc:
        log.error("SIGHUP: configuration not reloaded: %s", exc.message)
    else:
        log.info("SIGHUP: reloaded (%s)", summary)


async def _serve(gateway: Served, before: Sequence[Served]) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    state = getattr(gateway.app, "state", None)
    core = getattr(state, "gateway", None) if state is not None else None
    if core is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(core)))

    def config(served: Served) -> Config:
        hyper = Config()
        hyper.bind = [_bind(served.listen)]
        hyper.accesslog = None
        hyper.graceful_timeout = 30
        return hyper

    tasks = []
    for served in before:
        tasks.append(asyncio.ensure_future(
            hypercorn_serve(served.app, config(served), shutdown_trigger=stop.wait)))
        if not await _reachable(served.listen, 60.0):
            log.warning("%s did not start listening on %s", served.name, served.listen)
    tasks.append(asyncio.ensure_future(
        hypercorn_serve(gateway.app, config(gateway), shutdown_trigger=stop.wait)))
    log.info("cortex gateway listening on %s", gateway.listen)
    metrics = getattr(state, "metrics", None) if state is not None else None
    if core is not None and metrics is not None:
        served = Served(metrics_app(metrics.prometheus), core.settings.metrics_listen,
                        name="metrics")
        tasks.append(asyncio.ensure_future(_optional(
            hypercorn_serve(served.app, config(served), shutdown_trigger=stop.wait), served)))
    await asyncio.gather(*tasks)


async def _optional(serving: Awaitable[None], served: Served) -> None:
    """Serve something the API does not depend on: failing to bind is logged, not fatal."""
    try:
        await serving
    except OSError as exc:
        log.error("%s not served on %s: %s", served.name, served.listen, exc)


def serve(gateway: Served, *, before: Sequence[Served] = ()) -> None:
    """Run `before` (each once it accepts connections), then the gateway, until a signal."""
    asyncio.run(_serve(gateway, before))
