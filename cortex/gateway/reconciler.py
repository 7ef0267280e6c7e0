"""Reconciler: the background loop that keeps the fleet as the configuration asks.

Each pass loads pinned models that are resident nowhere (and records the pin on the
neuron of one that a request loaded first), unloads models idle past their `ttl`, and
defragments nodes after `defrag_after_cycles` load/unload cycles: one node at a time
(turning defrag on by a reload must not empty every node's idle models at once), and
only once every model it would reload has sat idle for a few polls (a model loaded
moments ago is not unloaded and loaded again). What to do is decided by the pure
Evictor functions over a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from cortex.errors import CortexError
from cortex.evictor import DefragPlan
from cortex.gateway.profiles import ProfileIndex

if TYPE_CHECKING:
    from cortex.gateway.fleet import Fleet
    from cortex.gateway.loader import Loader
    from cortex.gateway.placement import Placer
    from cortex.gateway.state import LiveConfig

__all__ = ["Reconciler"]

log = logging.getLogger("cortex.gateway.reconciler")
_PIN_BACKOFF = 10.0
#: Polls a node's idle models must sit idle before a defragmentation reloads them.
_DEFRAG_SETTLE_POLLS = 5


class Reconciler:
    """Runs a pass every `poll_interval`, and at once after `live` changes (a reload, a
    runtime pin); loads go through `placer`, unloads through `fleet`."""

    def __init__(self, placer: Placer, fleet: Fleet, loader: Loader, live: LiveConfig) -> None:
        self._placer = placer
        self._fleet = fleet
        self._loader = loader
        self._live = live
        self._task: asyncio.Task[None] | None = None
        self._pinning: set[str] = set()
        self._pin_after: dict[str, float] = {}
        self._defragging: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciler")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        await self._fleet.first_round(timeout=10.0)
        live = self._live
        while True:
            seen = live.version  # a change during the pass brings the next one at once
            try:
                await self.tick()
            except Exception:
                log.exception("reconciler pass failed")
            await live.changed(seen, live.settings.poll_interval)

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def tick(self) -> None:
        live, loader = self._live, self._loader
        snapshot = self._placer.snapshot()
        for expiry in live.router.evictor.expired(snapshot):
            if loader.job(expiry.model) is None and expiry.node not in self._defragging:
                with contextlib.suppress(CortexError):
                    await self._fleet.unload(expiry.node, expiry.model, reason="ttl")
        now = time.monotonic()
        neurons = self._fleet.snapshot(ProfileIndex([]))  # the pins the neurons record
        for profile in live.profiles:
            if not profile.pinned or profile.id in self._pinning \
                    or self._pin_after.get(profile.id, 0.0) > now:
                continue
            resident = [(node.name, m) for node, m in snapshot.placements_of(profile.id)
                        if m.state in ("ready", "loading")
                        and (not profile.neurons or node.name in profile.neurons)]
            if not resident and loader.job(profile.id) is None:
                self._pinning.add(profile.id)
                self._spawn(self._pin(profile.id), f"pin:{profile.id}")
            elif not any(m.pinned for n, m in neurons.placements_of(profile.id)):
                # Loaded (by a request, say) but pinned on no neuron: record it there,
                # so that every replica keeps it, not only those whose profile pins it.
                ready = next((name for name, m in resident if m.ready), None)
                if ready is not None:
                    self._pinning.add(profile.id)
                    self._spawn(self._record_pin(profile.id, ready), f"pin:{profile.id}")
        settle = _DEFRAG_SETTLE_POLLS * live.settings.poll_interval
        for node in snapshot.nodes:
            if self._defragging:  # one node at a time; the others keep their models
                break
            if node.draining:  # it would refuse the reloads
                continue
            plan = live.router.evictor.defrag(node, settle=settle)
            if plan is not None:
                self._defragging.add(node.name)
                self._spawn(self._defrag(plan), f"defrag:{node.name}")

    async def _pin(self, model: str) -> None:
        try:
            profile = self._live.profiles.get(model)
            if profile is None or not profile.pinned:
                return
            deadline = time.monotonic() + self._live.settings.load_timeout
            node = await self._placer.place(profile, deadline=deadline, keep=True)
            await self._fleet.pin(node, model, True)  # for the other gateway replicas
            log.info("pinned model %s is loaded on %s", model, node)
        except CortexError as exc:
            log.warning("cannot load pinned model %s (trying again in %.0fs): %s", model,
                        _PIN_BACKOFF, exc.message)
            self._pin_after[model] = time.monotonic() + _PIN_BACKOFF
        finally:
            self._pinning.discard(model)

    async def _record_pin(self, model: str, node: str) -> None:
        try:
            if not await self._fleet.pin(node, model, True):
                self._pin_after[model] = time.monotonic() + _PIN_BACKOFF
        finally:
            self._pinning.discard(model)

    async def _defrag(self, plan: DefragPlan) -> None:
        fleet, live = self._fleet, self._live
        log.info("defragmenting %s: unloading %s", plan.node, ", ".join(plan.unload))
        try:
            fleet.reset_cycles(plan.node)
            for model in plan.unload:
                with contextlib.suppress(CortexError):
                    await fleet.unload(plan.node, model, reason="defrag")
            for model in plan.reload:
                profile = live.profiles.get(model)
                if profile is None or self._loader.job(model) is not None:
                    continue
                deadline = time.monotonic() + live.settings.load_timeout
                try:
                    await self._placer.place(profile, deadline=deadline, keep=True,
                                             only=plan.node)
                except CortexError as exc:
                    log.warning("defrag could not reload %s on %s: %s", model, plan.node,
                                exc.message)
            fleet.reset_cycles(plan.node)
        finally:
            self._defragging.discard(plan.node)
