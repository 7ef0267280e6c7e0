"""A model whose copies all have a queue gets another copy (`spill_after`), loaded in the
background on a node with room while requests keep going to the ready copy. Synthetic
neurons: what is tested is the gateway's placement, not inference."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cortex import ModelProfile
from cortex.cli.main import explain_text
from cortex.gateway.placement import Placer

from ..conftest import NeuronProcess
from ..gateway_support import neuron_fleet, neuron_models, running_gateway, wait_until

pytestmark = [pytest.mark.anyio]

CHAT = {"messages": [{"role": "user", "content": "go"}], "stream": True}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, NeuronProcess]]:
    with neuron_fleet(tmp_path, None, ("a", "b"), memory_budget="8GiB") as started:
        yield started


def one_slot(spill_after: int | None) -> ModelProfile:
    # One slot, two-second streams, a half-second load.
    return ModelProfile(id="m", source="synthetic:rate=10,tokens=20,load_ms=500",
                        harness="synthetic", slots=1, spill_after=spill_after)


async def _stream(client: httpx.AsyncClient, max_tokens: int) -> str:
    async with client.stream("POST", "/v1/chat/completions",
                             json={**CHAT, "model": "m", "max_tokens": max_tokens}) as reply:
        assert reply.status_code == 200, await reply.aread()
        return (await reply.aread()).decode().rstrip().rsplit("\n", 1)[-1]


async def test_a_queue_on_every_copy_loads_another_where_there_is_room(
        pair: dict[str, NeuronProcess]) -> None:
    nodes = [(name, neuron) for name, neuron in pair.items()]
    async with running_gateway(nodes, [one_slot(spill_after=1)]) as gw:
        placed = await gw.client.post("/admin/models/m/load", json={"node": "a"})
        assert placed.json()["node"] == "a"
        first = asyncio.ensure_future(_stream(gw.client, 20))
        await wait_until(lambda: _busy(gw.placer, "a"), timeout=10, what="a's slot is taken")
        route = (await gw.client.get("/admin/route", params={"model": "m"})).json()
        assert (route["action"], route["node"], route["ahead"]) == ("serve", "a", 1)
        assert route["spill"]["node"] == "b"  # what the next request would start
        assert "another copy (spill_after): load on b" in explain_text(route)
        assert "m" not in await neuron_models(pair["b"])  # explaining did not act
        # This one queues behind the first on a: one ahead, so another copy is loaded.
        second = asyncio.ensure_future(_stream(gw.client, 5))

        async def copy_on_b() -> bool:
            return (await neuron_models(pair["b"])).get("m", {}).get("state") == "ready"

        await wait_until(copy_on_b, timeout=20, what="a copy is ready on b")
        assert [e.node for e in gw.recorder.kinds("loaded", "m")] == ["a", "b"]
        # The queued request did not wait for that load: it stayed with the copy on a.
        assert await asyncio.wait_for(asyncio.gather(first, second), 30) == \
            ["data: [DONE]"] * 2
        assert [r.node for r in gw.recorder.records] == ["a", "a"]
        # With a busy again, the next request goes to b's free slot.
        busy_again = asyncio.ensure_future(_stream(gw.client, 20))
        await wait_until(lambda: _busy(gw.placer, "a"), timeout=10, what="a is busy again")
        assert await _stream(gw.client, 3) == "data: [DONE]"
        assert gw.recorder.records[-1].node == "b"
        await busy_again


async def test_without_spill_after_a_queue_stays_a_queue(
        pair: dict[str, NeuronProcess]) -> None:
    nodes = [(name, neuron) for name, neuron in pair.items()]
    async with running_gateway(nodes, [one_slot(spill_after=None)]) as gw:
        await gw.client.post("/admin/models/m/load", json={"node": "a"})
        first = asyncio.ensure_future(_stream(gw.client, 10))
        await wait_until(lambda: _busy(gw.placer, "a"), timeout=10, what="a's slot is taken")
        assert await _stream(gw.client, 3) == "data: [DONE]"
        await first
        assert "m" not in await neuron_models(pair["b"])
        assert [r.node for r in gw.recorder.records] == ["a", "a"]


async def _busy(placer: Placer, node: str) -> bool:
    view = placer.snapshot().node(node)
    model = view.model("m") if view is not None else None
    return model is not None and not model.free_slot
