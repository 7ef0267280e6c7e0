"""Default routing strategies: `affinity` (KV reuse first) and `least-loaded`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cortex import Placement, Replica, RouteRequest, RoutingStrategy, hookimpl

__all__ = ["AffinityStrategy", "LeastLoadedStrategy"]


class AffinityStrategy(RoutingStrategy):
    """A ready node with a free slot (the conversation's last node first, for KV reuse),
    then the least-queued ready node; places new copies where nothing must be evicted,
    else where the victims are those the eviction policy ranks lowest fleet-wide, then
    where the fewest bytes are evicted and the most memory stays free."""

    name = "affinity"

    def rank_replicas(self, request: RouteRequest, replicas: Sequence[Replica]) -> list[Replica]:
        return sorted(replicas, key=lambda r: (
            not r.model.free_slot,
            r.node.name != request.prefix_node,
            r.model.backlog,
            r.model.active / r.model.slots,
            r.node.name))

    def rank_placements(self, request: RouteRequest,
                        placements: Sequence[Placement]) -> list[Placement]:
        return sorted(placements, key=lambda p: (
            p.rank, sum(v.bytes for v in p.victims), -p.free_after, p.node.name))


class LeastLoadedStrategy(RoutingStrategy):
    """The replica and the node with the least work in flight; ignores conversation affinity.
    New copies go where the eviction policy's fleet-wide ranking loses least, then to the
    node with the least work in flight."""

    name = "least-loaded"

    def rank_replicas(self, request: RouteRequest, replicas: Sequence[Replica]) -> list[Replica]:
        return sorted(replicas, key=lambda r: (
            r.model.active / r.model.slots, r.node.active, r.node.name))

    def rank_placements(self, request: RouteRequest,
                        placements: Sequence[Placement]) -> list[Placement]:
        return sorted(placements, key=lambda p: (
            p.rank, p.node.active, -p.free_after, p.node.name))


@hookimpl
def register_routing_strategies() -> Iterable[type[RoutingStrategy]]:
    return [AffinityStrategy, LeastLoadedStrategy]
