"""Default eviction policies: `lru`, `priority` and `cost`.

Each orders the evictable models of every node a load may go to in one ranking, so the
fleet loses the model the policy values least, wherever it sits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cortex import EvictionPolicy, ModelView, hookimpl

__all__ = ["CostPolicy", "LRUPolicy", "PriorityPolicy"]

# A model never seen loading is guessed to load at this many seconds per GiB, plus one.
_COLD_SECONDS_PER_GIB = 4.0


class LRUPolicy(EvictionPolicy):
    """Least recently used first, fleet-wide."""

    name = "lru"

    def order(self, candidates: Sequence[ModelView]) -> list[ModelView]:
        return sorted(candidates, key=lambda m: (m.last_used, m.node, m.id))


class PriorityPolicy(EvictionPolicy):
    """Lowest `priority` first; least recently used among equals."""

    name = "priority"

    def order(self, candidates: Sequence[ModelView]) -> list[ModelView]:
        return sorted(candidates, key=lambda m: (m.priority, m.last_used, m.node, m.id))


def reload_cost(model: ModelView) -> float:
    """Seconds of loading per second the fleet can expect to spend bringing `model` back:
    its load time times the requests per second that would want it."""
    seconds = model.load_seconds if model.load_seconds is not None else \
        1.0 + _COLD_SECONDS_PER_GIB * model.bytes / 2**30
    return seconds * model.request_rate


class CostPolicy(EvictionPolicy):
    """Cheapest to lose first: the expected cost of loading a model again (its measured
    load time times its recent request rate) per byte its eviction frees, so a big model
    nobody asks for goes before a small hot one; least recently used among equals."""

    name = "cost"

    def order(self, candidates: Sequence[ModelView]) -> list[ModelView]:
        return sorted(candidates, key=lambda m: (reload_cost(m) / max(1, m.bytes),
                                                 m.last_used, m.node, m.id))


@hookimpl
def register_eviction_policies() -> Iterable[type[EvictionPolicy]]:
    return [LRUPolicy, PriorityPolicy, CostPolicy]
