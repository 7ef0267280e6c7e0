"""A stream's prompt counts come first where the client's API wants them, and nowhere else:
an Anthropic stream's message_start carries the prompt's real input_tokens (the neuron
tells them before any content, asked by the gateway's Anthropic dialect), keep-alives
before it are SSE comments, and an OpenAI stream through the gateway gets no extra
chunk. A synthetic neuron (its prompt count is exact and equals its count_tokens, and
`ttft_ms` holds the first token the way a prefill does) with the official SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess, running_neuron
from ..gateway_support import RunningGateway, running_gateway, sse_lines

pytestmark = [pytest.mark.anyio,
              pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")]

# The first token waits ttft_ms: several keep-alive intervals (0.2 s) of "prefill".
PROFILES = [ModelProfile(id="syn", harness="synthetic",
                         source="synthetic:rate=0,tokens=4,ttft_ms=700")]
BODY: dict[str, Any] = {
    "model": "syn", "max_tokens": 4, "system": "Be brief.",
    "messages": [{"role": "user", "content": "Write a short story about a cat."},
                 {"role": "assistant", "content": "Once upon a time"},
                 {"role": "user", "content": "Go on."}]}
PROMPT = 19  # the synthetic harness counts the words of "role: text" lines


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    with running_neuron({"name": "a"}, tmp_path_factory.mktemp("stream-usage")) as neuron:
        yield neuron


@pytest.fixture
async def gw(node: NeuronProcess) -> AsyncIterator[RunningGateway]:
    async with running_gateway([("a", node)], PROFILES) as gateway:
        yield gateway


async def test_message_start_carries_the_prompts_input_tokens(gw: RunningGateway) -> None:
    sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=60)
    try:
        counted = await sdk.messages.count_tokens(
            model=BODY["model"], system=BODY["system"], messages=BODY["messages"])
        whole = await sdk.messages.create(**BODY)
        started: list[anthropic.types.Usage] = []
        async with sdk.messages.stream(**BODY) as stream:
            async for event in stream:
                if event.type == "message_start":
                    started.append(event.message.usage)
            final = await stream.get_final_message()
    finally:
        await sdk.close()
    assert len(started) == 1
    assert started[0].input_tokens == whole.usage.input_tokens == counted.input_tokens == PROMPT
    assert started[0].output_tokens == 0 and not started[0].cache_read_input_tokens
    assert final.usage.input_tokens == PROMPT and final.usage.output_tokens == 4


async def test_keepalives_before_message_start_are_comments(gw: RunningGateway) -> None:
    """Anthropic allows no event before message_start; the neuron's first token is held
    past several keep-alive intervals, and they come as SSE comments the SDKs skip."""
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "k"}
    async with gw.client.stream("POST", "/v1/messages", json={**BODY, "stream": True},
                                headers=headers) as reply:
        assert reply.status_code == 200
        await reply.aread()
    lines = sse_lines(reply.text)
    start = lines.index("event: message_start")
    assert start >= 2 and all(line.startswith(": ") for line in lines[:start]), lines
    assert not any(line.startswith(":") for line in lines[start:]), lines
    assert "event: ping" not in lines
    assert f'"input_tokens":{PROMPT},' in lines[start + 1]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_an_openai_stream_through_the_gateway_gets_no_extra_chunk(
        gw: RunningGateway, include_usage: bool) -> None:
    """The prompt's early chunk is asked for by the Anthropic dialect alone: an OpenAI
    client sees at most the one usage chunk it asked for, last."""
    sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0, timeout=60)
    try:
        options: Any = {"include_usage": True} if include_usage else openai.NOT_GIVEN
        stream = await sdk.chat.completions.create(
            model="syn", max_tokens=4, stream=True, stream_options=options,
            messages=[{"role": "user", "content": "hi"}])
        chunks = [chunk async for chunk in stream]
    finally:
        await sdk.close()
    empty = [i for i, chunk in enumerate(chunks) if not chunk.choices]
    assert empty == ([len(chunks) - 1] if include_usage else [])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if include_usage:
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens == 4
