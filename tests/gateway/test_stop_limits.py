"""Stop lists are capped (`[gateway] max_stop_strings`, `max_stop_bytes`; a neuron's own
fixed caps behind them): an over-cap list gets 400 in the client's dialect naming its
field (OpenAI `stop`, Anthropic `stop_sequences`) and reaches no neuron. Clients are the
official SDKs; the neuron is a real process running the synthetic harness."""

from __future__ import annotations

from collections.abc import Callable

import anthropic
import httpx
import msgspec
import openai
import pytest

from cortex import ModelProfile
from cortex.stops import MAX_STOP_BYTES, MAX_STOP_STRINGS

from ..conftest import NeuronProcess
from ..gateway_support import profile, running_gateway

pytestmark = pytest.mark.anyio

CHAT = [{"role": "user", "content": "Hi"}]


def synthetic() -> ModelProfile:
    return msgspec.structs.replace(profile("s", neurons=["n"]), harness="synthetic",
                                   source="synthetic:rate=0,tokens=50")


def stops(count: int) -> list[str]:
    return [f"never-{n}" for n in range(count)]


async def test_openai_stop_over_the_caps_is_400_naming_stop(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    neuron = start_neuron({"name": "n"})
    async with running_gateway([("n", neuron)], [synthetic()]) as gw, \
            openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0) as sdk:
        for stop in (stops(MAX_STOP_STRINGS + 1), ["x" * (MAX_STOP_BYTES + 1)]):
            with pytest.raises(openai.BadRequestError) as chat:
                await sdk.chat.completions.create(model="s", messages=CHAT,  # type: ignore[arg-type]
                                                  stop=stop)
            assert chat.value.param == "stop", chat.value.body
            with pytest.raises(openai.BadRequestError) as text:
                await sdk.completions.create(model="s", prompt="Hi", stop=stop)
            assert text.value.param == "stop", text.value.body
        assert "65 strings" in str(chat.value.body) or "bytes" in str(chat.value.body)
        assert gw.recorder.records == []  # refused before routing: no neuron saw them

        # A million strings (the freeze this guards against) are refused unread.
        reply = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": CHAT, "stop": stops(1_000_000)})
        assert reply.status_code == 400, reply.text
        assert "bytes of JSON" in reply.json()["error"]["message"]
        assert reply.json()["error"]["param"] == "stop"

        # Within the caps, the stop strings work as ever.
        whole = await sdk.chat.completions.create(model="s", messages=CHAT,  # type: ignore[arg-type]
                                                  max_tokens=50)
        text_ = whole.choices[0].message.content or ""
        second = text_.split()[1]
        cut = await sdk.chat.completions.create(model="s", messages=CHAT,  # type: ignore[arg-type]
                                                max_tokens=50,
                                                stop=[*stops(MAX_STOP_STRINGS - 1), second])
        assert cut.choices[0].finish_reason == "stop"
        assert second not in (cut.choices[0].message.content or "")


async def test_anthropic_stop_sequences_over_the_caps_is_400_naming_them(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    neuron = start_neuron({"name": "n"})
    async with running_gateway([("n", neuron)], [synthetic()]) as gw, \
            anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0) as sdk:
        for sequences in (stops(MAX_STOP_STRINGS + 1), ["x" * (MAX_STOP_BYTES + 1)]):
            with pytest.raises(anthropic.BadRequestError) as refused:
                await sdk.messages.create(model="s", max_tokens=5, messages=CHAT,  # type: ignore[arg-type]
                                          stop_sequences=sequences)
            body = refused.value.body
            assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
            assert "`stop_sequences`" in body["error"]["message"], body
        assert gw.recorder.records == []
        reply = await sdk.messages.create(model="s", max_tokens=5, messages=CHAT,  # type: ignore[arg-type]
                                          stop_sequences=stops(MAX_STOP_STRINGS))
        assert reply.stop_reason == "max_tokens"


async def test_the_caps_are_settings_and_the_neuron_keeps_its_own(
        start_neuron: Callable[..., NeuronProcess]) -> None:
    neuron = start_neuron({"name": "n"})
    # Lower than the neuron's: the gateway refuses.
    async with running_gateway([("n", neuron)], [synthetic()], max_stop_strings=2,
                               max_stop_bytes=64) as gw:
        three = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": CHAT, "stop": stops(3)})
        assert three.status_code == 400 and "at most 2" in three.text, three.text
        big = await gw.client.post("/v1/completions", json={
            "model": "s", "prompt": "Hi", "stop": "x" * 65})
        assert big.status_code == 400 and "at most 64" in big.text, big.text
        assert (await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": CHAT, "stop": stops(2)})).status_code == 200
    # Higher than the neuron's: the neuron refuses what it will not match, with 400.
    async with running_gateway([("n", neuron)], [synthetic()],
                               max_stop_strings=4 * MAX_STOP_STRINGS) as gw:
        over = await gw.client.post("/v1/chat/completions", json={
            "model": "s", "messages": CHAT, "stop": stops(MAX_STOP_STRINGS + 1)})
        assert over.status_code == 400, over.text
        assert over.json()["error"]["param"] == "stop"
        # The neuron's words (its cap, not the gateway's 256), passed on.
        assert f"at most {MAX_STOP_STRINGS} are" in over.json()["error"]["message"]
    async with httpx.AsyncClient(base_url=neuron.url) as direct:
        wrong = await direct.post("/v1/chat/completions", json={
            "model": "s", "messages": CHAT, "stop": stops(MAX_STOP_STRINGS + 1)})
        assert wrong.status_code == 400, wrong.text
