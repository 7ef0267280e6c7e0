"""Draining a node for maintenance: the neuron takes no new requests or loads, finishes
what it runs, and every gateway routes around it. Synthetic neurons: what is tested is
the lifecycle, not inference."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cortex import ModelProfile
from cortex.cli import main as cortex_cli
from cortex.cli.status import render

from ..conftest import NeuronProcess
from ..gateway_support import (
    RunningGateway,
    neuron_fleet,
    neuron_models,
    running_gateway,
    wait_until,
)

pytestmark = [pytest.mark.anyio]

# Four slots, two-second streams at 10 tokens/s.
MODEL = ModelProfile(id="m", source="synthetic:rate=10,tokens=20", harness="synthetic",
                     slots=4)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[dict[str, NeuronProcess]]:
    """Neurons `a` and `b`, each with `m` ready."""
    with neuron_fleet(tmp_path, None, ("a", "b"), memory_budget="8GiB",
                      preload=[{"id": "m", "source": MODEL.source, "harness": "synthetic",
                                "slots": 4}]) as started:
        for neuron in started.values():
            async def ready(neuron: NeuronProcess = neuron) -> bool:
                return (await neuron_models(neuron)).get("m", {}).get("state") == "ready"

            await wait_until(ready, timeout=30, what="m is preloaded")
        yield started


async def loaded_on(gw: RunningGateway, nodes: list[str]) -> None:
    async def check() -> bool:
        models = (await gw.client.get("/v1/models")).json()["data"]
        return sorted(models[0]["loaded_on"]) == nodes

    await wait_until(check, timeout=30, what=f"the gateway sees m ready on {nodes}")


async def _stream(client: httpx.AsyncClient, path: str = "/v1/chat/completions",
                  max_tokens: int = 3, started: asyncio.Event | None = None) -> str:
    """The last SSE line of a streamed chat completion."""
    last = ""
    async with client.stream("POST", path, json={
            "model": "m", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "go"}]}) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line:
                last = line
                if started is not None:
                    started.set()
    return last


async def test_a_draining_neuron_finishes_its_streams_and_refuses_new_work(
        pair: dict[str, NeuronProcess]) -> None:
    async with httpx.AsyncClient(base_url=pair["a"].url, timeout=30) as neuron:
        started = asyncio.Event()
        running = asyncio.ensure_future(_stream(neuron, max_tokens=20, started=started))
        await asyncio.wait_for(started.wait(), 10)
        status = (await neuron.post("/drain")).json()
        assert status["draining"] is True and status["models"][0]["in_flight"] == 1
        assert (await neuron.get("/status")).json()["draining"] is True
        refused = await neuron.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "draining" in refused.json()["error"]["message"]
        load = await neuron.post("/models/load", json={"profile": {
            "id": "other", "source": "synthetic:rate=0", "harness": "synthetic"}})
        assert load.status_code == 503, load.text
        assert await running == "data: [DONE]"  # the stream it had went on to its end
        assert (await neuron.post("/drain", json={"draining": False})).json()[
            "draining"] is False
        assert await _stream(neuron) == "data: [DONE]"


async def test_the_gateway_routes_around_a_drained_node_and_back(
        pair: dict[str, NeuronProcess]) -> None:
    async with running_gateway(list(pair.items()), [MODEL]) as gw:
        await loaded_on(gw, ["a", "b"])
        started = asyncio.Event()
        running = asyncio.ensure_future(_stream(
            gw.client, max_tokens=20, started=started))
        await asyncio.wait_for(started.wait(), 10)
        # Which node the running stream went to is the router's choice: drain that one.
        node = next(n.name for n in gw.placer.snapshot().nodes
                    if (view := n.model("m")) is not None and view.active)
        other = "b" if node == "a" else "a"
        drained = await gw.client.post(f"/admin/nodes/{node}/drain")
        assert drained.json() == {"node": node, "draining": True, "busy": 1}
        route = (await gw.client.get("/admin/route", params={"model": "m"})).json()
        assert route["node"] == other
        assert {"node": node, "verdict": "draining"} in route["candidates"]
        for result in await asyncio.gather(*(_stream(gw.client) for _ in range(6))):
            assert result == "data: [DONE]"
        assert await running == "data: [DONE]"
        served = [r.node for r in gw.recorder.records]
        assert sorted(served) == sorted([node] + [other] * 6)  # only the running one on it
        described = (await gw.client.get("/admin/fleet")).json()
        fleet = {n["name"]: n for n in described["nodes"]}
        assert fleet[node]["draining"] and not fleet[other]["draining"]
        row = next(line for line in render(described).splitlines()
                   if line.startswith(f"{node} "))
        assert row.split()[1] == "draining"  # cortex status's STATE column
        undrained = await gw.client.post(f"/admin/nodes/{node}/undrain")
        assert undrained.json()["draining"] is False
        back = (await gw.client.get("/admin/route", params={"model": "m", "node": node}))
        assert back.json()["action"] == "serve", back.text
        unknown = await gw.client.post("/admin/nodes/nowhere/drain")
        assert unknown.status_code == 404


async def test_a_gateway_that_has_not_seen_the_drain_yet_retries_elsewhere(
        pair: dict[str, NeuronProcess]) -> None:
    # Another replica drained `a`; this gateway polls too rarely to have seen it.
    async with running_gateway(list(pair.items()), [MODEL], poll_interval=30,
                               routing="least-loaded") as gw:
        await loaded_on(gw, ["a", "b"])
        async with httpx.AsyncClient(base_url=pair["a"].url) as neuron:
            assert (await neuron.post("/drain")).json()["draining"] is True
        results = await asyncio.gather(*(_stream(gw.client) for _ in range(4)))
        assert results == ["data: [DONE]"] * 4
        assert {r.node for r in gw.recorder.records} == {"b"}
        # least-loaded spread the four over both nodes: those sent to `a` were retried.
        assert any(r.retries == 1 for r in gw.recorder.records)


async def test_cortex_drain_wait_returns_once_the_node_is_idle(
        pair: dict[str, NeuronProcess]) -> None:
    async with running_gateway([("a", pair["a"])], [MODEL]) as gw:
        await loaded_on(gw, ["a"])
        started = asyncio.Event()
        running = asyncio.ensure_future(_stream(gw.client, max_tokens=20, started=started))
        await asyncio.wait_for(started.wait(), 10)
        result = await asyncio.to_thread(
            CliRunner().invoke, cortex_cli, ["drain", "a", "--url", gw.url, "--wait", "30"])
        assert result.exit_code == 0, result.output
        # The stream ran to its end; its last bytes may reach the client just after the
        # neuron counted it finished, so wait for them rather than assume them read.
        assert await asyncio.wait_for(running, 30) == "data: [DONE]"
        assert "a is draining, 0 request(s) in flight" in result.output
        refused = await gw.client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503, refused.text
        assert "draining" in refused.text
        result = await asyncio.to_thread(
            CliRunner().invoke, cortex_cli, ["undrain", "a", "--url", gw.url])
        assert result.exit_code == 0 and "takes new work again" in result.output
        assert await _stream(gw.client) == "data: [DONE]"


async def test_a_stale_gateway_loading_on_a_draining_node_loads_elsewhere(
        tmp_path: Path) -> None:
    # `a` has the most room, so a gateway that has not seen the drain places the load
    # there; the neuron refuses it (503) and the request is placed again, on `b`.
    fresh = ModelProfile(id="fresh", source="synthetic:rate=0,tokens=3", harness="synthetic")
    with neuron_fleet(tmp_path, None, ("a",), memory_budget="8GiB") as big, \
            neuron_fleet(tmp_path, None, ("b",), memory_budget="4GiB") as small:
        nodes = [("a", big["a"]), ("b", small["b"])]
        async with running_gateway(nodes, [fresh], poll_interval=30) as gw:
            assert (await gw.client.get("/admin/route", params={"model": "fresh"})).json()[
                "node"] == "a"
            async with httpx.AsyncClient(base_url=big["a"].url) as neuron:
                assert (await neuron.post("/drain")).json()["draining"] is True
            reply = await gw.client.post("/v1/chat/completions", json={
                "model": "fresh", "max_tokens": 3,
                "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200, reply.text
            assert gw.recorder.records[-1].node == "b"
            assert "fresh" not in await neuron_models(big["a"])

