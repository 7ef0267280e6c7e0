"""`cortex pin` on one gateway replica holds on every replica: the pin is recorded on
the neuron holding the copy, whose status every replica polls. Synthetic neuron: what is
tested is placement and eviction, not inference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess, running_neuron
from ..gateway_support import RunningGateway, neuron_models, running_gateway, wait_until

pytestmark = [pytest.mark.anyio]

# Room for one of the two on a 3 GiB node.
BIG = [ModelProfile(id=f"big{i}", source="synthetic:rate=0,tokens=3,bytes=2GiB",
                    harness="synthetic") for i in (1, 2)]
CHAT = {"max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"name": "n", "memory_budget": "3GiB"}, tmp_path) as neuron:
        yield neuron


async def _seen_pinned(gw: RunningGateway, pinned: bool) -> None:
    async def check() -> bool:
        view = gw.placer.snapshot().node("n")
        model = view.model("big1") if view is not None else None
        return model is not None and model.pinned is pinned

    await wait_until(check, timeout=10, what=f"the replica sees big1 pinned={pinned}")


async def test_a_pin_made_on_one_replica_stops_the_other_from_evicting(
        node: NeuronProcess) -> None:
    async with running_gateway([("n", node)], BIG) as one, \
            running_gateway([("n", node)], BIG) as two:
        pinned = await one.client.post("/admin/models/big1/pin")
        assert pinned.json() == {"model": "big1", "pinned": True, "node": "n"}, pinned.text
        assert (await neuron_models(node))["big1"]["pinned"] is True
        await _seen_pinned(two, True)

        route = (await two.client.get("/admin/route", params={"model": "big2"})).json()
        assert route["action"] == "none", route
        assert "pinned" in dict((c["node"], c["verdict"]) for c in route["candidates"])["n"]
        refused = await two.client.post("/v1/chat/completions", json={**CHAT, "model": "big2"})
        assert refused.status_code == 503, refused.text
        assert "big1" in await neuron_models(node)
        listed = {m["id"]: m for m in (await two.client.get("/v1/models")).json()["data"]}
        assert listed["big1"]["pinned"] is True  # the other replica's pin shows here too

        unpinned = await one.client.post("/admin/models/big1/unpin")
        assert unpinned.json() == {"model": "big1", "pinned": False}
        assert (await neuron_models(node))["big1"]["pinned"] is False
        await _seen_pinned(two, False)
        served = await two.client.post("/v1/chat/completions", json={**CHAT, "model": "big2"})
        assert served.status_code == 200, served.text
        assert set(await neuron_models(node)) == {"big2"}
        # Pinning on the neuron is best effort (this gateway keeps its own pins): a copy
        # that is gone, or a neuron too old for /models/pin, is a warning, not a failure.
        assert await one.fleet.pin("n", "big1", True) is False


async def _follows(gw: RunningGateway, pinned: bool) -> None:
    async def check() -> bool:
        profile = gw.live.profiles.get("big1")
        return profile is not None and profile.pinned is pinned

    await wait_until(check, timeout=10, what=f"the replica's own pin on big1 is {pinned}")


async def test_no_replica_unloads_a_pinned_model_and_any_replica_unpins_it(
        node: NeuronProcess) -> None:
    """The neuron's pin flag is the one truth: the other replica refuses to unload the
    copy (and so does the neuron, even forced), takes the pin as its own (it would load
    the model again if it were lost), and an unpin through it holds on the first one,
    which then no longer loads the model back (the flapping of issue 17)."""
    async with running_gateway([("n", node)], BIG) as one, \
            running_gateway([("n", node)], BIG) as two:
        assert (await one.client.post("/admin/models/big1/pin")).status_code == 200
        async with httpx.AsyncClient(base_url=node.url) as neuron:
            forced = await neuron.post("/models/unload", json={"model": "big1", "force": True})
        assert forced.status_code == 409, forced.text
        assert "pinned" in forced.json()["error"]["message"]

        await _follows(two, True)
        refused = await two.client.post("/admin/models/big1/unload")
        assert refused.status_code == 409, refused.text
        # The gateway's own refusal names where the pin stands (the neuron's does not).
        assert "pinned on n" in refused.json()["error"]["message"], refused.text
        assert (await neuron_models(node))["big1"]["state"] == "ready"

        unpinned = await two.client.post("/admin/models/big1/unpin")
        assert unpinned.json() == {"model": "big1", "pinned": False}, unpinned.text
        assert (await neuron_models(node))["big1"]["pinned"] is False
        await _follows(one, False)  # the first replica no longer holds its own pin
        await _seen_pinned(one, False)
        unloaded = await two.client.post("/admin/models/big1/unload")
        assert unloaded.json() == {"model": "big1", "unloaded_from": ["n"]}, unloaded.text


async def test_a_replica_started_after_a_pin_takes_it_as_its_own(
        node: NeuronProcess) -> None:
    async with running_gateway([("n", node)], BIG) as one:
        assert (await one.client.post("/admin/models/big1/pin")).status_code == 200
        async with running_gateway([("n", node)], BIG) as two:
            await _follows(two, True)  # so it, too, loads big1 again if it is lost
        assert (await one.client.post("/admin/models/big1/unpin")).status_code == 200


async def test_a_replica_a_poll_behind_the_pin_does_not_evict_the_pinned_copy(
        node: NeuronProcess) -> None:
    """The second replica polls once an hour, so its view never shows the pin and its
    router picks big1 as the victim: the neuron refuses that unload, the replica looks
    again (seeing the pin now) and answers 503 rather than evict it."""
    async with running_gateway([("n", node)], BIG) as one, \
            running_gateway([("n", node)], BIG, poll_interval=3600.0) as two:
        assert (await two.client.post("/admin/models/big1/load")).status_code == 200
        assert (await one.client.post("/admin/models/big1/pin")).status_code == 200
        stale = (await two.client.get("/admin/route", params={"model": "big2"})).json()
        assert (stale["action"], stale["victims"]) == ("load", ["big1"]), stale
        refused = await two.client.post("/v1/chat/completions", json={**CHAT, "model": "big2"})
        assert refused.status_code == 503, refused.text
        assert set(await neuron_models(node)) == {"big1"}
        assert two.recorder.kinds("evicted") == []


async def test_the_neuron_pins_only_what_it_holds(node: NeuronProcess) -> None:
    async with httpx.AsyncClient(base_url=node.url) as neuron:
        missing = await neuron.post("/models/pin", json={"model": "big1"})
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["code"] == "model_not_found"
        malformed = await neuron.post("/models/pin", json={"model": "big1", "pinned": "yes"})
        assert malformed.status_code == 400, malformed.text
