"""GET /admin/events: the fleet's events as they happen, as server-sent events.

An observer of `fleet_event` like any plugin (registered per app, as Traffic is) that
hands each event to every open stream: loads starting, their progress, their end,
evictions and unloads, pins, nodes up, down and draining. `cortex load` draws its
progress bar from it and `cortex status --watch` redraws on it. A stream that falls
more than QUEUE_LIMIT events behind loses the oldest and is told how many with a
comment; a draining gateway ends every stream (close), so none holds up its exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cortex.hookspecs import hookimpl
from cortex.records import FleetEvent

__all__ = ["EVENTS_PLUGIN", "EventStream"]

#: The name the stream is registered under on the plugin manager.
EVENTS_PLUGIN = "cortex-gateway-events"
#: Events a stream may fall behind by before the oldest are dropped.
QUEUE_LIMIT = 1024
_encode = msgspec.json.Encoder().encode
_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class _Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[FleetEvent | None] = asyncio.Queue()
        self.dropped = 0

    def put(self, event: FleetEvent | None) -> None:
        if event is not None and self.queue.qsize() >= QUEUE_LIMIT:
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


def frame(event: FleetEvent) -> bytes:
    """One event as SSE: its kind as the event name, the event itself as JSON data."""
    return b"event: " + event.kind.encode() + b"\ndata: " + _encode(event) + b"\n\n"


class EventStream:
    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._closed = False

    @hookimpl
    def fleet_event(self, event: FleetEvent) -> None:
        for subscriber in self._subscribers:
            subscriber.put(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[_Subscriber]:
        subscriber = _Subscriber()
        if self._closed:
            subscriber.put(None)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    def close(self) -> None:
        """End every stream (the gateway drains); new ones end at once."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.put(None)

    def route(self, keepalive: Callable[[], float]) -> Route:
        """GET /admin/events; an idle stream gets a `: keep-alive` every `keepalive()`
        seconds ([gateway] keepalive_interval)."""

        async def events(request: Request) -> Response:
            return StreamingResponse(self._frames(keepalive), media_type="text/event-stream",
                                     headers=_HEADERS)

        return Route("/admin/events", events)

    async def _frames(self, keepalive: Callable[[], float]) -> AsyncIterator[bytes]:
        with self.subscribe() as subscriber:
            yield b": cortex fleet events\n\n"  # the first byte at once: the stream is open
            while True:
                try:
                    event = await asyncio.wait_for(subscriber.queue.get(), keepalive())
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if subscriber.dropped:
                    yield f": {subscriber.dropped} events dropped (too slow)\n\n".encode()
                    subscriber.dropped = 0
                if event is None:
                    return
                yield frame(event)
