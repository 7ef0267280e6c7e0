"""Lifecycle: the loads, unloads and keep-alives a dialect asks for (GatewayAPI's
`load`, `unload`, `set_ttl`), as the admin API does them, for clients whose API has
them (Ollama's `/api/pull`, `keep_alive`).

A load is the admin API's (kept when the client leaves); while it runs the node is
polled more often than usual so the progress the neuron reports reaches the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from cortex.dialect import LoadProgress
from cortex.errors import Conflict

if TYPE_CHECKING:
    from cortex.gateway.fleet import Fleet
    from cortex.gateway.loader import Loader
    from cortex.gateway.placement import Placer
    from cortex.gateway.state import LiveConfig

__all__ = ["Lifecycle"]

#: How often a load's progress is asked of its node.
_PROGRESS_POLL = 0.25


class Lifecycle:
    def __init__(self, placer: Placer, fleet: Fleet, loader: Loader,
                 live: LiveConfig) -> None:
        self._placer = placer
        self._fleet = fleet
        self._loader = loader
        self._live = live

    async def load(self, model: str) -> AsyncIterator[LoadProgress]:
        placer = self._placer
        # A model with no profile here (a neuron's own preload) is ready where it is
        # loaded, and cannot be loaded anywhere else: the placer says which.
        profile, loadable = placer.resolve(model)
        deadline = time.monotonic() + self._live.settings.load_timeout
        task = asyncio.ensure_future(placer.place(profile, loadable=loadable,
                                                  deadline=deadline, keep=True))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=_PROGRESS_POLL)
                if not task.done():
                    yield self._progress(profile.id)
            node = task.result()
        finally:
            task.cancel()  # our wait only: the load itself is kept (keep=True)
        yield LoadProgress(model=profile.id, state="ready", node=node, fraction=1.0,
                           bytes=self._bytes(profile.id, node))

    def _progress(self, model: str) -> LoadProgress:
        job = self._loader.job(model)
        if job is None:
            return LoadProgress(model=model, state="loading")
        self._fleet.poke(job.node)  # the neuron's progress, sooner than the next poll
        fraction = 0.0
        for node in self._fleet.describe():
            if node["name"] == job.node:
                fraction = next((m.get("load_progress", 0.0) for m in node["models"]
                                 if m["id"] == model), 0.0)
        return LoadProgress(model=model, state="loading", node=job.node,
                            fraction=max(0.0, min(1.0, fraction)),
                            bytes=self._bytes(model, job.node))

    def _bytes(self, model: str, node: str) -> int:
        return next((m.bytes for n, m in self._placer.snapshot().placements_of(model)
                     if n.name == node), 0)

    async def unload(self, model: str) -> list[str]:
        profile, _ = self._placer.resolve(model)
        if profile.pinned:
            raise Conflict(f"model `{profile.id}` is pinned: unpin it first")
        nodes = [n.name for n, m in self._placer.snapshot().placements_of(profile.id)
                 if m.state in ("ready", "loading")]
        for node in nodes:
            await self._fleet.unload(node, profile.id, reason="client")
        return nodes

    def set_ttl(self, model: str, ttl: float | None) -> None:
        profile, loadable = self._placer.resolve(model)
        if loadable:  # a model with no profile here has no ttl of ours either
            self._live.set_ttl(profile.id, ttl)
