"""What to unload: victims to make room for a load, TTL expiry, and defragmentation.

An EvictionPolicy (a plugin, picked by `[eviction] strategy`) only orders candidates;
the Evictor decides who is a candidate at all (ready, idle, unpinned) and how many to
take. The policy orders the candidates of every node a load may go to in one ranking,
so the fleet loses what the policy values least wherever it sits, not the least
valuable model of whichever node the router happened to pick. Everything here is a
pure function of a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import msgspec

from cortex.snapshot import FleetSnapshot, ModelView, NodeView

__all__ = ["DefragPlan", "EvictionPolicy", "Evictor", "Expiry"]


class EvictionPolicy:
    """Base class; plugins subclass it and return it from their register hook."""

    name: ClassVar[str]

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        """The plugin's own settings, validated when config is loaded."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def order(self, candidates: Sequence[ModelView]) -> list[ModelView]:
        """Return `candidates` (all evictable, from every node a load may go to, each
        naming its `node`) in the order they should be evicted: first to go first."""
        raise NotImplementedError


class Expiry(msgspec.Struct, frozen=True):
    node: str
    model: str


class DefragPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Unload `unload`, then load `reload` again (most recently used first)."""

    node: str
    unload: tuple[str, ...]
    reload: tuple[str, ...]


class Evictor:
    def __init__(self, policy: EvictionPolicy, *, defrag_after_cycles: int = 0) -> None:
        self.policy = policy
        self.defrag_after_cycles = defrag_after_cycles

    @staticmethod
    def evictable(node: NodeView) -> list[ModelView]:
        """Models that may go: ready (not loading or unloading), idle, and not pinned."""
        return [m for m in node.models if m.ready and m.idle and not m.pinned]

    def ranking(self, nodes: Iterable[NodeView]) -> list[ModelView]:
        """Every evictable model on `nodes`, each naming its node, in the policy's order:
        one ranking across the fleet, first to go first."""
        return self.policy.order([m if m.node == n.name else msgspec.structs.replace(m, node=n.name)
                                  for n in nodes for m in self.evictable(n)])

    def victims(self, node: NodeView, need: int, ranking: Sequence[ModelView] | None = None
                ) -> tuple[ModelView, ...] | None:
        """The models to unload so that `need` bytes fit, in the order of `ranking` (the
        fleet's, from `ranking()`; by default the node's own); None if they can't."""
        free = node.budget - node.reserved
        if need <= free:
            return ()
        chosen: list[ModelView] = []
        order = self.ranking([node]) if ranking is None else ranking
        for model in (m for m in order if m.node == node.name):
            chosen.append(model)
            free += model.bytes
            if need <= free:
                return tuple(chosen)
        return None

    @staticmethod
    def expired(snapshot: FleetSnapshot) -> list[Expiry]:
        """Models idle for longer than their profile's `ttl` (pinned ones never expire)."""
        return [Expiry(node.name, m.id) for node in snapshot.nodes if node.up
                for m in node.models
                if m.ttl is not None and m.ready and m.idle and not m.pinned
                and m.idle_for >= m.ttl]

    def defrag(self, node: NodeView, *, settle: float = 0.0) -> DefragPlan | None:
        """After `defrag_after_cycles` cycles, unload every idle unpinned model and reload
        the hot set (those same models) so fragmented device memory is returned. Not
        before each of them has sat idle for `settle` seconds: a model just loaded (or
        just used) is not loaded again at once."""
        if not self.defrag_after_cycles or node.cycles < self.defrag_after_cycles or not node.up:
            return None
        if any(m.state in ("loading", "unloading") for m in node.models):
            return None
        idle = self.evictable(node)
        if not idle or any(m.idle_for < settle for m in idle):
            return None
        hot = sorted(idle, key=lambda m: -m.last_used)
        return DefragPlan(node=node.name, unload=tuple(m.id for m in idle),
                          reload=tuple(m.id for m in hot))
