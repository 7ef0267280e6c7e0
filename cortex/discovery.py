"""Discovery: where neurons come from besides the `[[neurons]]` list.

A DiscoverySource (a plugin, picked by `[[discovery]] source`) answers one question,
again and again: which neurons are there now? The gateway (cortex.gateway.discovery)
asks it every `interval`, sooner when the answer says it expires sooner (a DNS TTL),
keeps the last good answer when asking fails, lets a node missing from an answer
linger before it is drained, and hands the fleet the union with the static list.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

__all__ = ["Discovered", "DiscoverySource", "Found"]


class Found(msgspec.Struct, frozen=True):
    """One neuron a source found: its node name (the same on every gateway replica that
    asks the same source, since routing hashes it) and `http://host:port`."""

    name: str
    endpoint: str


class Discovered(msgspec.Struct, frozen=True, kw_only=True):
    """A source's answer: every neuron there is now, and for how many seconds the answer
    holds (`ttl`: a DNS record's, say; None: until the source's interval is up)."""

    nodes: tuple[Found, ...]
    ttl: float | None = None


class DiscoverySource:
    """Base class; plugins subclass it and return it from `register_discovery_sources`.
    One instance per `[[discovery]]` table, built with its `[discovery.options]`."""

    name: ClassVar[str]

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        """The source's own settings; `interval`: seconds between two questions."""

        interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @property
    def interval(self) -> float:
        return self.options.interval

    @property
    def origin(self) -> str:
        """Where its nodes come from, as /admin/fleet and `cortex status` show it."""
        return self.name

    async def discover(self) -> Discovered:
        """Every neuron there is now. Raise (any exception) when the answer cannot be
        had: the gateway keeps the last good set and asks again after `interval`."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the source holds (sockets, files); called once, at the end."""
