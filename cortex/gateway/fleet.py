"""Fleet: the gateway's cached view of every neuron, kept fresh by polling and by replies.

Neurons are authoritative. The view holds what they last said plus what this gateway
is doing right now (requests in flight, loads and unloads it has started), so a
restarted gateway or a second replica rebuilds the same picture from the neurons.
What is known of each neuron is a Node (cortex.gateway.nodes); the memory estimates
and load times asked of them are kept by `estimates` (cortex.gateway.estimates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any

from cortex.config import GatewaySection, NeuronEntry
from cortex.errors import CortexError, Unavailable
from cortex.gateway.client import NeuronClient
from cortex.gateway.estimates import Estimates
from cortex.gateway.nodes import Lost, Node, active
from cortex.gateway.profiles import ProfileIndex
from cortex.records import FleetEvent
from cortex.records import FleetEventKind as EventKind
from cortex.snapshot import FleetSnapshot
from cortex.types import ModelStatus, NodeStatus

__all__ = ["Fleet"]

log = logging.getLogger("cortex.gateway.fleet")
class Fleet:
    def __init__(self, settings: GatewaySection, hook: Any) -> None:
        self.settings = settings
        self._hook = hook
        self._nodes: dict[str, Node] = {}
        self.estimates = Estimates(self._nodes.get)
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._pin_watchers: list[Callable[[str, bool], None]] = []

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- membership -----------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._nodes)

    def configure(self, entries: Iterable[NeuronEntry]) -> None:
        """Add, replace and retire nodes; requests in flight on a retired node finish."""
        wanted = {e.name: e for e in entries}
        for name, node in list(self._nodes.items()):
            if wanted.get(name) != node.entry:
                self._retire(self._nodes.pop(name))
                log.info("neuron %s removed from the fleet", name)
        for name, entry in wanted.items():
            if name not in self._nodes:
                node = Node(entry, NeuronClient(
                    entry, connect_timeout=self.settings.connect_timeout,
                    request_timeout=self.settings.request_timeout))
                self._nodes[name] = node
                node.task = asyncio.create_task(self._poll_loop(node), name=f"poll:{name}")
                log.info("neuron %s (%s) joined the fleet", name, entry.endpoint)

    def _retire(self, node: Node) -> None:
        node.retired = True
        if node.task is not None:
            node.task.cancel()
        if node.users == 0:
            self._later(node.client.close())

    async def close(self) -> None:
        self._closing = True
        nodes = list(self._nodes.values())
        self._nodes.clear()
        for node in nodes:
            node.retired = True
            if node.task is not None:
                node.task.cancel()
        for node in nodes:
            if node.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await node.task
            await node.client.close()

    def _node(self, name: str) -> Node:
        node = self._nodes.get(name)
        if node is None:
            raise Unavailable(f"neuron `{name}` is not in the fleet")
        return node

    def client(self, name: str) -> NeuronClient:
        return self._node(name).client

    def has(self, name: str) -> bool:
        return name in self._nodes

    def on_pin(self, watch: Callable[[str, bool], None]) -> None:
        """Have `watch(model, pinned)` called when a neuron's pin flag on a copy changes,
        or a copy is first seen pinned: some replica pinned or unpinned it there."""
        self._pin_watchers.append(watch)

    def _saw_pin(self, before: ModelStatus | None, after: ModelStatus) -> None:
        if after.pinned != (before is not None and before.pinned):
            for watch in self._pin_watchers:
                watch(after.id, after.pinned)

    # --- polling --------------------------------------------------------------------------

    async def _poll_loop(self, node: Node) -> None:
        while not node.retired:
            try:
                await self._poll(node)
            except Exception:  # a bug must not end the polling of a node for good
                log.exception("polling %s failed", node.entry.name)
            node.wake.clear()
            interval = self.settings.poll_interval * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.wake.wait(), interval)

    async def _poll(self, node: Node) -> None:
        asked = Counter(node.active)
        try:
            status = await node.client.status(timeout=self.settings.poll_timeout)
        except CortexError as exc:
            self._failed(node, exc)
        else:
            if not node.retired:
                self._apply_status(node, status, asked)
        node.polled = True

    def poke(self, name: str) -> None:
        """Poll a node now instead of at its next interval."""
        node = self._nodes.get(name)
        if node is not None:
            node.wake.set()

    async def pin(self, name: str, model: str, pinned: bool) -> bool:
        """Record the pin on the neuron holding the copy, where every replica sees it.
        Best effort: this gateway holds its own pins either way, and a neuron that cannot
        (gone, unreachable, a version before /models/pin) only costs the other replicas."""
        try:
            status = await self._node(name).client.pin(model, pinned)
        except CortexError as exc:
            log.warning("could not %s %s on %s: %s", "pin" if pinned else "unpin", model,
                        name, exc.message)
            return False
        self.apply_model(name, status)
        return True

    async def drain(self, name: str, draining: bool) -> NodeStatus:
        """Tell a neuron to drain (or stop draining) and take its answer as a poll's."""
        node = self._node(name)
        status = await node.client.drain(draining)
        self._apply_status(node, status)
        return status

    async def refresh(self, name: str) -> None:
        """Poll a node and wait for the answer."""
        node = self._nodes.get(name)
        if node is not None:
            await self._poll(node)

    async def first_round(self, timeout: float) -> None:
        """Wait until every node has been polled once (answered or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(n.polled for n in self._nodes.values()):
            await asyncio.sleep(0.02)

    def _apply_status(self, node: Node, status: NodeStatus,
                      asked: Counter[str] | None = None) -> None:
        """Take a neuron's answer; `asked`: this gateway's requests when it asked. One of
        them that ended while the answer travelled was counted by the neuron, and must
        not pass for another gateway's: its model would look busy (not evictable) until
        the next poll, and a request for a model that needs its room would be refused."""
        now = time.monotonic()
        previous = node.models
        if node.status is not None and node.status.draining != status.draining:
            self.emit("draining" if status.draining else "undrained", node.entry.name)
        node.status = status
        node.models = {m.id: m for m in status.models}
        node.active_at_poll = Counter(node.active) | (asked or Counter())
        for model in status.models:
            before = previous.get(model.id)
            busy = model.in_flight + model.queued > 0 or node.active[model.id] > 0
            if busy or before is None or before.last_used != model.last_used:
                node.idle_since[model.id] = now
            self.estimates.loaded(model.id, model.load_seconds)
            self._saw_pin(before, model)
            self._noticed(node.entry.name, before, model)
        for gone in set(node.idle_since) - set(node.models):
            del node.idle_since[gone]
        for gone in set(node.used_at) - set(node.models):
            del node.used_at[gone]
        self._succeeded(node)

    def _succeeded(self, node: Node) -> None:
        node.failures = 0
        node.last_error = None
        if not node.up:
            node.up = True
            log.info("neuron %s is up", node.entry.name)
            self.emit("node_up", node.entry.name)

    def _failed(self, node: Node, exc: CortexError, *, died: bool = False) -> None:
        node.failures += 1
        said, node.last_error = node.last_error, exc.message
        if not node.up and node.failures >= self.settings.down_after \
                and (node.failures == self.settings.down_after or said != exc.message):
            # A node that never came up (a wrong endpoint, a secret it refuses) says why,
            # once, and again when the reason changes; else it stays down in silence.
            log.warning("neuron %s is not up: %s", node.entry.name, exc.message)
        if node.up and node.failures >= self.settings.down_after:
            node.up = False
            node.models = {}
            node.idle_since.clear()
            node.used_at.clear()
            self.estimates.forget(node.entry.name)
            log.warning("neuron %s is down: %s", node.entry.name, exc.message)
            self.emit("node_down", node.entry.name, reason=exc.message)
            for lost in list(node.watchers):
                lost(exc, died)

    def watch(self, name: str, lost: Lost) -> Callable[[], None]:
        """Have `lost` called if the node goes down (a request in flight there stops
        waiting for it); returns what stops the watch."""
        node = self._nodes.get(name)
        if node is None:  # retired by a reload: its requests finish as they can
            return lambda: None
        node.watchers.add(lost)
        return lambda: node.watchers.discard(lost)

    async def survived(self, name: str, since: float) -> bool:
        """Whether the neuron sent a request at `since` (monotonic) is still the process
        that took it: it answers a poll and was up before then. If not, it died holding
        that request, and a node that does not answer is marked down at once."""
        node = self._nodes.get(name)
        if node is None:
            return False
        asked = time.monotonic()
        try:
            status = await node.client.status(timeout=self.settings.poll_timeout)
        except CortexError as exc:
            node.failures = max(node.failures, self.settings.down_after - 1)
            self._failed(node, exc, died=True)
            node.wake.set()
            return False
        if not node.retired:
            self._apply_status(node, status)
        if status.uptime_seconds < asked - since:
            log.warning("neuron %s restarted while it held a request", name)
            return False
        return True

    def report_failure(self, name: str, exc: CortexError) -> None:
        """A request to the node got no answer: count it like a failed poll, and re-poll."""
        node = self._nodes.get(name)
        if node is not None:
            self._failed(node, exc)
            node.wake.set()

    def report_success(self, name: str) -> None:
        node = self._nodes.get(name)
        if node is not None and node.up:
            node.failures = 0

    # --- updates from replies ----------------------------------------------------------------

    def apply_model(self, name: str, status: ModelStatus) -> None:
        node = self._nodes.get(name)
        if node is None:
            return
        self._noticed(name, node.models.get(status.id), status)
        self._saw_pin(node.models.get(status.id), status)
        node.models[status.id] = status
        node.idle_since[status.id] = time.monotonic()
        self.estimates.loaded(status.id, status.load_seconds)

    def _noticed(self, name: str, before: ModelStatus | None, after: ModelStatus) -> None:
        """Tell of a pin or an unpin seen in a neuron's answer (any replica's)."""
        if before is not None and before.pinned != after.pinned:
            self.emit("pinned" if after.pinned else "unpinned", name, model=after.id)

    def drop_model(self, name: str, model: str) -> None:
        node = self._nodes.get(name)
        if node is not None:
            node.models.pop(model, None)
            node.idle_since.pop(model, None)
            node.used_at.pop(model, None)

    def begin_load(self, name: str, model: str, needs: int) -> None:
        self._node(name).loading[model] = needs

    def end_load(self, name: str, model: str) -> None:
        node = self._nodes.get(name)
        if node is not None:
            node.loading.pop(model, None)

    def reset_cycles(self, name: str) -> None:
        node = self._nodes.get(name)
        if node is not None:
            node.cycles = 0

    @contextlib.contextmanager
    def using(self, name: str, model: str) -> Iterator[NeuronClient]:
        """Count one request in flight on a node; a retired node closes after its last one."""
        node = self._node(name)
        node.active[model] += 1
        node.users += 1
        try:
            yield node.client
        finally:
            node.active[model] -= 1
            node.users -= 1
            node.idle_since[model] = time.monotonic()
            node.used_at[model] = time.time()
            if node.retired and node.users == 0:
                self._later(node.client.close())

    async def unload(self, name: str, model: str, *, reason: str, force: bool = False,
                     evicted: bool = False) -> ModelStatus | None:
        """Unload a model and update the view; the request cannot be cut short by a cancel
        (an unload interrupted half-way would leave the neuron's model stuck unloading).
        `evicted`: making room for a load (`reason` names the eviction policy)."""
        node = self._node(name)
        node.unloading.add(model)

        async def run() -> ModelStatus | None:
            try:
                status = await node.client.unload(model, force=force)
            except CortexError as exc:
                if exc.status == 404:
                    self.drop_model(name, model)
                    return None
                raise
            finally:
                node.unloading.discard(model)
            self.drop_model(name, model)
            node.cycles += 1
            kind: EventKind = "evicted" if evicted else "unloaded"
            self.emit(kind, name, model=model, reason=reason)
            log.info("%s %s on %s (%s)", kind, model, name, reason)
            return status

        return await asyncio.shield(asyncio.ensure_future(run()))

    # --- views ----------------------------------------------------------------------------------

    def emit(self, kind: EventKind, node: str, **fields: Any) -> None:
        """Tell the fleet_event observers; `fields` are FleetEvent's own."""
        try:
            self._hook.fleet_event(event=FleetEvent(kind=kind, node=node, **fields))
        except Exception:
            log.exception("a fleet_event observer failed")

    def snapshot(self, profiles: ProfileIndex,
                 rates: Mapping[str, float] | None = None) -> FleetSnapshot:
        """The view under `profiles`; `rates` (requests per second per model) feed the
        eviction policies that weigh demand."""
        now = time.monotonic()
        load_seconds = self.estimates.load_seconds
        return FleetSnapshot(nodes=tuple(node.view(profiles, now, rates=rates,
                                                   load_seconds=load_seconds)
                                         for node in self._nodes.values()))

    def backlog(self, model_id: str) -> int:
        """Requests beyond the slots of the model's ready replicas, as a snapshot would
        count them; admission asks on every request, so without building one."""
        total = 0
        for node in self._nodes.values():
            model = node.models.get(model_id)
            if model is not None and model.state == "ready" and model_id not in node.unloading:
                total += max(0, active(node, model) - model.slots)
        return total

    def ready_slots(self, model_id: str) -> tuple[int, int]:
        """The slots of the model's copies that take requests now (ready, on a live node
        that is not draining), and how many copies that is (cortex.gateway.fairshare)."""
        slots = copies = 0
        for node in self._nodes.values():
            model = node.models.get(model_id)
            if model is not None and model.state == "ready" and node.up \
                    and model_id not in node.unloading \
                    and not (node.status is not None and node.status.draining):
                slots += model.slots
                copies += 1
        return slots, copies

    def describe(self) -> list[dict[str, Any]]:
        """Everything known about each node, for /admin/fleet and `cortex status`."""
        return [node.describe() for node in self._nodes.values()]
