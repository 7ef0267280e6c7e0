"""Default eviction policies: `lru` and `priority`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cortex import EvictionPolicy, ModelView, hookimpl

__all__ = ["LRUPolicy", "PriorityPolicy"]


class LRUPolicy(EvictionPolicy):
    """Least recently used first."""

    name = "lru"

    def order(self, candidates: Sequence[ModelView]) -> list[ModelView]:
        return sorted(candidates, key=lambda m: (m.last_used, m.id))


class PriorityPolicy(EvictionPolicy):
    """Lowest `priority` first; least recently used among equals."""

    name = "priority"

    def order(self, candidates: Sequence[ModelView]) -> list[ModelView]:
        return sorted(candidates, key=lambda m: (m.priority, m.last_used, m.id))


@hookimpl
def register_eviction_policies() -> Iterable[type[EvictionPolicy]]:
    return [LRUPolicy, PriorityPolicy]
