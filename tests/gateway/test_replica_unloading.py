"""A model one gateway replica is unloading is waited for by the other, not refused.

Gateway one unloads a model while a stream holds it (an unload waits for the model's
requests to end); gateway two gets a request for it meanwhile. That request waits for
the unload to pass and loads the model again, as a request right after an Ollama
`keep_alive=0` answer must; before, it got 503 "model is unloading here". Synthetic
neuron: placement is what is tested, not inference. No timing: the stream is ended by
the test, after the second request is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess, running_neuron
from ..gateway_support import neuron_models, running_gateway, wait_until

pytestmark = [pytest.mark.anyio]

# Room for one copy on the 3 GiB node: while one unloads, no second can load beside it.
SLOW = ModelProfile(id="slow", source="synthetic:rate=10,tokens=100000,bytes=2GiB",
                    harness="synthetic")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"name": "n", "memory_budget": "3GiB"}, tmp_path) as neuron:
        yield neuron


async def test_a_request_on_another_replica_waits_out_an_unload(node: NeuronProcess) -> None:
    async with running_gateway([("n", node)], [SLOW]) as one, \
            running_gateway([("n", node)], [SLOW]) as two:
        holding = one.client.stream("POST", "/v1/chat/completions", json={
            "model": "slow", "stream": True, "max_tokens": 50000,
            "messages": [{"role": "user", "content": "hi"}]})
        reply = await holding.__aenter__()
        try:
            assert reply.status_code == 200
            lines = reply.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass  # the stream runs on the neuron
            unload = asyncio.ensure_future(one.client.post("/admin/models/slow/unload"))

            async def unloading() -> bool:
                return (await neuron_models(node)).get("slow", {}).get("state") == "unloading"

            await wait_until(unloading, timeout=30, what="the neuron is unloading slow")
            asked = asyncio.ensure_future(two.client.post("/v1/chat/completions", json={
                "model": "slow", "max_tokens": 3,
                "messages": [{"role": "user", "content": "hello"}]}))

            async def seen_unloading() -> bool:
                view = two.placer.snapshot().node("n")
                model = view.model("slow") if view is not None else None
                return model is not None and model.state == "unloading"

            await wait_until(seen_unloading, timeout=30, what="replica two sees the unload")
            assert not asked.done(), asked.result().text  # waiting, not refused
        finally:
            await holding.__aexit__(None, None, None)  # the stream ends: the unload goes on
        assert (await asyncio.wait_for(unload, 60)).status_code == 200
        answer = await asyncio.wait_for(asked, 60)
        assert answer.status_code == 200, answer.text
        assert (await neuron_models(node))["slow"]["state"] == "ready"
