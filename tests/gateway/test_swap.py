"""Swaps on a node with room for one model: nothing between evicting one model and
loading the next waits for a poll."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex import ModelProfile, build_plugin_manager
from cortex.config import GatewaySection, NeuronEntry
from cortex.gateway.fleet import Fleet
from cortex.gateway.profiles import ProfileIndex
from cortex.types import NodeStatus

from ..conftest import NeuronProcess
from ..gateway_support import wait_until
from ..serve_support import synthetic_neuron

pytestmark = [pytest.mark.anyio]

SLOW = ModelProfile(id="slow", source="synthetic:rate=20,tokens=400", harness="synthetic",
                    n_ctx=1024)


@pytest.fixture
def neuron(tmp_path: Path) -> Iterator[NeuronProcess]:
    process = synthetic_neuron(tmp_path)
    try:
        yield process
    finally:
        process.stop()


async def test_a_request_that_ends_while_a_poll_answer_travels_leaves_its_model_idle(
        neuron: NeuronProcess) -> None:
    """The neuron counts a request in flight; the gateway's request ends before that
    answer arrives. The model must look idle (evictable) at once, not until the next
    poll. The answer's transit is held open by wrapping the real client's `status`
    (the neuron is real): no timing could make that window happen on demand."""
    fleet = Fleet(GatewaySection(poll_interval=3600.0),
                  build_plugin_manager(entry_points=False).hook)
    fleet.configure([NeuronEntry(name="a", endpoint=neuron.url)])
    try:
        client = fleet.client("a")

        async def up() -> bool:
            return fleet.snapshot(ProfileIndex([])).nodes[0].up

        await wait_until(up, timeout=30, what="the neuron is up")
        fleet.apply_model("a", await client.load(SLOW))
        answered, release = asyncio.Event(), asyncio.Event()
        real_status = client.status

        async def in_transit(*, timeout: float | None = None) -> NodeStatus:
            status = await real_status(timeout=timeout)
            answered.set()
            await release.wait()
            return status

        client.status = in_transit  # type: ignore[method-assign]
        with fleet.using("a", SLOW.id):
            reply = await client.open("/v1/completions", b'{"model": "slow", "prompt": "x", '
                                                         b'"stream": true}')
            await reply.content.readany()
            poll = asyncio.ensure_future(fleet.refresh("a"))
            await answered.wait()
            reply.close()
        release.set()
        await poll
        seen = next(m for m in fleet.snapshot(ProfileIndex([SLOW])).nodes[0].models
                    if m.id == SLOW.id)
        assert seen.ready and seen.idle, seen
    finally:
        await fleet.close()



async def test_this_replicas_own_use_counts_for_lru_before_the_next_poll(
        neuron: NeuronProcess) -> None:
    """Two models, `old` used before `new`; then a request on `old` ends. With no poll
    since (the interval is an hour), the snapshot must already show `old` as the more
    recently used, or LRU evicts the model that was just used."""
    fleet = Fleet(GatewaySection(poll_interval=3600.0),
                  build_plugin_manager(entry_points=False).hook)
    fleet.configure([NeuronEntry(name="a", endpoint=neuron.url)])
    old = ModelProfile(id="old", source="synthetic:tokens=2", harness="synthetic", n_ctx=64)
    new = ModelProfile(id="new", source="synthetic:tokens=2", harness="synthetic", n_ctx=64)
    try:
        client = fleet.client("a")

        async def up() -> bool:
            return fleet.snapshot(ProfileIndex([])).nodes[0].up

        await wait_until(up, timeout=30, what="the neuron is up")
        for model in (old, new):
            fleet.apply_model("a", await client.load(model))
        await fleet.refresh("a")
        with fleet.using("a", old.id):
            pass
        seen = {m.id: m.last_used for m in fleet.snapshot(ProfileIndex([old, new])).nodes[0].models}
        assert seen["old"] > seen["new"], seen
    finally:
        await fleet.close()
