"""`neuron drain`: a neuron drained from its own host (the Kubernetes preStop hook in
deploy/kubernetes/base/neuron-daemonset.yaml) finishes its streams, refuses new work,
and `--wait` returns once it is idle. A real neuron process with a shared secret and a
synthetic model: what is tested is the lifecycle, not inference."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from ..conftest import NeuronProcess

pytestmark = [pytest.mark.anyio]

SECRET = "drain-test-secret"
AUTH = {"authorization": f"Bearer {SECRET}"}


def neuron_cli(*args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NEURON_SECRET"}
    if secret is not None:
        env["NEURON_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "cortex_neuron.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def neuron(start_neuron: Any) -> NeuronProcess:
    process: NeuronProcess = start_neuron({
        "name": "a", "secret": SECRET, "memory_budget": "4GiB",
        "preload": [{"id": "m", "source": "synthetic:rate=10,tokens=20",
                     "harness": "synthetic", "slots": 2}]})
    return process


async def ready(client: httpx.AsyncClient) -> None:
    for _ in range(200):
        models = (await client.get("/models")).json()["models"]
        if models and models[0]["state"] == "ready":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("model m did not become ready")


async def stream(client: httpx.AsyncClient, started: asyncio.Event,
                 max_tokens: int = 20) -> str:
    """Stream one chat completion; set `started` at its first chunk; return the last line."""
    last = ""
    async with client.stream("POST", "/v1/chat/completions", json={
            "model": "m", "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hi"}]}) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line:
                started.set()
                last = line
    return last


async def test_drain_wait_returns_once_the_streams_end_and_new_work_is_refused(
        neuron: NeuronProcess) -> None:
    async with httpx.AsyncClient(base_url=neuron.url, headers=AUTH, timeout=60) as client:
        await ready(client)
        started = asyncio.Event()
        running = asyncio.ensure_future(stream(client, started))
        await asyncio.wait_for(started.wait(), 30)
        result = await asyncio.to_thread(neuron_cli, "drain", "--url", neuron.url,
                                         "--wait", "60")
        assert result.returncode == 0, result.stderr
        # The stream ran to its end (the client may read its last bytes just after the
        # neuron counted it finished, so wait for them rather than assume them read).
        assert await asyncio.wait_for(running, 30) == "data: [DONE]"
        assert "a is draining, 0 request(s) in flight" in result.stdout
        refused = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503 and "draining" in refused.text

        result = await asyncio.to_thread(neuron_cli, "drain", "--url", neuron.url, "--undo")
        assert result.returncode == 0 and "a takes new work again" in result.stdout
        assert await stream(client, asyncio.Event()) == "data: [DONE]"


async def test_drain_wait_fails_when_streams_outlast_it(neuron: NeuronProcess) -> None:
    async with httpx.AsyncClient(base_url=neuron.url, headers=AUTH, timeout=60) as client:
        await ready(client)
        started = asyncio.Event()
        # 200 tokens at 10/s: twenty seconds, against a wait of half a second.
        running = asyncio.ensure_future(stream(client, started, max_tokens=200))
        await asyncio.wait_for(started.wait(), 30)
        result = await asyncio.to_thread(neuron_cli, "drain", "--url", neuron.url,
                                         "--wait", "0.5")
        running.cancel()  # disconnecting ends its generation
        assert result.returncode == 1
        assert "a is draining, 1 request(s) still in flight after 0.5s" in result.stderr


def test_drain_needs_the_neurons_secret(neuron: NeuronProcess) -> None:
    result = neuron_cli("drain", "--url", neuron.url, secret=None)
    assert result.returncode == 1 and "401" in result.stderr
    status = httpx.get(f"{neuron.url}/status", headers=AUTH).json()
    assert status["draining"] is False
