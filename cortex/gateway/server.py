"""Serving: the gateway (and, in embedded mode, a neuron beside it) under hypercorn.

One event loop runs every app; SIGINT/SIGTERM drain the gateway (new requests get
503, those in flight finish within `[gateway] drain_timeout`) and then stop every app;
SIGHUP reloads the gateway's configuration.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cortex.config import split_listen
from cortex.disconnects import CUT
from cortex.errors import CortexError, Unavailable
from cortex.gateway.configcheck import problems_of
from cortex.loops import run, settle_heap
from cortex.metrics import metrics_app
from cortex.sockets import bind, cannot_listen, hypercorn_config

if TYPE_CHECKING:
    from hypercorn.config import Config

    from cortex.gateway.dialects import Dialects
    from cortex.gateway.state import LiveConfig

__all__ = ["CannotListen", "Served", "serve"]

log = logging.getLogger("cortex.gateway.server")


class Served:
    """One ASGI app and the address it listens on."""

    def __init__(self, app: Any, listen: str, *, name: str) -> None:
        self.app, self.listen, self.name = app, listen, name


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


class _Drain:
    """Count the gateway's requests in flight and, once draining, refuse new ones with
    503 + Retry-After in the path's dialect, so a replica leaves a load balancer's pool
    before it stops and accepted streams get up to `drain_timeout` to finish.

    Requests still in flight when `drain_timeout` runs out are cancelled, and each ends
    visibly cut: a stream with its dialect's error event (and no `[DONE]` or
    `message_stop`), a request whose response has not started with a 503, and any
    other partial body with the connection closed before the body's end."""

    def __init__(self, app: Any, dialects: Dialects) -> None:
        self.app, self.dialects = app, dialects
        self.active = 0
        self.deadline: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # The task serving each request in flight, with what its response has sent.
        self._flights: dict[asyncio.Task[Any], dict[str, Any]] = {}
        self._cut: set[asyncio.Task[Any]] = set()
        self._states: dict[asyncio.Task[Any], dict[str, Any]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.deadline is not None:
            await self._refuse(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        response: dict[str, Any] = {}
        self._states[task] = scope.setdefault("state", {})

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                response["start"] = message
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                response["ended"] = True
            await send(message)

        self._flights[task] = response
        self.active += 1
        self._idle.clear()
        try:
            try:
                await self.app(scope, receive, sending)
            except asyncio.CancelledError:
                if task not in self._cut:
                    raise
            if task in self._cut:
                if task.uncancel() > 0:  # cancelled from elsewhere as well
                    raise asyncio.CancelledError
                await self._end_cut(scope, receive, send, response)
        finally:
            del self._flights[task]
            del self._states[task]
            self._cut.discard(task)
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def _refuse(self, scope: Any, receive: Any, send: Any,
                      error: Unavailable | None = None) -> None:
        if error is None:
            assert self.deadline is not None
            left = self.deadline - asyncio.get_running_loop().time()
            error = Unavailable("the gateway is shutting down: retry on another replica",
                                retry_after=max(1.0, left))
        await self.dialects.error_response(scope["path"], error)(scope, receive, send)

    async def _end_cut(self, scope: Any, receive: Any, send: Any,
                       response: dict[str, Any]) -> None:
        """End a request cancelled at `drain_timeout` so that its client sees it cut."""
        error = Unavailable("the gateway shut down (drain_timeout) before this request "
                            "finished: retry it on another replica", retry_after=1.0)
        start = response.get("start")
        if start is None:
            await self._refuse(scope, receive, send, error)
            return
        if response.get("ended"):
            return
        content_type = next((value for name, value in start.get("headers", ())
                             if name.lower() == b"content-type"), b"")
        if start["status"] != 200 or not content_type.startswith(b"text/event-stream"):
            return  # hypercorn closes the connection mid-body: the client sees it cut
        from cortex.dialect import Dialect

        dialect = self.dialects.dialect_for(scope["path"]) or Dialect()
        frame = dialect.exchange().stream_error(error)
        await send({"type": "http.response.body", "body": frame, "more_body": False})

    async def drain(self, timeout: float) -> None:
        """Refuse new requests, then wait up to `timeout` for those in flight; cut those
        still running then (see the class), allowing them a second to say so."""
        self.deadline = asyncio.get_running_loop().time() + timeout
        log.info("draining: %d requests in flight, up to %.0fs", self.active, timeout)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("drain_timeout: %d requests still in flight are cut", self.active)
            for task in self._flights:
                self._cut.add(task)
                self._states[task][CUT] = True  # recorded as 503, not the client's 499
                task.cancel()
            try:
                await asyncio.wait_for(self._idle.wait(), 1.0)
            except TimeoutError:
                log.warning("%d cut requests did not end within a second", self.active)


async def _reload(live: LiveConfig) -> None:
    try:
        summary = await live.reload()
    except CortexError as exc:
        for problem in problems_of(exc):
            log.error("SIGHUP: configuration not reloaded: %s", problem)
    else:
        log.info("SIGHUP: reloaded (%s)", summary)


class CannotListen(Exception):
    """A server's address could not be bound: the one line that says so."""


def _bind_all(gateway: Served, before: Sequence[Served], metrics: Served | None
              ) -> dict[str, socket.socket]:
    """Every server's socket, bound before anything starts: a taken port is CannotListen
    (nothing has started), but for metrics, which the API does not need."""
    bound: dict[str, socket.socket] = {}
    try:
        for served in (*before, gateway):
            try:
                bound[served.name] = bind(served.listen)
            except (OSError, ValueError) as exc:
                raise CannotListen(cannot_listen(served.name, served.listen, exc)) from None
    except CannotListen:
        for sock in bound.values():
            sock.close()
        raise
    if metrics is not None:
        try:
            bound[metrics.name] = bind(metrics.listen)
        except (OSError, ValueError) as exc:
            log.error("%s; the API is served without it",
                      cannot_listen(metrics.name, metrics.listen, exc))
    return bound


async def _serve(gateway: Served, before: Sequence[Served], metrics: Served | None,
                 bound: dict[str, socket.socket]) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    state: Any = getattr(gateway.app, "state", None)
    live: LiveConfig | None = getattr(state, "live", None)  # None: not the gateway's app
    api: Any = gateway.app
    drains: list[asyncio.Future[None]] = []
    if live is not None:
        drain = api = _Drain(gateway.app, state.dialects)

        async def drain_then_stop() -> None:
            events = getattr(state, "events", None)
            if events is not None:  # /admin/events streams never end by themselves
                events.close()
            await drain.drain(live.settings.drain_timeout)
            stop.set()

        def on_stop_signal() -> None:
            if drains:  # a second signal stops at once
                stop.set()
            else:
                drains.append(asyncio.ensure_future(drain_then_stop()))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(live)))
    else:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    def config(served: Served) -> Config:
        hyper = hypercorn_config(bound[served.name], served.listen)
        hyper.accesslog = None
        # hypercorn's own handler on top of ours printed each of its lines twice.
        hyper.errorlog = logging.getLogger("hypercorn.error")
        # Requests had drain_timeout already; what is left now is closing connections.
        hyper.graceful_timeout = 30 if live is None else 2
        if live is not None:
            # A head far over the limit gets hypercorn's bare 431 before the app sees it;
            # cortex.gateway.limits.HeadLimit holds the exact limit.
            hyper.h11_max_incomplete_size = live.settings.max_header_bytes
            hyper.h2_max_header_list_size = live.settings.max_header_bytes
        return hyper

    tasks = []
    for served in before:
        tasks.append(asyncio.ensure_future(
            hypercorn_serve(served.app, config(served), shutdown_trigger=stop.wait)))
        if not await _reachable(served.listen, 60.0):
            log.warning("%s did not start listening on %s", served.name, served.listen)
    tasks.append(asyncio.ensure_future(
        hypercorn_serve(api, config(gateway), shutdown_trigger=stop.wait)))
    log.info("cortex gateway listening on %s", gateway.listen)
    if metrics is not None and metrics.name in bound:
        tasks.append(asyncio.ensure_future(
            hypercorn_serve(metrics.app, config(metrics), shutdown_trigger=stop.wait)))
        log.info("metrics on %s/metrics", metrics.listen)
    await asyncio.gather(*tasks)


def serve(gateway: Served, *, before: Sequence[Served] = (), loop: str = "auto") -> None:
    """Bind every address first (CannotListen, with nothing started, if one is taken),
    then run `before` (each once it accepts connections) and the gateway until a signal;
    the gateway's metrics go on `[gateway] metrics_listen`."""
    state: Any = getattr(gateway.app, "state", None)
    live: LiveConfig | None = getattr(state, "live", None)
    prometheus = getattr(getattr(state, "metrics", None), "prometheus", None)
    metrics = Served(metrics_app(prometheus), live.settings.metrics_listen, name="metrics") \
        if live is not None and prometheus is not None else None
    bound = _bind_all(gateway, before, metrics)
    settle_heap()
    run(_serve(gateway, before, metrics, bound), loop)
