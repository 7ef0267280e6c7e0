"""Fair shares of a busy model between clients (API keys).

Left alone, the gateway would forward every request at once and they would queue first
come, first served in the neuron's scheduler: one key flooding a model puts everyone
else behind its whole backlog. So the gateway holds a model's requests beyond what its
ready copies can start (their slots plus MARGIN each, so a freed slot never waits for
the gateway) and, as requests finish, lets the waiting ones through a client at a
time: round robin over the clients with requests waiting, a client that had none
first (as fq_codel serves new flows). A flood then costs another client about one
request's wait, not the flood's.

A lone client pays nothing: while nothing waits and there is room, `enter` takes a
ticket without awaiting anything. A model with no ready copy is not held here (its
requests wait for the load in the gateway's placement, under `queue_limit`). Waiters
are counted toward `queue_limit`; `waiting` and `ahead` tell admission and spill.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Hashable

__all__ = ["MARGIN", "FairShare", "Ticket"]

#: Requests per ready copy sent beyond its slots: the next one is queued on the neuron
#: when a slot frees, so fairness costs no idle slot.
MARGIN = 1


class Ticket:
    """A request's place among those let through to a model; release it once."""

    __slots__ = ("_share", "model")

    def __init__(self, share: FairShare, model: str) -> None:
        self._share: FairShare | None = share
        self.model = model

    def release(self) -> None:
        share, self._share = self._share, None
        if share is not None:
            share._leave(self.model)


class _Model:
    """One model's requests let through, and its waiters per client in serving order."""

    __slots__ = ("fresh", "in_flight", "returning", "waiting")

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiting = 0
        # Clients whose first waiter has not been served yet, then the others, each in
        # the order they are served in.
        self.fresh: dict[Hashable, collections.deque[asyncio.Future[Ticket]]] = {}
        self.returning: dict[Hashable, collections.deque[asyncio.Future[Ticket]]] = {}

    def queue(self, client: Hashable) -> collections.deque[asyncio.Future[Ticket]]:
        found = self.fresh.get(client)
        if found is None:
            found = self.returning.get(client)
        if found is None:
            found = self.fresh[client] = collections.deque()
        return found

    def next_waiter(self) -> asyncio.Future[Ticket] | None:
        """The next client's first waiter (round robin, fresh clients first)."""
        for clients in (self.fresh, self.returning):
            while clients:
                client = next(iter(clients))
                queue = clients.pop(client)
                while queue and queue[0].done():  # cancelled while waiting
                    queue.popleft()
                if not queue:
                    continue
                waiter = queue.popleft()
                if queue:
                    self.returning[client] = queue
                return waiter
        return None


class FairShare:
    """Per model: requests in flight, bounded by `capacity(model)` (the ready copies'
    slots and how many copies: 0, 0 when none is ready), and fair queues beyond it.
    `recheck` is how often waiters look again at a capacity that may have grown (a copy
    loaded, a node back up) without a request finishing."""

    def __init__(self, capacity: Callable[[str], tuple[int, int]], *,
                 recheck: float = 0.5) -> None:
        self._capacity = capacity
        self._recheck = recheck
        self._models: dict[str, _Model] = {}
        self._timer: asyncio.TimerHandle | None = None

    def _room(self, model: str) -> int | None:
        """How many requests the model's ready copies take at once (None: no limit)."""
        slots, copies = self._capacity(model)
        return slots + MARGIN * copies if copies else None

    def enter(self, model: str, client: Hashable) -> Ticket | None:
        """A ticket at once when nothing waits and there is room; else None (`wait`)."""
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model()
        if state.waiting == 0:
            room = self._room(model)
            if room is None or state.in_flight < room:
                state.in_flight += 1
                return Ticket(self, model)
        return None

    async def wait(self, model: str, client: Hashable) -> Ticket:
        """Wait for this client's turn; a cancelled waiter leaves its place (or passes on
        a ticket it was just given)."""
        state = self._models.setdefault(model, _Model())
        waiter: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        state.queue(client).append(waiter)
        state.waiting += 1
        self._arm()
        self._serve(model)  # the room may have grown since `enter` looked
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                waiter.result().release()
            raise
        finally:
            if not waiter.done() or waiter.cancelled():
                state.waiting -= 1
            if not waiter.done():
                waiter.cancel()

    def waiting(self, model: str) -> int:
        state = self._models.get(model)
        return state.waiting if state is not None else 0

    def ahead(self, model: str) -> int:
        """For a request about to wait here: the requests it would queue behind on a
        ready copy (as the router counts them for `spill_after`), those in flight beyond
        the copies' slots and those waiting here, shared over the copies."""
        state = self._models.get(model)
        if state is None:
            return 0
        slots, copies = self._capacity(model)
        beyond = max(0, state.in_flight - slots) + state.waiting
        return -(-beyond // max(1, copies)) + 1

    def describe(self) -> dict[str, dict[str, int]]:
        """Per model with requests waiting here: in flight and waiting (for /admin/fleet)."""
        return {model: {"in_flight": state.in_flight, "waiting": state.waiting}
                for model, state in self._models.items() if state.waiting}

    def _leave(self, model: str) -> None:
        state = self._models[model]
        state.in_flight -= 1
        if state.waiting:
            self._serve(model)
        elif state.in_flight == 0:
            del self._models[model]

    def _serve(self, model: str) -> None:
        state = self._models[model]
        room = self._room(model)
        while state.waiting and (room is None or state.in_flight < room):
            waiter = state.next_waiter()
            if waiter is None:
                break
            state.waiting -= 1
            state.in_flight += 1
            waiter.set_result(Ticket(self, model))

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._recheck, self._tick)

    def _tick(self) -> None:
        self._timer = None
        for model in [m for m, state in self._models.items() if state.waiting]:
            self._serve(model)
        if any(state.waiting for state in self._models.values()):
            self._arm()
