"""Reconciler passes over a fixture fleet: what it unloads and loads, told by the calls it
makes. The fleet is a stand-in (tests/gateway/fixture_fleet.py) and so is placement:
what is under test is the reconciler's choices; placing and loading are tested on
their own and end to end (test_gateway_serving.py pins and defrags real neurons)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import msgspec
import pytest

from cortex import FleetSnapshot, ModelProfile
from cortex.gateway.placement import Placer
from cortex.gateway.reconciler import Reconciler
from cortex.gateway.state import LiveConfig

from .fixture_fleet import FixtureFleet, fixture, live_config, placer_over, profile

pytestmark = [pytest.mark.anyio]


class RecordingPlacer:
    """Places every model on the fixture's one node at once, and says what it placed."""

    def __init__(self, real: Placer) -> None:
        self.placed: list[tuple[str, bool, str | None]] = []
        self._real = real

    def snapshot(self) -> FleetSnapshot:
        return self._real.snapshot()

    async def place(self, profile: ModelProfile, *, deadline: float, keep: bool = False,
                    only: str | None = None) -> str:
        assert deadline > time.monotonic()
        self.placed.append((profile.id, keep, only))
        return "small"


def reconciler(fleet: FixtureFleet, profiles: list[ModelProfile], *,
               poll_interval: float = 2.0, defrag_after_cycles: int = 0
               ) -> tuple[Reconciler, RecordingPlacer, LiveConfig]:
    live = live_config(fleet.view, profiles, poll_interval=poll_interval,
                       eviction={"defrag_after_cycles": defrag_after_cycles})
    real, loader, _ = placer_over(fleet, live)
    placer = RecordingPlacer(real)
    return Reconciler(cast(Placer, placer), fleet.as_fleet(), loader, live), placer, live


async def test_a_pass_unloads_expired_models_and_loads_a_pinned_one_resident_nowhere() -> None:
    # node_full.json: `a` is past its ttl; `b` is within it; `pinned` and `busy` are past
    # theirs but pinned or busy. `embed` is pinned by its profile and held nowhere.
    fleet = FixtureFleet(fixture("node_full.json"))
    profiles = [profile("a", ttl=60), profile("embed", pinned=True),
                profile("pinned", pinned=True)]
    worker, placer, _ = reconciler(fleet, profiles)
    await worker.tick()
    deadline = time.monotonic() + 10
    while not fleet.made("pin") and time.monotonic() < deadline:  # the pin runs apart
        await asyncio.sleep(0.01)
    await worker.close()
    assert fleet.made("unload") == [("small", "a", "ttl")]
    assert placer.placed == [("embed", True, None)]  # `pinned` is resident already
    assert fleet.made("pin") == [("small", "embed", True)]  # for the other replicas


async def test_a_pass_records_on_its_neuron_the_pin_of_a_model_a_request_loaded() -> None:
    """`b` is pinned by its profile but was loaded before the reconciler came to it (by a
    request): its neuron is told, so replicas whose profiles do not pin it keep it too.
    `pinned` is pinned on its neuron already."""
    fleet = FixtureFleet(fixture("node_full.json"))
    worker, placer, _ = reconciler(fleet, [profile("b", pinned=True),
                                           profile("pinned", pinned=True)])
    await worker.tick()
    deadline = time.monotonic() + 10
    while not fleet.made("pin") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await worker.close()
    assert fleet.made("pin") == [("small", "b", True)]
    assert placer.placed == []


async def test_a_runtime_pin_brings_the_next_pass_at_once() -> None:
    """The reconciler waits on the live configuration's change, not only poll_interval
    (an hour here): a pin made through the admin API is loaded now."""
    fleet = FixtureFleet(fixture("node_full.json"))
    worker, placer, live = reconciler(fleet, [profile("later")], poll_interval=3600.0)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while len(fleet.made("unload")) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert fleet.made("unload"), "the first pass did not run"
        assert placer.placed == []
        live.set_pin("later", True)
        while not placer.placed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert placer.placed == [("later", True, None)]
    finally:
        await worker.close()


def cycled(idle_for: float) -> FleetSnapshot:
    """fleet_policies.json's three full nodes, each past one load/unload cycle (as right
    after a reload turns defrag on), every model idle for `idle_for` seconds."""
    nodes = fixture("fleet_policies.json").nodes
    return FleetSnapshot(nodes=tuple(msgspec.structs.replace(
        node, endpoint=f"http://127.0.0.1:{13131 + i}", cycles=1,
        models=tuple(msgspec.structs.replace(m, idle_for=idle_for) for m in node.models))
        for i, node in enumerate(nodes)))


def defrags() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("defrag:")]


async def test_defrag_takes_one_node_at_a_time() -> None:
    """Every node is due at once (defrag just turned on): one pass starts one node's
    defragmentation, and the others keep their models meanwhile."""
    fleet = FixtureFleet(cycled(idle_for=600))
    models = [m.id for n in fleet.view.nodes for m in n.models]
    worker, placer, _ = reconciler(fleet, [profile(m) for m in models],
                                   defrag_after_cycles=1)
    try:
        await worker.tick()
        started = defrags()
        assert [t.get_name() for t in started] == ["defrag:a"]
        await asyncio.wait_for(asyncio.gather(*started), 10)
        assert sorted(fleet.made("unload")) == [("a", "a1", "defrag"), ("a", "a2", "defrag")]
        assert [(m, only) for m, _, only in placer.placed] == [("a2", "a"), ("a1", "a")]
    finally:
        await worker.close()


async def test_defrag_leaves_a_node_whose_models_were_loaded_moments_ago() -> None:
    fleet = FixtureFleet(cycled(idle_for=0.2))
    models = [m.id for n in fleet.view.nodes for m in n.models]
    worker, _, _ = reconciler(fleet, [profile(m) for m in models], defrag_after_cycles=1)
    try:
        await worker.tick()
        assert defrags() == []
        assert fleet.made("unload") == []
    finally:
        await worker.close()
