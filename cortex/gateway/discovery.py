"""Membership: the fleet's neurons, from `[[neurons]]` and every `[[discovery]]` source.

Each source runs in a task of its own that asks it every interval (sooner when its
answer expires sooner, never more often than MIN_WAIT), keeps the last good answer
when asking fails, and lets a node missing from an answer linger `linger` seconds
before the fleet drains it, so a record that flaps does not flap the fleet. After
each answer, the union goes to Fleet.configure: the static list first, then the
sources in order (a name already taken is skipped, with a warning, once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from cortex.config import DiscoveryConfig, GatewayConfig, NeuronEntry
from cortex.discovery import DiscoverySource, Found
from cortex.gateway.fleet import Fleet
from cortex.plugins import Plugins

__all__ = ["MIN_WAIT", "Membership"]

log = logging.getLogger("cortex.gateway.discovery")
#: The least seconds between two questions to one source, whatever a TTL says (0, often).
MIN_WAIT = 0.5


class _Feed:
    """One `[[discovery]]` table's source, its task, and what it last found."""

    def __init__(self, table: DiscoveryConfig, source: DiscoverySource) -> None:
        self.table = table
        self.source = source
        self.found: dict[str, Found] = {}
        self.missing_since: dict[str, float] = {}  # found before, absent from the last answer
        self.failing = False
        self.answers = self.failures = 0
        self.last_error: str | None = None
        self.task: asyncio.Task[None] | None = None

    def take(self, nodes: tuple[Found, ...], now: float) -> None:
        """An answer: new and changed nodes at once, absent ones after `linger`."""
        fresh = {n.name: n for n in nodes}
        for name in list(self.found):
            if name in fresh:
                self.missing_since.pop(name, None)
            elif now - self.missing_since.setdefault(name, now) >= self.table.linger:
                del self.found[name], self.missing_since[name]
        self.found.update(fresh)

    def describe(self) -> dict[str, Any]:
        return {"origin": self.source.origin, "source": self.table.source,
                "nodes": sorted(self.found), "lingering": sorted(self.missing_since),
                "answers": self.answers, "failures": self.failures, "failing": self.failing,
                "last_error": self.last_error}

    def entries(self) -> list[NeuronEntry]:
        return [NeuronEntry(name=f.name, endpoint=f.endpoint, secret=self.table.secret)
                for f in self.found.values()]


class Membership:
    """Keeps the fleet's node list: the config's, plus what discovery finds."""

    def __init__(self, fleet: Fleet, plugins: Plugins) -> None:
        self._fleet = fleet
        self._plugins = plugins
        self._static: list[NeuronEntry] = []
        self._feeds: list[_Feed] = []
        self._clashes: set[tuple[str, str]] = set()
        self._origins: dict[str, str] = {}  # every name seen: where it last came from

    def configure(self, config: GatewayConfig) -> None:
        """Take a config (at start and on each reload): a source whose table changed is
        replaced and starts from nothing (its nodes go, unless the new one finds them
        too); the others keep running and keep what they found. LiveConfig checked the
        options already (a reload with bad ones is refused)."""
        self._static = list(config.neurons)
        old = list(self._feeds)
        feeds: list[_Feed] = []
        for table, source in zip(config.discovery, self._plugins.discovery(config.discovery),
                                 strict=True):
            feed = next((f for f in old if f.table == table), None)
            if feed is None:
                feed = _Feed(table, source)
                feed.task = asyncio.create_task(self._run(feed),
                                                name=f"discovery:{source.origin}")
            else:
                old.remove(feed)
            feeds.append(feed)
        for feed in old:
            self._stop(feed)
        self._feeds = feeds
        self._apply()

    def _stop(self, feed: _Feed) -> None:
        if feed.task is not None:
            feed.task.cancel()

    def describe(self) -> list[dict[str, Any]]:
        """Each source: what it found, what lingers, and how asking it goes (/admin/fleet)."""
        return [feed.describe() for feed in self._feeds]

    async def close(self) -> None:
        feeds, self._feeds = self._feeds, []
        for feed in feeds:
            self._stop(feed)
            if feed.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await feed.task

    def _apply(self) -> None:
        entries: dict[str, NeuronEntry] = {e.name: e for e in self._static}
        origins = dict.fromkeys(entries, "config")
        for feed in self._feeds:
            for entry in feed.entries():
                if entry.name in entries:
                    clash = (feed.source.origin, entry.name)
                    if clash not in self._clashes:
                        self._clashes.add(clash)
                        log.warning("%s found neuron %s, a name %s already has: skipped",
                                    feed.source.origin, entry.name, origins[entry.name])
                    continue
                entries[entry.name] = entry
                origins[entry.name] = feed.source.origin
        self._origins.update(origins)
        self._fleet.configure(entries.values())

    def origin(self, name: str) -> str:
        """Where node `name` came from: `config`, or a source's origin (/admin/fleet)."""
        return self._origins.get(name, "config")

    async def _run(self, feed: _Feed) -> None:
        source = feed.source
        try:
            while True:
                wait = source.interval
                try:
                    answer = await source.discover()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # kept: the last good set
                    feed.last_error = str(exc) or type(exc).__name__
                    if not feed.failing:
                        log.warning("discovery %s failed, keeping its %d nodes: %s",
                                    source.origin, len(feed.found), feed.last_error)
                    feed.failing = True
                    feed.failures += 1
                else:
                    if feed.failing:
                        log.info("discovery %s answers again", source.origin)
                    feed.failing = False
                    feed.answers += 1
                    feed.take(answer.nodes, time.monotonic())
                    if answer.ttl is not None:
                        wait = min(wait, answer.ttl)
                    self._apply()
                # A TTL of 0 (common) must not make a busy loop of it.
                await asyncio.sleep(max(wait, min(MIN_WAIT, source.interval)))
        finally:
            with contextlib.suppress(Exception):
                await source.close()

