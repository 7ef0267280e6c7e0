"""The eviction policy decides fleet-wide: one ranking of every idle model on every node
a load may go to, and the load goes where its victims rank lowest. Fixture
`fleet_policies.json`: three full 4 GiB nodes, a load of 2 GiB, and a different best
victim for each policy (the least recently used on `b`, the lowest priority on `b`,
the cheapest to reload per byte on `c`), none of them on `a`, the node that victim
count, bytes and node name alone would pick."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from cortex import (
    Evictor,
    FleetSnapshot,
    ModelView,
    Plugins,
    Router,
    RouteRequest,
    build_plugin_manager,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
GiB = 2**30
PLUGINS = Plugins(build_plugin_manager(entry_points=False))


def fleet() -> FleetSnapshot:
    return msgspec.json.decode((FIXTURES / "fleet_policies.json").read_bytes(),
                               type=FleetSnapshot)


def router(policy: str, strategy: str = "affinity") -> Router:
    return Router(PLUGINS.routing_strategy(strategy)(),
                  Evictor(PLUGINS.eviction_policy(policy)()))


def request(need: int = 2 * GiB) -> RouteRequest:
    return RouteRequest(model="new", estimates={"a": need, "b": need, "c": need})


@pytest.mark.parametrize("strategy", ["affinity", "least-loaded"])
@pytest.mark.parametrize(("policy", "node", "victims"), [
    ("lru", "b", ["b1"]),        # the least recently used model of the whole fleet
    ("priority", "b", ["b2"]),   # priority 1 goes before a priority-5 model elsewhere
    ("cost", "c", ["c1"]),       # 4 GiB that takes 20 s to load but is asked for rarely
])
def test_the_load_goes_where_the_policy_would_rather_lose_the_victims(
        policy: str, node: str, victims: list[str], strategy: str) -> None:
    decision = router(policy, strategy).decide(request(), fleet())
    assert (decision.action, decision.node, list(decision.victims)) == ("load", node, victims)
    assert decision.policy == policy
    first = decision.ranking[0]
    assert (first.node, first.id) == (node, victims[0])


def test_the_ranking_spans_every_allowed_node_and_names_each_copys_node() -> None:
    ranking = router("lru").evictor.ranking(fleet().nodes)
    assert [(m.node, m.id) for m in ranking] == [
        ("b", "b1"), ("a", "a1"), ("c", "c1"), ("a", "a2"), ("b", "b2")]
    explained = router("priority").decide(request(), fleet()).ranking
    assert [m.id for m in explained] == ["b2", "c1", "b1", "a1", "a2"]


def test_affinity_keeps_the_ranking_to_the_nodes_it_allows() -> None:
    only_a_c = msgspec.structs.replace(request(), affinity=("a", "c"))
    decision = router("lru").decide(only_a_c, fleet())
    assert (decision.node, decision.victims) == ("a", ("a1",))
    assert {m.node for m in decision.ranking} == {"a", "c"}


def test_a_node_needing_a_later_victim_loses_to_one_needing_an_earlier_one() -> None:
    # `a` fits 3 GiB after evicting a1 and a2 (the 4th in LRU order); `b` after b1 and
    # b2 (the 5th); `c` after c1 alone (the 3rd): c, though it frees the most bytes.
    decision = router("lru").decide(request(3 * GiB), fleet())
    assert (decision.node, decision.victims) == ("c", ("c1",))
    # Placements that evict nothing come before any that evict.
    roomy = msgspec.structs.replace(fleet().nodes[0], budget=8 * GiB)
    spare = FleetSnapshot(nodes=(roomy, *fleet().nodes[1:]))
    assert router("lru").decide(request(), spare).victims == ()


def test_cost_weighs_load_time_and_demand_per_byte() -> None:
    cost = PLUGINS.eviction_policy("cost")()

    def view(name: str, size: float, seconds: float | None, rate: float) -> ModelView:
        return ModelView(id=name, node="n", bytes=int(size * GiB), load_seconds=seconds,
                         request_rate=rate)

    big_cold = view("big-cold", 8, 30.0, 0.01)   # 0.3 s of loading per second, 8 GiB
    small_hot = view("small-hot", 1, 2.0, 1.0)   # 2 s per second for 1 GiB
    idle = view("idle", 1, 2.0, 0.0)             # nobody asks: free to lose
    unseen = view("unseen", 1, None, 1.0)        # never loaded here: guessed from its size
    assert [m.id for m in cost.order([small_hot, unseen, big_cold, idle])] == [
        "idle", "big-cold", "small-hot", "unseen"]
