"""Eviction decisions over fixture snapshots: candidates, policy order, TTL and defrag."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from cortex import EvictionPolicy, Evictor, FleetSnapshot, NodeView, Plugins, build_plugin_manager

FIXTURES = Path(__file__).parent.parent / "fixtures"
GiB = 2**30


def snapshot(name: str) -> FleetSnapshot:
    return msgspec.json.decode((FIXTURES / name).read_bytes(), type=FleetSnapshot)


def policy(name: str) -> EvictionPolicy:
    return Plugins(build_plugin_manager(entry_points=False)).eviction_policy(name)()


def small() -> NodeView:
    node = snapshot("node_full.json").node("small")
    assert node is not None
    return node


def ids(models: tuple[object, ...] | None) -> list[str] | None:
    return None if models is None else [m.id for m in models]  # type: ignore[attr-defined]


def test_only_ready_idle_unpinned_models_are_candidates() -> None:
    assert sorted(m.id for m in Evictor.evictable(small())) == ["a", "b", "c"]
    mixed = snapshot("fleet_mixed.json")
    gpu_b = mixed.node("gpu-b")
    assert gpu_b is not None and Evictor.evictable(gpu_b) == []  # busy and loading


@pytest.mark.parametrize(("need", "victims"), [
    (0, []), (1 * GiB, ["a"]), (2 * GiB, ["a", "c"]), (3 * GiB, ["a", "c", "b"]),
    (int(3.5 * GiB), None)])
def test_lru_evicts_least_recently_used_until_it_fits(need: int, victims: list[str] | None
                                                       ) -> None:
    assert ids(Evictor(policy("lru")).victims(small(), need)) == victims


@pytest.mark.parametrize(("need", "victims"), [
    (1 * GiB, ["c"]), (2 * GiB, ["c", "b"]), (3 * GiB, ["c", "b", "a"])])
def test_priority_evicts_lowest_priority_first_lru_among_equals(
        need: int, victims: list[str]) -> None:
    assert ids(Evictor(policy("priority")).victims(small(), need)) == victims


def test_free_memory_is_used_before_evicting() -> None:
    node = msgspec.structs.replace(small(), budget=6 * GiB)  # 2 GiB free
    assert ids(Evictor(policy("lru")).victims(node, 2 * GiB)) == []
    assert ids(Evictor(policy("lru")).victims(node, 3 * GiB)) == ["a"]


def test_ttl_expires_idle_models_but_never_pinned_or_busy_ones() -> None:
    expired = Evictor.expired(snapshot("node_full.json"))
    assert [(e.node, e.model) for e in expired] == [("small", "a")]


def test_defrag_after_n_cycles_unloads_idle_and_reloads_hot_set_first() -> None:
    assert Evictor(policy("lru"), defrag_after_cycles=4).defrag(small()) is None
    assert Evictor(policy("lru")).defrag(small()) is None  # 0 turns defrag off
    plan = Evictor(policy("lru"), defrag_after_cycles=3).defrag(small())
    assert plan is not None and plan.node == "small"
    assert sorted(plan.unload) == ["a", "b", "c"]
    assert plan.reload == ("b", "c", "a")  # most recently used first


def test_defrag_waits_for_loads_and_unloads_to_finish() -> None:
    node = small()
    loading = msgspec.structs.replace(node, models=(
        *node.models, msgspec.structs.replace(node.models[0], id="new", state="loading")))
    assert Evictor(policy("lru"), defrag_after_cycles=1).defrag(loading) is None


def test_defrag_waits_until_every_idle_model_has_settled() -> None:
    def idle(*seconds: float) -> NodeView:  # for `a`, `b` and `c`, the idle unpinned ones
        node = small()
        settled = [msgspec.structs.replace(m, idle_for=s)
                   for m, s in zip(node.models[:3], seconds, strict=True)]
        return msgspec.structs.replace(node, models=(*settled, *node.models[3:]))

    evictor = Evictor(policy("lru"), defrag_after_cycles=1)
    assert evictor.defrag(idle(600, 600, 600), settle=60) is not None
    assert evictor.defrag(idle(600, 0.2, 600), settle=60) is None  # loaded 0.2 s ago
