"""The eviction policy decides for the whole fleet: three neurons with room for one
model each, every one full, and a fourth model to load. Victim count, bytes and free
space are equal on every node, so only the policy's fleet-wide ranking can send the
load to `c`, where each test puts the model the policy would rather lose (a node
name tie-break alone picks `a`). Synthetic neurons: what is tested is placement and
eviction, not inference."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cortex import ModelProfile
from cortex.cli.main import explain_text

from ..conftest import NeuronProcess
from ..gateway_support import (
    RunningGateway,
    complete,
    neuron_fleet,
    neuron_models,
    reset,
    running_gateway,
)

pytestmark = [pytest.mark.anyio]

NAMES = ("a", "b", "c")


def synthetic(model_id: str, size: str = "2GiB", **fields: Any) -> ModelProfile:
    return ModelProfile(id=model_id, harness="synthetic",
                        source=f"synthetic:rate=0,tokens=2,bytes={size},load_ms=300", **fields)


def models(c_size: str = "2GiB", priorities: tuple[int, int, int] = (0, 0, 0)
           ) -> list[ModelProfile]:
    """`on-a`, `on-b` and `on-c`, each kept to its node, and `new`, which may go anywhere."""
    return [synthetic(f"on-{name}", c_size if name == "c" else "2GiB", neurons=[name],
                      priority=priority)
            for name, priority in zip(NAMES, priorities, strict=True)] + [synthetic("new")]


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NeuronProcess]]:
    with neuron_fleet(tmp_path_factory.mktemp("trio"), None, NAMES,
                      memory_budget="3GiB") as started:
        yield started


@pytest.fixture
def fleet(trio: dict[str, NeuronProcess]) -> Iterator[list[tuple[str, NeuronProcess]]]:
    reset(*trio.values())
    yield list(trio.items())
    reset(*trio.values())


async def _use(gw: RunningGateway, *order: str) -> None:
    for model in order:
        reply = await complete(gw.client, model)
        assert reply.status_code == 200, reply.text


async def _load_new(gw: RunningGateway, trio: list[tuple[str, NeuronProcess]],
                    policy: str) -> None:
    """`new` must evict `on-c` from `c`, and `route --explain` must say why: the policy's
    ranking, fleet-wide, with `on-c` first."""
    explained = (await gw.client.get("/admin/route", params={"model": "new"})).json()
    assert (explained["node"], explained["victims"]) == ("c", ["on-c"]), explained
    assert explained["policy"] == policy
    first = explained["ranking"][0]
    assert (first["node"], first["id"]) == ("c", "on-c"), explained["ranking"]
    assert {m["node"] for m in explained["ranking"]} == set(NAMES)
    shown = explain_text(explained).splitlines()  # what `cortex route --explain` prints
    order = shown.index(f"  eviction order ({policy}, fleet-wide, first to go first):")
    assert shown[order + 1].startswith("    1. on-c on c: ")
    assert shown[order + 1].endswith("<- evicted")
    assert not any(line.endswith("<- evicted") for line in shown[order + 2:])
    await _use(gw, "new")
    held = {name: set(await neuron_models(neuron)) for name, neuron in trio}
    assert held == {"a": {"on-a"}, "b": {"on-b"}, "c": {"new"}}, held
    evicted = gw.recorder.kinds("evicted")
    assert [(e.node, e.model, e.reason) for e in evicted] == [("c", "on-c", policy)]


async def test_lru_evicts_the_least_recently_used_model_of_the_fleet(
        fleet: list[tuple[str, NeuronProcess]]) -> None:
    async with running_gateway(fleet, models(), eviction="lru") as gw:
        await _use(gw, "on-c", "on-a", "on-b")
        await _load_new(gw, fleet, "lru")


async def test_priority_evicts_the_lowest_priority_of_the_fleet(
        fleet: list[tuple[str, NeuronProcess]]) -> None:
    # on-c is the most recently used, but its priority is the lowest anywhere.
    async with running_gateway(fleet, models(priorities=(5, 5, 1)), eviction="priority") as gw:
        await _use(gw, "on-a", "on-b", "on-c")
        await _load_new(gw, fleet, "priority")


async def test_cost_evicts_the_cheapest_to_reload_per_byte_of_the_fleet(
        fleet: list[tuple[str, NeuronProcess]]) -> None:
    # on-c is the biggest and the most recently used, but asked for once where the
    # others were asked for three times: per byte it is the cheapest to load again.
    async with running_gateway(fleet, models(c_size="2.5GiB"), eviction="cost") as gw:
        await _use(gw, *["on-a", "on-b"] * 3, "on-c")
        await _load_new(gw, fleet, "cost")
