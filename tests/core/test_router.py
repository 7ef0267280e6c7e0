"""Routing decisions over fixture snapshots, for both default strategies."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from cortex import (
    Evictor,
    FleetSnapshot,
    Plugins,
    Router,
    RouteRequest,
    build_plugin_manager,
    rendezvous,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
GiB = 2**30


def snapshot(name: str = "fleet_mixed.json") -> FleetSnapshot:
    return msgspec.json.decode((FIXTURES / name).read_bytes(), type=FleetSnapshot)


def router(strategy: str = "affinity", eviction: str = "lru") -> Router:
    plugins = Plugins(build_plugin_manager(entry_points=False))
    return Router(plugins.routing_strategy(strategy)(),
                  Evictor(plugins.eviction_policy(eviction)()))


def everywhere(size: float) -> dict[str, int]:
    return {n: int(size * GiB) for n in ("gpu-a", "gpu-b", "cpu-c")}


def test_a_ready_replica_with_a_free_slot_wins() -> None:
    decision = router().decide(RouteRequest(model="llama-3.1-8b"), snapshot())
    assert (decision.action, decision.node) == ("serve", "gpu-b")  # gpu-a's 4 slots are full


def conversation_at(home: str, nodes: tuple[str, ...]) -> str:
    """A conversation key (a prefix hash's shape) whose rendezvous home is `home`."""
    return next(key for key in (f"{i:032x}" for i in range(1000))
                if rendezvous(key, nodes)[0] == home)


def test_the_conversations_home_wins_among_free_replicas_but_not_over_a_free_slot() -> None:
    fleet = snapshot()
    nodes = tuple(msgspec.structs.replace(n, models=tuple(
        msgspec.structs.replace(m, active=0) for m in n.models)) for n in fleet.nodes)
    idle = FleetSnapshot(nodes=nodes)
    holders = ("gpu-a", "gpu-b")  # the nodes where llama-3.1-8b is ready
    on_a, on_b = conversation_at("gpu-a", holders), conversation_at("gpu-b", holders)
    assert router().decide(RouteRequest(model="llama-3.1-8b"), idle).node == "gpu-a"
    assert router().decide(RouteRequest(model="llama-3.1-8b", conversation=on_b),
                           idle).node == "gpu-b"
    assert router().decide(RouteRequest(model="llama-3.1-8b", conversation=on_a),
                           idle).node == "gpu-a"
    # gpu-a is saturated in the fixture: a free slot elsewhere beats the home.
    assert router().decide(RouteRequest(model="llama-3.1-8b", conversation=on_a),
                           fleet).node == "gpu-b"
    # Every copy busy: the conversation's home, though its queue is the longer one.
    busy = FleetSnapshot(nodes=tuple(msgspec.structs.replace(n, models=tuple(
        msgspec.structs.replace(m, active=7 if n.name == "gpu-b" else 5)
        for m in n.models)) for n in fleet.nodes))
    assert router().decide(RouteRequest(model="llama-3.1-8b", conversation=on_b),
                           busy).node == "gpu-b"
    assert router().decide(RouteRequest(model="llama-3.1-8b"), busy).node == "gpu-a"
    # The least-loaded strategy ignores the conversation.
    assert router("least-loaded").decide(
        RouteRequest(model="llama-3.1-8b", conversation=on_b), idle).node == "gpu-a"


def test_saturated_replicas_queue_on_the_shortest_backlog() -> None:
    fleet = snapshot()
    nodes = tuple(msgspec.structs.replace(n, models=tuple(
        msgspec.structs.replace(m, active=6 if n.name == "gpu-a" else 5)
        for m in n.models)) for n in fleet.nodes)
    decision = router().decide(RouteRequest(model="llama-3.1-8b"), FleetSnapshot(nodes=nodes))
    assert (decision.action, decision.node) == ("serve", "gpu-b")
    assert "2 request(s) ahead" in decision.reason


def test_a_load_under_way_is_joined() -> None:
    decision = router().decide(RouteRequest(model="mistral-7b", estimates=everywhere(5)),
                               snapshot())
    assert (decision.action, decision.node) == ("join", "gpu-b")


def test_placement_prefers_a_node_with_room() -> None:
    decision = router().decide(RouteRequest(model="phi-3", estimates=everywhere(8)),
                               snapshot())
    assert (decision.action, decision.node, decision.victims) == ("load", "gpu-a", ())
    verdicts = dict((v.node, v.verdict) for v in decision.candidates)
    assert verdicts["cpu-c"] == "down"
    assert "too little is evictable" in verdicts["gpu-b"]
    assert decision.free_after == int(2.5 * GiB)
    assert decision.expected_wait > 0


def test_placement_evicts_per_policy_never_pinned_busy_or_loading() -> None:
    decision = router().decide(RouteRequest(model="big", estimates=everywhere(12)), snapshot())
    assert (decision.action, decision.node, decision.victims) == ("load", "gpu-a",
                                                                  ("qwen2.5-7b",))


def test_nothing_fits_explains_every_node() -> None:
    decision = router().decide(RouteRequest(model="huge", estimates=everywhere(20)),
                               snapshot())
    assert decision.action == "none" and decision.node is None
    verdicts = dict((v.node, v.verdict) for v in decision.candidates)
    assert "budget is only 16.00 GiB" in verdicts["gpu-b"]
    assert "too little is evictable" in verdicts["gpu-a"]


def test_affinity_exclusions_and_missing_estimates_limit_the_nodes() -> None:
    fleet = snapshot()
    only_b = router().decide(RouteRequest(model="phi-3", affinity=("gpu-b",),
                                          estimates=everywhere(1)), fleet)
    assert (only_b.action, only_b.node) == ("load", "gpu-b")
    failed = router().decide(RouteRequest(model="llama-3.1-8b", exclude=frozenset({"gpu-b"})),
                             fleet)
    assert failed.node == "gpu-a"
    unknown = router().decide(RouteRequest(model="phi-3", estimates={}), fleet)
    assert unknown.action == "none"
    assert "no memory estimate" in dict((v.node, v.verdict) for v in unknown.candidates)["gpu-a"]


def test_least_loaded_places_on_the_node_with_least_work() -> None:
    fleet = snapshot()
    decision = router("least-loaded").decide(
        RouteRequest(model="tiny", estimates=everywhere(1)), fleet)
    assert decision.node == "gpu-b"  # 1 request in flight against gpu-a's 4
    assert router().decide(RouteRequest(model="tiny", estimates=everywhere(1)),
                           fleet).node == "gpu-a"  # affinity: most memory left


def _with(fleet: FleetSnapshot, node: str, model: str, **fields: object) -> FleetSnapshot:
    """`fleet` with one model view on one node changed."""
    return FleetSnapshot(nodes=tuple(msgspec.structs.replace(n, models=tuple(
        msgspec.structs.replace(m, **fields) if (n.name, m.id) == (node, model) else m
        for m in n.models)) for n in fleet.nodes))


def test_serve_says_how_many_requests_are_ahead() -> None:
    assert router().decide(RouteRequest(model="qwen2.5-7b"), snapshot()).ahead == 0
    busy = _with(snapshot(), "gpu-a", "qwen2.5-7b", active=4)  # 2 slots, 2 queued
    decision = router().decide(RouteRequest(model="qwen2.5-7b"), busy)
    assert (decision.action, decision.node, decision.ahead) == ("serve", "gpu-a", 3)


def test_another_copy_goes_where_there_is_room_to_spare() -> None:
    busy = _with(snapshot(), "gpu-a", "qwen2.5-7b", active=4)
    # gpu-b has 4 GiB free (16 budget, 7 + 5 reserved); cpu-c is down.
    decision = router().spill(RouteRequest(model="qwen2.5-7b", estimates=everywhere(3)), busy)
    assert decision is not None
    assert (decision.action, decision.node, decision.victims) == ("load", "gpu-b", ())
    assert decision.needs == 3 * GiB and decision.free_after == 1 * GiB


def test_another_copy_never_evicts_or_doubles_a_load_or_leaves_the_profiles_nodes() -> None:
    busy = _with(snapshot(), "gpu-a", "qwen2.5-7b", active=4)
    # 6 GiB would fit gpu-b only by evicting; a request's placement may, a spill may not.
    assert router().spill(RouteRequest(model="qwen2.5-7b", estimates=everywhere(6)),
                          busy) is None
    idle_b = _with(busy, "gpu-b", "llama-3.1-8b", active=0)
    idle_b = FleetSnapshot(nodes=tuple(msgspec.structs.replace(n, models=tuple(
        m for m in n.models if m.id != "mistral-7b")) for n in idle_b.nodes))
    assert router().decide(RouteRequest(model="phi-3", estimates={"gpu-b": 10 * GiB}),
                           idle_b).victims == ("llama-3.1-8b",)
    assert router().spill(RouteRequest(model="qwen2.5-7b", estimates={"gpu-b": 10 * GiB}),
                          idle_b) is None
    # mistral-7b is already loading on gpu-b: that is the extra copy.
    assert router().spill(RouteRequest(model="mistral-7b", estimates=everywhere(1)),
                          snapshot()) is None
    assert router().spill(RouteRequest(model="qwen2.5-7b", affinity=("gpu-a",),
                                       estimates=everywhere(1)), busy) is None


def test_max_copies_caps_the_copies_a_spill_adds() -> None:
    busy = _with(snapshot(), "gpu-a", "qwen2.5-7b", active=4)  # one copy, on gpu-a
    fits = RouteRequest(model="qwen2.5-7b", estimates=everywhere(3))
    assert router().spill(msgspec.structs.replace(fits, max_copies=2), busy) is not None
    assert router().spill(msgspec.structs.replace(fits, max_copies=1), busy) is None
    # llama-3.1-8b has a copy on gpu-a and gpu-b already.
    assert router().spill(RouteRequest(model="llama-3.1-8b", estimates={"gpu-a": GiB},
                                       max_copies=2), snapshot()) is None


def test_a_draining_node_takes_no_new_work_and_says_so() -> None:
    fleet = snapshot()
    draining = FleetSnapshot(nodes=tuple(msgspec.structs.replace(n, draining=n.name == "gpu-b")
                                         for n in fleet.nodes))
    decision = router().decide(RouteRequest(model="llama-3.1-8b"), draining)
    assert (decision.action, decision.node) == ("serve", "gpu-a")  # queued, not gpu-b's slot
    assert ("gpu-b", "draining") in [(v.node, v.verdict) for v in decision.candidates]
    placed = router().decide(RouteRequest(model="phi-3", affinity=("gpu-b",),
                                          estimates=everywhere(1)), draining)
    assert placed.action == "none"


@pytest.mark.parametrize("strategy", ["affinity", "least-loaded"])
def test_strategies_are_plugins_chosen_by_name(strategy: str) -> None:
    assert router(strategy).strategy.name == strategy
