"""A neuron that stops answering (SIGSTOP: a frozen host, a wedged process) is noticed by
its polls, which time out after `poll_timeout`; once it is marked down, requests waiting
there for a first byte go elsewhere or fail, and streams from it end with their
dialect's error event, instead of all of them waiting out `request_timeout`. SIGCONT
brings it back. The neurons are real processes running the synthetic harness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator

import anthropic
import msgspec
import openai
import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, neuron_models, profile, running_gateway, wait_until

pytestmark = pytest.mark.anyio

# Far above every bounded wait below: a request that waited it out would fail the test.
REQUEST_TIMEOUT = 300.0
QUICK = {"poll_interval": 0.25, "poll_timeout": 0.5, "down_after": 2,
         "request_timeout": REQUEST_TIMEOUT}


def synthetic(model_id: str, neurons: list[str], spec: str, *, slots: int = 4) -> ModelProfile:
    return msgspec.structs.replace(profile(model_id, neurons=neurons), harness="synthetic",
                                   source=f"synthetic:{spec}", slots=slots)


@contextlib.contextmanager
def stopped(neuron: NeuronProcess) -> Iterator[None]:
    """SIGSTOP the neuron; SIGCONT it on the way out, whatever happens."""
    os.kill(neuron.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(neuron.proc.pid, signal.SIGCONT)


async def nodes_up(gw: RunningGateway) -> int:
    return int((await gw.client.get("/health")).json()["nodes_up"])


async def holding(neuron: NeuronProcess, model: str, *, key: str = "in_flight") -> None:
    """Wait until the neuron itself holds a request for `model` (in a slot, or queued)."""
    async def there() -> bool:
        return bool((await neuron_models(neuron))[model][key] >= 1)

    await wait_until(there, timeout=30, what=f"the neuron has {model} {key}")


async def stream_until_cut(dialect: str, url: str, model: str,
                           started: asyncio.Event) -> Exception:
    """Stream through the official SDK of `dialect`; set `started` at the first text, and
    return the error the SDK raises when the stream is cut."""
    try:
        if dialect == "openai":
            async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0,
                                          timeout=REQUEST_TIMEOUT) as client:
                stream = await client.chat.completions.create(
                    model=model, stream=True, max_tokens=1000,
                    messages=[{"role": "user", "content": "go"}])
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        started.set()
        else:
            async with anthropic.AsyncAnthropic(
                    base_url=url, api_key="k", max_retries=0,
                    timeout=REQUEST_TIMEOUT) as client, client.messages.stream(
                    model=model, max_tokens=1000,
                    messages=[{"role": "user", "content": "go"}]) as events:
                async for event in events:
                    if event.type == "text":
                        started.set()
    except (openai.APIError, anthropic.APIError) as exc:
        return exc
    raise AssertionError("the stream ended without an error")


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_a_stopped_neuron_fails_its_requests_fast_and_comes_back(
        start_neuron: Callable[..., NeuronProcess], dialect: str) -> None:
    lone = start_neuron({"name": "lone"})
    models = [synthetic("trickle", ["lone"], "rate=4,tokens=1000"),
              synthetic("slow", ["lone"], "rate=0,tokens=3,ttft_ms=600000")]
    async with running_gateway([("lone", lone)], models, **QUICK) as gw:
        for model in ("trickle", "slow"):
            assert (await gw.client.post(f"/admin/models/{model}/load")).status_code == 200
        started = asyncio.Event()
        streaming = asyncio.ensure_future(stream_until_cut(dialect, gw.url, "trickle",
                                                           started))
        waiting = asyncio.ensure_future(gw.client.post("/v1/chat/completions", json={
            "model": "slow", "messages": [{"role": "user", "content": "Hi"}]}))
        try:
            await asyncio.wait_for(started.wait(), 30)
            await holding(lone, "slow")  # no first byte for ten minutes
            with stopped(lone):
                cut = await asyncio.wait_for(streaming, 30)
                assert "stopped answering mid-stream" in str(cut), cut
                reply = await asyncio.wait_for(waiting, 30)
                assert reply.status_code == 502, reply.text
                assert "stopped answering before its first byte" in reply.text
                assert await nodes_up(gw) == 0
                assert [e.node for e in gw.recorder.kinds("node_down")] == ["lone"]

            async def back() -> bool:
                return await nodes_up(gw) == 1

            await wait_until(back, timeout=30, what="the neuron is up again")
            assert (await gw.client.post("/v1/chat/completions", json={
                "model": "trickle", "max_tokens": 3,
                "messages": [{"role": "user", "content": "Hi"}]})).status_code == 200
        finally:
            for task in (streaming, waiting):
                task.cancel()
            await asyncio.gather(streaming, waiting, return_exceptions=True)


async def test_a_request_queued_on_a_stopped_neuron_fails_over(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    # A node that stops answering is not blamed on the requests it holds (its polls are
    # answered by the neuron's event loop, which a request cannot stop), so one without
    # a first byte is placed again on another node.
    a, b = start_neuron({"name": "a"}), start_neuron({"name": "b"})
    model = synthetic("s", ["a", "b"], "rate=4,tokens=1000", slots=1)
    async with running_gateway([("a", a), ("b", b)], [model], **QUICK) as gw:
        assert (await gw.client.post("/admin/models/s/load",
                                     json={"node": "a"})).status_code == 200
        started = asyncio.Event()
        streaming = asyncio.ensure_future(stream_until_cut("openai", gw.url, "s", started))
        queued = None
        try:
            await asyncio.wait_for(started.wait(), 30)
            queued = asyncio.ensure_future(gw.client.post("/v1/chat/completions", json={
                "model": "s", "max_tokens": 3,
                "messages": [{"role": "user", "content": "Hi"}]}))
            await holding(a, "s", key="queued")  # behind the stream, in a's only slot
            with stopped(a):
                reply = await asyncio.wait_for(queued, 30)
                assert reply.status_code == 200, reply.text
                record = next(r for r in gw.recorder.records if r.status == 200)
                assert (record.node, record.retries) == ("b", 1)
                assert "stopped answering" in str(await asyncio.wait_for(streaming, 30))
            assert "s" in await neuron_models(b)
        finally:
            for task in (streaming, queued):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
