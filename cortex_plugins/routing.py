"""Default routing strategies: `affinity` (KV reuse first) and `least-loaded`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cortex import Placement, Replica, RouteRequest, RoutingStrategy, hookimpl, rendezvous

__all__ = ["AffinityStrategy", "LeastLoadedStrategy"]


def conversation_order(request: RouteRequest, replicas: Sequence[Replica]) -> dict[str, int]:
    """Each replica's node by its place in the conversation's rendezvous order (0: the
    conversation's home); empty for a request that continues no conversation. Every
    gateway replica ranks the same nodes the same way, so they agree without talking."""
    if request.conversation is None:
        return {}
    names = rendezvous(request.conversation, {r.node.name for r in replicas})
    return {name: place for place, name in enumerate(names)}


class AffinityStrategy(RoutingStrategy):
    """A ready node with a free slot, in the conversation's rendezvous order (for KV
    reuse: each turn lands where the last one left its cache), else the conversation's
    home if every copy is busy, then the least-queued ready node; places new copies
    where nothing must be evicted, else where the victims are those the eviction policy
    ranks lowest fleet-wide, then where the fewest bytes are evicted and the most memory
    stays free."""

    name = "affinity"

    def rank_replicas(self, request: RouteRequest, replicas: Sequence[Replica]) -> list[Replica]:
        order = conversation_order(request, replicas)

        def rank(r: Replica) -> tuple[bool, int, int, float, str]:
            place = order.get(r.node.name, 0)
            # With a free slot: the rendezvous order. All busy: the home, then the queues.
            first = place if r.model.free_slot else min(place, 1)
            return (not r.model.free_slot, first, r.model.backlog,
                    r.model.active / r.model.slots, r.node.name)

        return sorted(replicas, key=rank)

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
