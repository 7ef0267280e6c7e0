"""Unservable or busy: the router says `unservable` only when every node a profile
allows is up and can never hold the model, over the fixture fleet (gpu-a 24 GiB, gpu-b
16 GiB, cpu-c 64 GiB but down)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from cortex import Evictor, FleetSnapshot, Plugins, Router, RouteRequest, build_plugin_manager

FIXTURES = Path(__file__).parent.parent / "fixtures"
GiB = 2**30
GPUS = ("gpu-a", "gpu-b")


def snapshot() -> FleetSnapshot:
    return msgspec.json.decode((FIXTURES / "fleet_mixed.json").read_bytes(), type=FleetSnapshot)


def router() -> Router:
    plugins = Plugins(build_plugin_manager(entry_points=False))
    return Router(plugins.routing_strategy("affinity")(),
                  Evictor(plugins.eviction_policy("lru")()))


def test_over_every_budget_is_unservable_with_the_reason_per_node() -> None:
    decision = router().decide(RouteRequest(model="huge", affinity=GPUS,
                                            estimates={n: 30 * GiB for n in GPUS}), snapshot())
    assert (decision.action, decision.unservable) == ("none", True)
    verdicts = {v.node: v.verdict for v in decision.candidates if v.node in GPUS}
    assert verdicts == {"gpu-a": "needs 30.00 GiB, budget is only 24.00 GiB",
                        "gpu-b": "needs 30.00 GiB, budget is only 16.00 GiB"}


def test_refused_sources_are_unservable_and_mixed_reasons_too() -> None:
    decision = router().decide(RouteRequest(
        model="gone", affinity=GPUS, estimates={"gpu-b": 20 * GiB},
        refusals={"gpu-a": "model file `x.gguf` not found"}), snapshot())
    assert decision.unservable
    assert {v.node: v.verdict for v in decision.candidates}["gpu-a"] == \
        "cannot serve it: model file `x.gguf` not found"


def test_a_node_that_may_yet_hold_it_keeps_it_temporary() -> None:
    fleet = snapshot()
    # cpu-c is down: it has room for 30 GiB when it comes back.
    anywhere = router().decide(RouteRequest(model="huge",
                                            estimates={n: 30 * GiB for n in GPUS}), fleet)
    assert (anywhere.action, anywhere.unservable) == ("none", False)
    # No estimate and no refusal (the neuron did not answer): nothing is known.
    unknown = router().decide(RouteRequest(model="m", affinity=GPUS,
                                           estimates={"gpu-a": 30 * GiB}), fleet)
    assert (unknown.action, unknown.unservable) == ("none", False)
    # Set aside for this request, or draining: it may take the model later.
    excluded = router().decide(RouteRequest(model="huge", affinity=GPUS,
                                            exclude=frozenset({"gpu-b"}),
                                            estimates={n: 30 * GiB for n in GPUS}), fleet)
    assert not excluded.unservable
    draining = FleetSnapshot(nodes=tuple(msgspec.structs.replace(n, draining=n.name == "gpu-b")
                                         for n in fleet.nodes))
    assert not router().decide(RouteRequest(model="huge", affinity=GPUS,
                                            estimates={n: 30 * GiB for n in GPUS}),
                               draining).unservable
