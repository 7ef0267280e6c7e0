"""What the gateway counts is what clients got: an Anthropic 529 is recorded as 529, a
count_tokens call is no request served, an embedding's prompt tokens count, and a key's
model allow-list filters the catalogue it sees. The bundled Gemma on one real neuron,
with the official SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx
import openai
import pytest

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, profile, running_gateway, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.model]

PROFILES = [profile("m", aliases=["m-alias"]), profile("emb", embeddings=True)]
AUTH = {"api_keys": ["all-key"], "admin_keys": ["root"],
        "keys": [{"key": "team-a", "models": ["m-alias"]}]}


@pytest.fixture
async def gw(neuron: NeuronProcess) -> AsyncIterator[RunningGateway]:
    async with running_gateway([("a", neuron)], PROFILES, auth=AUTH, metrics=True) as gateway:
        gateway.client.headers["authorization"] = "Bearer root"
        try:
            yield gateway
        finally:
            for model in ("m", "emb"):  # the module's neuron outlives this gateway
                await gateway.client.post(f"/admin/models/{model}/unload")


async def _finished(gw: RunningGateway, count: int) -> None:
    async def done() -> bool:
        return len(gw.recorder.records) >= count

    await wait_until(done, timeout=30, what=f"{count} requests finished")


async def _metric(gw: RunningGateway, name: str, **labels: str) -> float:
    assert gw.metrics_url is not None
    text = (await httpx.AsyncClient().get(gw.metrics_url)).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_an_anthropic_529_is_recorded_as_529(gw: RunningGateway) -> None:
    assert (await gw.client.post("/admin/nodes/a/drain")).status_code == 200
    sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key="all-key", max_retries=0)
    try:
        with pytest.raises(anthropic.InternalServerError) as busy:
            await sdk.messages.create(model="m", max_tokens=3,
                                      messages=[{"role": "user", "content": "hi"}])
        assert busy.value.status_code == 529
    finally:
        await sdk.close()
        await gw.client.post("/admin/nodes/a/undrain")
    await _finished(gw, 1)
    assert [r.status for r in gw.recorder.records] == [529]
    assert await _metric(gw, "cortex_requests_total", dialect="anthropic", status="529") == 1
    assert await _metric(gw, "cortex_requests_total", status="503") == 0


async def test_count_tokens_is_no_request_and_embeddings_count_their_tokens(
        gw: RunningGateway) -> None:
    claude = anthropic.AsyncAnthropic(base_url=gw.url, api_key="all-key", max_retries=0)
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="all-key", max_retries=0)
    try:
        counted = await claude.messages.count_tokens(
            model="m", messages=[{"role": "user", "content": "How many tokens is this?"}])
        assert counted.input_tokens > 0
        embedded = await client.embeddings.create(model="emb", input="a few words to embed")
        assert embedded.usage.prompt_tokens > 0
    finally:
        await claude.close()
        await client.close()
    await _finished(gw, 2)
    kinds = {r.kind: r for r in gw.recorder.records}
    assert set(kinds) == {"tokenize", "inference"}  # the request log keeps both
    assert kinds["inference"].prompt_tokens == embedded.usage.prompt_tokens
    assert await _metric(gw, "cortex_requests_total", model="m") == 0
    assert await _metric(gw, "cortex_requests_total", model="emb") == 1
    assert await _metric(gw, "cortex_input_tokens_total", model="emb") == \
        embedded.usage.prompt_tokens
    traffic = (await gw.client.get("/admin/fleet")).json()["traffic"]
    assert traffic["requests_total"] == 1
    assert traffic["input_tokens_total"] == embedded.usage.prompt_tokens


async def test_a_keys_allow_list_filters_the_catalogue(gw: RunningGateway) -> None:
    for key, expected in (("team-a", {"m"}), ("all-key", {"m", "emb"})):
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
        claude = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
        try:
            assert {m.id for m in (await client.models.list()).data} == expected
            listed = {m.id for m in (await claude.models.list()).data}
            assert {n.removesuffix("-alias") for n in listed} == expected
            if "emb" not in expected:
                with pytest.raises(openai.NotFoundError):
                    await client.models.retrieve("emb")
                with pytest.raises(anthropic.NotFoundError):
                    await claude.models.retrieve("emb")
            assert (await client.models.retrieve("m")).id == "m"
        finally:
            await client.close()
            await claude.close()
