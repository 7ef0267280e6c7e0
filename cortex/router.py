"""Where a request goes: a pure decision over a FleetSnapshot, explainable without acting.

The Router keeps the order of preference fixed (a ready replica, then a load already
under way, then a new placement, evicting per policy if needed) and asks the
RoutingStrategy plugin to rank the choices within each step. The eviction policy ranks
the candidates of every node the model may load on at once, and each placement
carries where its victims stand in that ranking (`rank`), so the strategy can take
the node whose victims the policy would rather lose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import msgspec

from cortex.evictor import Evictor
from cortex.snapshot import FleetSnapshot, ModelView, NodeView

__all__ = ["Decision", "Placement", "Replica", "RouteRequest", "Router", "RoutingStrategy",
           "Verdict"]

# Used for the expected wait when a model has never been loaded: seconds per GiB of weights.
_COLD_SECONDS_PER_GIB = 4.0
_UNLOAD_SECONDS = 0.5


class RouteRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What the router needs to know about one request, already resolved to a profile."""

    model: str
    affinity: tuple[str, ...] = ()
    # Bytes the model would reserve on each node (from the neuron's estimate); a node
    # missing here cannot take a new copy (its estimate failed or is unknown).
    estimates: dict[str, int] = {}
    # The conversation the request continues (its first prefix hash, cortex.dialect's
    # prefix_hashes), for strategies that keep a conversation on one node: the same key
    # ranks the nodes the same way on every replica (cortex.rendezvous).
    conversation: str | None = None
    exclude: frozenset[str] = frozenset()
    load_seconds: float | None = None
    # Why nodes refused the profile itself (a missing file, an unknown source), by node:
    # no estimate there, and none to come (cortex.gateway.estimates).
    refusals: dict[str, str] = {}
    # Router.spill adds no copy once the fleet holds this many (the profile's max_copies).
    max_copies: int | None = None

    def allows(self, node: NodeView) -> bool:
        return node.up and not node.draining and node.name not in self.exclude and (
            not self.affinity or node.name in self.affinity)


class Replica(msgspec.Struct, frozen=True):
    node: NodeView
    model: ModelView


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    node: NodeView
    needs: int
    victims: tuple[ModelView, ...] = ()
    # Where the last of `victims` stands in the eviction policy's fleet-wide ranking (0:
    # the first the policy would lose); -1 when nothing is evicted. Lower is better.
    rank: int = -1

    @property
    def free_after(self) -> int:
        return self.node.budget - self.node.reserved + sum(v.bytes for v in self.victims) \
            - self.needs


class Verdict(msgspec.Struct, frozen=True):
    node: str
    verdict: str


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """serve: the model is ready on `node`; join: it is loading there; load: load it there
    after unloading `victims`; none: nowhere (see `reason` and `candidates`), and when
    `unservable`, never: every node the profile allows is up and can never hold it."""

    action: Literal["serve", "join", "load", "none"]
    model: str
    node: str | None = None
    victims: tuple[str, ...] = ()
    needs: int | None = None
    free_after: int | None = None
    expected_wait: float = 0.0
    # serve: requests queued ahead of this one on `node` (0: a slot is free there).
    ahead: int = 0
    reason: str = ""
    candidates: tuple[Verdict, ...] = ()
    # load and none: the eviction policy and its ranking of the evictable models on the
    # nodes considered, first to go first (what `route --explain` shows).
    policy: str = ""
    ranking: tuple[ModelView, ...] = ()
    unservable: bool = False


class RoutingStrategy:
    """Base class; plugins subclass it and return it from their register hook."""

    name: ClassVar[str]

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        """The plugin's own settings, validated when config is loaded."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def rank_replicas(self, request: RouteRequest, replicas: Sequence[Replica]) -> list[Replica]:
        """Order the nodes where the model is ready, best first."""
        raise NotImplementedError

    def rank_placements(self, request: RouteRequest,
                        placements: Sequence[Placement]) -> list[Placement]:
        """Order the nodes that could load the model, best first."""
        raise NotImplementedError


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _never(request: RouteRequest, snapshot: FleetSnapshot, never: dict[str, str]) -> bool:
    """Whether no node can ever hold the model: each node the profile allows is up and
    can never hold it. A node down, draining or set aside for this request may yet."""
    named = [n for n in snapshot.nodes if not request.affinity or n.name in request.affinity]
    return bool(named) and all(n.name in never for n in named)


class Router:
    def __init__(self, strategy: RoutingStrategy, evictor: Evictor) -> None:
        self.strategy = strategy
        self.evictor = evictor

    def expected_load_seconds(self, request: RouteRequest, needs: int | None) -> float:
        if request.load_seconds is not None:
            return request.load_seconds
        return _COLD_SECONDS_PER_GIB * (needs or 0) / 2**30 + 1.0

    def decide(self, request: RouteRequest, snapshot: FleetSnapshot) -> Decision:
        verdicts: list[Verdict] = []
        allowed: list[NodeView] = []
        for node in snapshot.nodes:
            if request.allows(node):
                allowed.append(node)
            elif node.name in request.exclude:
                verdicts.append(Verdict(node.name, "failed for this request"))
            elif not node.up:
                verdicts.append(Verdict(node.name, f"down: {node.last_error}"
                                        if node.last_error else "down"))
            elif node.draining:
                verdicts.append(Verdict(node.name, "draining"))
            else:
                verdicts.append(Verdict(node.name, "not in the profile's neurons"))

        ready = [Replica(n, m) for n in allowed if (m := n.model(request.model)) and m.ready]
        if ready:
            # One copy needs no ranking (the common case: spare the strategy's work).
            best = ready[0] if len(ready) == 1 else self.strategy.rank_replicas(request, ready)[0]
            ahead = 0 if best.model.free_slot else best.model.backlog + 1
            return Decision(
                action="serve", model=request.model, node=best.node.name, ahead=ahead,
                reason=f"ready, {ahead} request(s) ahead" if ahead
                else "ready with a free slot",
                candidates=(*verdicts, *(Verdict(r.node.name, "ready") for r in ready)))

        loading = [n for n in allowed if (m := n.model(request.model)) and m.state == "loading"]
        if loading:
            return Decision(action="join", model=request.model, node=loading[0].name,
                            expected_wait=self.expected_load_seconds(request, None),
                            reason="already loading there",
                            candidates=(*verdicts, *(Verdict(n.name, "loading")
                                                     for n in loading)))

        ranking = self.evictor.ranking(allowed)
        position = {(m.node, m.id): i for i, m in enumerate(ranking)}
        policy, ranked = self.evictor.policy.name, tuple(ranking)
        placements: list[Placement] = []
        never: dict[str, str] = {}  # nodes that can never hold it, and why
        for node in allowed:
            resident = node.model(request.model)
            needs = request.estimates.get(node.name)
            if resident is not None:
                verdicts.append(Verdict(node.name, f"model is {resident.state} here"))
            elif needs is None and node.name in request.refusals:
                never[node.name] = f"cannot serve it: {request.refusals[node.name]}"
                verdicts.append(Verdict(node.name, never[node.name]))
            elif needs is None:
                verdicts.append(Verdict(node.name, "no memory estimate (source not servable)"))
            elif needs > node.budget:
                never[node.name] = f"needs {_gib(needs)}, budget is only {_gib(node.budget)}"
                verdicts.append(Verdict(node.name, never[node.name]))
            else:
                victims = self.evictor.victims(node, needs, ranking)
                if victims is None:
                    verdicts.append(Verdict(node.name, f"needs {_gib(needs)}, {_gib(node.free)} "
                                                       "free and too little is evictable "
                                                       "(busy, loading or pinned)"))
                else:
                    rank = max((position[v.node, v.id] for v in victims), default=-1)
                    placements.append(Placement(node=node, needs=needs, victims=victims,
                                                rank=rank))
        if not placements:
            if _never(request, snapshot, never):
                return Decision(action="none", model=request.model, unservable=True,
                                reason=f"no neuron can ever serve `{request.model}`",
                                candidates=tuple(verdicts), policy=policy, ranking=ranked)
            return Decision(action="none", model=request.model,
                            reason=f"no live neuron can serve `{request.model}` now",
                            candidates=tuple(verdicts), policy=policy, ranking=ranked)
        best_place = self.strategy.rank_placements(request, placements)[0]
        for place in placements:
            verdicts.append(Verdict(place.node.name, "fits" if not place.victims else
                                    "fits after evicting "
                                    + ", ".join(v.id for v in place.victims)))
        wait = self.expected_load_seconds(request, best_place.needs) \
            + _UNLOAD_SECONDS * len(best_place.victims)
        return Decision(
            action="load", model=request.model, node=best_place.node.name,
            victims=tuple(v.id for v in best_place.victims), needs=best_place.needs,
            free_after=best_place.free_after, expected_wait=round(wait, 2),
            reason="fits" if not best_place.victims else "fits after eviction",
            candidates=tuple(verdicts), policy=policy, ranking=ranked)

    def spill(self, request: RouteRequest, snapshot: FleetSnapshot) -> Decision | None:
        """Where to add a copy of a model whose ready copies all have a queue: a node
        with room to spare, ranked by the strategy. Never evicts: a burst on one model
        must not push out another. None when no node has room, a copy is already on its
        way, or the fleet holds `max_copies` already."""
        allowed = [n for n in snapshot.nodes if request.allows(n)]
        if any((m := n.model(request.model)) and m.state == "loading" for n in allowed):
            return None
        copies = sum(1 for _, m in snapshot.placements_of(request.model)
                     if m.state in ("ready", "loading"))
        if request.max_copies is not None and copies >= request.max_copies:
            return None
        placements = [Placement(node=n, needs=needs) for n in allowed
                      if n.model(request.model) is None
                      and (needs := request.estimates.get(n.name)) is not None
                      and needs <= n.free]
        if not placements:
            return None
        best = self.strategy.rank_placements(request, placements)[0]
        return Decision(
            action="load", model=request.model, node=best.node.name, needs=best.needs,
            free_after=best.free_after,
            expected_wait=round(self.expected_load_seconds(request, best.needs), 2),
            reason="another copy: every ready copy has a queue",
            candidates=tuple(Verdict(p.node.name, "has room") for p in placements))
