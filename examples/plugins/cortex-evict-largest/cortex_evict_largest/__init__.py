"""`largest-first`: a third-party cortex eviction policy, loaded through the `cortex`
entry-point group and written against the public API only."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cortex import EvictionPolicy, ModelView, hookimpl

__all__ = ["LargestFirst"]


class LargestFirst(EvictionPolicy):
    """Evict the model with the largest memory reservation first.

    The evictor takes candidates in this order until the new load fits, so freeing the
    biggest model first makes room with the fewest unloads (LRU may unload several small,
    recently idle models instead). Ties go to the least recently used. With
    `stale_after`, models idle for less than that many seconds go only after the others,
    so a big model that was just used is not the first to go.
    """

    name = "largest-first"

    class Options(EvictionPolicy.Options):
        # Seconds idle before a model counts as stale; fresher models go last. 0: all stale.
        stale_after: float = 0.0

    options: Options

    def order(self, candidates: Sequence[ModelView]) -> list[ModelView]:
        return sorted(candidates, key=lambda m: (
            m.idle_for < self.options.stale_after, -m.bytes, m.last_used, m.id))


@hookimpl
def register_eviction_policies() -> Iterable[type[EvictionPolicy]]:
    return [LargestFirst]
