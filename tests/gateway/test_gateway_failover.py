"""Neurons that die under the gateway: before the first byte the request moves to another
node; after it, the stream ends with an error event instead of hanging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess
from ..gateway_support import (
    neuron_fleet,
    neuron_models,
    profile,
    running_gateway,
    sse_data,
    sse_lines,
    wait_until,
)

pytestmark = [pytest.mark.model, pytest.mark.anyio]


@pytest.fixture(scope="module")
def neurons(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
            cache_dir: Path) -> Iterator[dict[str, NeuronProcess]]:
    with neuron_fleet(tmp_path_factory.mktemp("gateway-failover"), cache_dir,
                      ("doomed", "fragile", "steady")) as started:
        yield started


def kill(neuron: NeuronProcess) -> None:
    neuron.proc.kill()
    neuron.proc.wait(10)


async def test_a_neuron_killed_before_the_first_byte_is_retried_elsewhere(
        neurons: dict[str, NeuronProcess]) -> None:
    # A long poll interval: the gateway learns of the death only from the failed request.
    nodes = [("doomed", neurons["doomed"]), ("steady", neurons["steady"])]
    async with running_gateway(nodes, [profile("m", neurons=["doomed", "steady"])],
                               poll_interval=30) as gw:
        placed = await gw.client.post("/admin/models/m/load", json={"node": "doomed"})
        assert placed.json()["node"] == "doomed"
        kill(neurons["doomed"])
        async with gw.client.stream("POST", "/v1/chat/completions", json={
                "model": "m", "stream": True, "max_tokens": 3,
                "messages": [{"role": "user", "content": "Hi"}]}) as reply:
            assert reply.status_code == 200
            await asyncio.wait_for(reply.aread(), 60)
        data = sse_data(sse_lines(reply.text))
        assert data[-1] == "[DONE]" and not any("error" in d for d in data[:-1])
        assert gw.recorder.records[-1].node == "steady"
        assert gw.recorder.records[-1].retries == 1
        assert (await neuron_models(neurons["steady"]))["m"]["state"] == "ready"


async def test_a_neuron_killed_mid_stream_ends_the_stream_with_an_error_event(
        neurons: dict[str, NeuronProcess]) -> None:
    nodes = [("fragile", neurons["fragile"])]
    async with running_gateway(nodes, [profile("m", neurons=["fragile"])]) as gw:
        assert (await gw.client.post("/admin/models/m/load")).status_code == 200
        lines: list[str] = []
        started = time.monotonic()
        async with gw.client.stream("POST", "/v1/completions", json={
                "model": "m", "prompt": "Once upon a time", "max_tokens": 500,
                "stream": True}) as reply:
            assert reply.status_code == 200

            async def read() -> None:
                async for line in reply.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                    if len(lines) == 3 and neurons["fragile"].proc.poll() is None:
                        kill(neurons["fragile"])

            await asyncio.wait_for(read(), 30)
        assert time.monotonic() - started < 30
        data = sse_data(lines)
        assert "[DONE]" not in data
        assert "error" in data[-1] and "mid-stream" in data[-1]["error"]["message"]
        assert gw.recorder.records[-1].status == 502

        async def marked_down() -> bool:
            health = (await gw.client.get("/health")).json()
            return bool(health["nodes_up"] == 0) and bool(gw.recorder.kinds("node_down"))

        await wait_until(marked_down, timeout=10, what="the dead neuron is marked down")
        assert [e.node for e in gw.recorder.kinds("node_up")] == ["fragile"]
        assert (await gw.client.get("/v1/models")).json()["data"] == []


async def test_a_model_unloaded_behind_the_gateways_back_is_loaded_again(
        tmp_path: Path) -> None:
    # A neuron that lost the model (restart, manual unload) answers 404 while the
    # gateway's view still lists it: the request must reload it there, not fail.
    lone = NeuronProcess({"name": "lone"}, tmp_path)
    try:
        lone.wait_ready()
        synthetic = profile("s", neurons=["lone"])
        synthetic = msgspec.structs.replace(synthetic, harness="synthetic",
                                            source="synthetic:rate=0,tokens=3")
        async with running_gateway([("lone", lone)], [synthetic], poll_interval=30) as gw:
            assert (await gw.client.post("/admin/models/s/load")).status_code == 200
            async with httpx.AsyncClient(base_url=lone.url) as direct:
                await direct.post("/models/unload", json={"model": "s"})
            reply = await gw.client.post("/v1/chat/completions", json={
                "model": "s", "messages": [{"role": "user", "content": "Hi"}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["completion_tokens"] == 3
            assert "s" in await neuron_models(lone)
    finally:
        lone.stop()


def _lone_synthetic(spec: str) -> ModelProfile:
    return msgspec.structs.replace(profile("s", neurons=["lone"]), harness="synthetic",
                                   source=f"synthetic:{spec}")


async def test_a_lone_neuron_killed_before_the_first_byte_gives_the_client_that_error(
        tmp_path: Path) -> None:
    # One node and nowhere to retry: the client hears that the neuron did not answer
    # (502), not a generic "no node can serve" from the placement of the retry.
    lone = NeuronProcess({"name": "lone"}, tmp_path)
    try:
        lone.wait_ready()
        async with running_gateway([("lone", lone)], [_lone_synthetic("rate=0,tokens=3")],
                                   poll_interval=30) as gw:
            assert (await gw.client.post("/admin/models/s/load")).status_code == 200
            kill(lone)
            reply = await gw.client.post("/v1/chat/completions", json={
                "model": "s", "messages": [{"role": "user", "content": "Hi"}]})
            assert reply.status_code == 502, reply.text
            error = reply.json()["error"]
            assert error["code"] == "upstream_unreachable", error
            assert "`lone`" in error["message"] and "did not answer" in error["message"]
            assert gw.recorder.records[-1].status == 502
            assert gw.recorder.records[-1].retries == 1
    finally:
        lone.stop()


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_a_lone_neuron_answering_503_before_the_first_byte_gives_the_client_its_error(
        tmp_path: Path, dialect: str) -> None:
    # A neuron unloading the model (waiting for a stream to end) answers new requests
    # for it with 503 `model is unloading`; with no other node the client gets that 503
    # and its reason, in its own dialect. (The 503 makes the gateway re-poll the node,
    # so only the first request after the unload began finds its view stale.)
    lone = NeuronProcess({"name": "lone"}, tmp_path)
    try:
        lone.wait_ready()
        async with running_gateway([("lone", lone)], [_lone_synthetic("rate=2,tokens=400")],
                                   poll_interval=30) as gw, \
                httpx.AsyncClient(base_url=lone.url, timeout=60) as direct:
            assert (await gw.client.post("/admin/models/s/load")).status_code == 200
            started = asyncio.Event()

            async def hold() -> None:  # keeps the model busy, so its unload waits
                async with direct.stream("POST", "/v1/completions", json={
                        "model": "s", "prompt": "go", "max_tokens": 400,
                        "stream": True}) as reply:
                    async for line in reply.aiter_lines():
                        if line.startswith("data: "):
                            started.set()

            holding = asyncio.ensure_future(hold())
            unloading: asyncio.Future[httpx.Response] | None = None
            try:
                # Unload only once the stream holds the model: begun earlier, the
                # unload could finish first and leave the stream nothing to hold.
                await asyncio.wait_for(started.wait(), 30)
                unloading = asyncio.ensure_future(direct.post("/models/unload",
                                                              json={"model": "s"}))

                async def is_unloading() -> bool:
                    return bool((await neuron_models(lone))["s"]["state"] == "unloading")

                await wait_until(is_unloading, timeout=30, what="the neuron is unloading s")
                messages = [{"role": "user", "content": "Hi"}]
                if dialect == "openai":
                    reply = await gw.client.post("/v1/chat/completions", json={
                        "model": "s", "messages": messages})
                    assert reply.status_code == 503, reply.text
                    assert reply.json()["error"]["code"] == "unavailable", reply.text
                else:
                    reply = await gw.client.post("/v1/messages", json={
                        "model": "s", "max_tokens": 3, "messages": messages},
                        headers={"anthropic-version": "2023-06-01"})
                    assert reply.status_code == 529, reply.text
                    assert reply.json()["error"]["type"] == "overloaded_error", reply.text
                assert reply.json()["error"]["message"] == "model `s` is unloading", reply.text
                assert gw.recorder.records[-1].retries == 1
            finally:
                for task in (holding, unloading):
                    if task is not None:
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
    finally:
        lone.stop()
