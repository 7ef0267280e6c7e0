"""`cortex status` while a stream runs, over a synthetic neuron (a token stream at a set
rate, no model): its tokens/s show before it ends, and each model's IDLE and UNTIL (the
TTL's countdown) come from /admin/fleet. Also the table within 80 columns through the
real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from cortex import ModelProfile
from cortex.cli.status import render

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, running_gateway, wait_until
from ..serve_support import synthetic_neuron

pytestmark = pytest.mark.anyio

# 20 tokens a second for up to 2000 tokens: a stream that runs for minutes unless cut.
SLOW = ModelProfile(id="slow", source="synthetic:rate=20,tokens=2000", harness="synthetic",
                    n_ctx=4096, ttl=600)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    neuron = synthetic_neuron(tmp_path_factory.mktemp("status-live"), name="a")
    try:
        yield neuron
    finally:
        neuron.stop()


async def fleet(gw: RunningGateway) -> dict[str, Any]:
    reply = await gw.client.get("/admin/fleet")
    assert reply.status_code == 200
    data: dict[str, Any] = reply.json()
    return data


def model_row(text: str, model: str) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith(f"{model} ")).split()


async def test_a_running_stream_shows_tokens_per_second_and_the_ttl_counts_down(
        synthetic: NeuronProcess) -> None:
    async with running_gateway([("a", synthetic)], [SLOW]) as gw:
        async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0,
                                      timeout=120) as client:
            stream = await client.chat.completions.create(
                model="slow", stream=True, messages=[{"role": "user", "content": "go"}])
            pieces = 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces += 1
                    if pieces == 10:
                        break
            # Ten tokens in, some 1990 to come: the stream is still running.
            during = await fleet(gw)
            traffic = during["traffic"]
            assert traffic["requests_total"] == 0
            assert traffic["requests_per_second"] > 0
            assert traffic["models"]["slow"]["output_tokens_per_second"] > 0
            assert traffic["output_tokens_per_second"] > 0
            row = model_row(render(during), "slow")
            assert row[-3] != "-" and float(row[-3]) > 0  # TOK/S
            assert row[-2:] == ["-", "10m00s"]  # busy: not idle, the TTL's full span ahead
            await stream.close()

        async def finished() -> bool:
            return bool((await fleet(gw))["traffic"]["requests_total"] == 1)

        await wait_until(finished, timeout=30, what="the cut stream is counted as finished")

        async def counting_down() -> bool:
            (model,) = (await fleet(gw))["nodes"][0]["models"]
            return bool(model["idle_seconds"] >= 1 and model["expires_in"] <= 599)

        await wait_until(counting_down, timeout=30, what="the idle model's TTL counts down")
        (model,) = (after := await fleet(gw))["nodes"][0]["models"]
        assert model["ttl"] == 600
        assert model["expires_in"] == pytest.approx(600 - model["idle_seconds"], abs=0.2)
        idle, until = model_row(render(after), "slow")[-2:]
        assert idle.endswith("s") and idle != "-" and until.startswith("9m")


async def test_status_fits_80_columns_and_says_why_a_node_is_down(
        synthetic: NeuronProcess, tmp_path: Path) -> None:
    doomed = synthetic_neuron(tmp_path, name="b")
    try:
        async with running_gateway([("a", synthetic), ("b", doomed)], [SLOW],
                                   down_after=1) as gw:
            loaded = await gw.client.post("/admin/models/slow/load", json={"node": "a"})
            assert loaded.status_code == 200
            doomed.stop()  # `b` stops answering: down, with the reason in the table

            async def b_down() -> bool:
                return any(n["name"] == "b" and not n["up"] for n in (await fleet(gw))["nodes"])

            await wait_until(b_down, timeout=30, what="the gateway sees b down")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cortex.cli", "status", "--url", gw.url,
                env={**os.environ, "COLUMNS": "80"},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(process.communicate(), 120)
            text = out.decode()
            assert process.returncode == 0, text
            assert max(len(line) for line in text.splitlines()) <= 80, text
            assert "UNTIL" in text and "IDLE" in text
            assert model_row(text, "slow")[-1].startswith(("10m", "9m"))
            assert any(line.startswith("b ") and "DOWN" in line for line in text.splitlines())
            (node,) = [n for n in (await fleet(gw))["nodes"] if n["name"] == "b"]
            assert node["last_error"]
            assert f"b is down: {node['last_error']}"[:70] in text
            listed = json.loads(await _json(gw))["nodes"][0]["models"][0]
            assert 0 < listed["expires_in"] <= 600
    finally:
        doomed.stop()


async def _json(gw: RunningGateway) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cortex.cli", "status", "--url", gw.url, "--json",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    return out.decode()
