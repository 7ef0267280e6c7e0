"""Fair turns between API keys on a busy model (cortex.gateway.fairshare): a key flooding a
model costs another key about one request's wait, not the flood's. The queue itself is
checked without a network; the end-to-end test runs a real gateway over a synthetic
neuron whose model has one slot, and checks the order requests finish in."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex import ModelProfile
from cortex.gateway.fairshare import FairShare, Ticket

from ..conftest import NeuronProcess
from ..gateway_support import neuron_fleet, running_gateway, wait_until

pytestmark = [pytest.mark.anyio]


async def test_a_lone_client_takes_its_turn_at_once_until_the_copies_are_full() -> None:
    share = FairShare(lambda model: (2, 1))  # one ready copy with two slots: room for 3
    tickets = [share.enter("m", "a") for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert share.enter("m", "a") is None  # full: this one waits
    share = FairShare(lambda model: (0, 0))  # no ready copy: nothing is held here
    assert all(share.enter("cold", "a") is not None for _ in range(100))


async def test_waiters_are_served_round_robin_a_new_client_first() -> None:
    share = FairShare(lambda model: (1, 1))  # room for 2
    running = [share.enter("m", "a"), share.enter("m", "a")]
    served: list[str] = []

    async def request(client: str) -> None:
        ticket = await share.wait("m", client)
        served.append(client)
        running.append(ticket)

    waiters = [asyncio.ensure_future(request("a")) for _ in range(5)]
    await asyncio.sleep(0)
    waiters.append(asyncio.ensure_future(request("b")))
    waiters.append(asyncio.ensure_future(request("c")))
    await asyncio.sleep(0)
    assert share.waiting("m") == 7
    while len(served) < 7:  # finish one request at a time, oldest first
        turn = functools.partial(_longer, served, len(served))
        ticket = running.pop(0)
        assert ticket is not None
        ticket.release()
        await wait_until(turn, timeout=5, what="the next turn")
    # a had waiters first, but b and c had none yet: each goes before a's second.
    assert served == ["a", "b", "c", "a", "a", "a", "a"]
    await asyncio.gather(*waiters)


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    share = FairShare(lambda model: (1, 1))  # room for 2
    first, second = share.enter("m", "a"), share.enter("m", "a")
    assert first is not None and second is not None
    gone = asyncio.ensure_future(share.wait("m", "a"))
    kept = asyncio.ensure_future(share.wait("m", "b"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert share.waiting("m") == 1
    first.release()
    assert isinstance(await asyncio.wait_for(kept, 5), Ticket)


async def _longer(items: list[str], than: int) -> bool:
    return len(items) > than


@pytest.fixture
def neuron(tmp_path: Path) -> Iterator[NeuronProcess]:
    with neuron_fleet(tmp_path, None, ["n"], memory_budget="8GiB") as started:
        yield started["n"]


async def test_a_flooding_key_costs_another_key_about_one_request(
        neuron: NeuronProcess) -> None:
    # One slot, 0.2 s a request: eleven requests cannot run at once.
    model = ModelProfile(id="m", source="synthetic:rate=50,tokens=10", harness="synthetic",
                         slots=1)
    auth = {"keys": [{"key": "key-a"}, {"key": "key-b"}], "admin_keys": ["root"]}
    async with running_gateway([("n", neuron)], [model], auth=auth) as gw:
        loaded = await gw.client.post("/admin/models/m/load",
                                      headers={"authorization": "Bearer root"})
        assert loaded.status_code == 200, loaded.text

        async def ask(key: str, request_id: str) -> int:
            reply = await gw.client.post("/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "go"}]},
                headers={"authorization": f"Bearer {key}", "x-request-id": request_id})
            return reply.status_code

        flood = [asyncio.ensure_future(ask("key-a", f"a{i}")) for i in range(10)]

        async def all_of_a_arrived() -> bool:
            sent = sum(node["in_flight"].get("m", 0) for node in gw.fleet.describe())
            return sent + gw.fair.waiting("m") == 10

        await wait_until(all_of_a_arrived, timeout=30, what="key a's ten requests arrived")
        assert await ask("key-b", "b") == 200
        assert await asyncio.gather(*flood) == [200] * 10
        order = [r.request_id for r in gw.recorder.records]
        # Without turns b would finish last, behind all ten of a's in the neuron's queue.
        # With them it follows the one running and the one queued on the neuron (MARGIN).
        assert order.index("b") <= 3, order
