"""Reconciler: the background loop that keeps the fleet as the configuration asks.

Each pass loads pinned models that are resident nowhere, unloads models idle past
their `ttl`, and defragments nodes after `defrag_after_cycles` load/unload cycles.
What to do is decided by the pure Evictor functions over a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from cortex.errors import CortexError
from cortex.evictor import DefragPlan

if TYPE_CHECKING:
    from cortex.gateway.app import Gateway

__all__ = ["Reconciler"]

log = logging.getLogger("cortex.gateway.reconciler")
_PIN_BACKOFF = 10.0


class Reconciler:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
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
        await self.gateway.fleet.first_round(timeout=10.0)
        live = self.gateway.live
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
        gateway = self.gateway
        snapshot = gateway.snapshot()
        for expiry in gateway.router.evictor.expired(snapshot):
            if gateway.loader.job(expiry.model) is None and expiry.node not in self._defragging:
                with contextlib.suppress(CortexError):
                    await gateway.fleet.unload(expiry.node, expiry.model, reason="ttl")
        now = time.monotonic()
        for profile in gateway.profiles:
            if not profile.pinned or profile.id in self._pinning \
                    or self._pin_after.get(profile.id, 0.0) > now:
                continue
            resident = [m for node, m in snapshot.placements_of(profile.id)
                        if m.state in ("ready", "loading")
                        and (not profile.neurons or node.name in profile.neurons)]
            if not resident and gateway.loader.job(profile.id) is None:
                self._pinning.add(profile.id)
                self._spawn(self._pin(profile.id), f"pin:{profile.id}")
        for node in snapshot.nodes:
            if node.draining:  # it would refuse the reloads
                continue
            plan = gateway.router.evictor.defrag(node)
            if plan is not None and node.name not in self._defragging:
                self._defragging.add(node.name)
                self._spawn(self._defrag(plan), f"defrag:{node.name}")

    async def _pin(self, model: str) -> None:
        gateway = self.gateway
        try:
            profile = gateway.profiles.get(model)
            if profile is None or not profile.pinned:
                return
            deadline = time.monotonic() + gateway.settings.load_timeout
            node = await gateway.place(profile, deadline=deadline, keep=True)
            await gateway.fleet.pin(node, model, True)  # for the other gateway replicas
            log.info("pinned model %s is loaded on %s", model, node)
        except CortexError as exc:
            log.warning("cannot load pinned model %s (trying again in %.0fs): %s", model,
                        _PIN_BACKOFF, exc.message)
            self._pin_after[model] = time.monotonic() + _PIN_BACKOFF
        finally:
            self._pinning.discard(model)

    async def _defrag(self, plan: DefragPlan) -> None:
        gateway = self.gateway
        log.info("defragmenting %s: unloading %s", plan.node, ", ".join(plan.unload))
        try:
            gateway.fleet.reset_cycles(plan.node)
            for model in plan.unload:
                with contextlib.suppress(CortexError):
                    await gateway.fleet.unload(plan.node, model, reason="defrag")
            for model in plan.reload:
                profile = gateway.profiles.get(model)
                if profile is None or gateway.loader.job(model) is not None:
                    continue
                deadline = time.monotonic() + gateway.settings.load_timeout
                try:
                    await gateway.place(profile, deadline=deadline, keep=True, only=plan.node)
                except CortexError as exc:
                    log.warning("defrag could not reload %s on %s: %s", model, plan.node,
                                exc.message)
            gateway.fleet.reset_cycles(plan.node)
        finally:
            self._defragging.discard(plan.node)
