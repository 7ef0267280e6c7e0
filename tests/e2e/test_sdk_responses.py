"""The official `openai` SDK's Responses API (`responses.create`, `responses.stream`)
against a real gateway and a real neuron running the bundled Gemma with the bundled
tools template: text, `text.format` json_schema and function tools, and a conversation
continued by `previous_response_id` and by replayed items. The base model's words are
not checked, only what the API promises (grammar-shaped JSON, forced calls, counts)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from cortex import ModelProfile
from cortex.chat_templates import GEMMA_TOOLS

from ..conftest import NeuronProcess
from ..gateway_support import GEMMA, running_gateway

pytestmark = [pytest.mark.model, pytest.mark.anyio]

MODEL = "gemma-tools"
WEATHER: Any = {"type": "function", "name": "get_weather", "strict": True,
                "description": "The weather in a city",
                "parameters": {"type": "object", "additionalProperties": False,
                               "properties": {"city": {"type": "string", "maxLength": 12}},
                               "required": ["city"]}}
FORCED: Any = {"type": "function", "name": "get_weather"}
CITY: Any = {"type": "json_schema", "name": "city", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["city"],
    "properties": {"city": {"type": "string", "maxLength": 12}}}}


@pytest.fixture
async def client(neuron: NeuronProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    profile = ModelProfile(id=MODEL, source=GEMMA, chat_template=GEMMA_TOOLS, n_ctx=4096)
    async with running_gateway([("a", neuron)], [profile]) as gw:
        sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0,
                                 timeout=300)
        try:
            yield sdk
        finally:
            await sdk.close()


async def test_text_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    whole = await client.responses.create(model=MODEL, input="Write a story about a cat.",
                                          instructions="You are a storyteller.",
                                          max_output_tokens=8, temperature=0)
    assert whole.status == "incomplete" and whole.output_text
    assert whole.incomplete_details is not None
    assert whole.incomplete_details.reason == "max_output_tokens"
    usage = whole.usage
    assert usage is not None and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    stream = await client.responses.create(model=MODEL, input="Write a story about a cat.",
                                           instructions="You are a storyteller.",
                                           max_output_tokens=8, temperature=0, stream=True)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text  # greedy: the same words
    final = events[-1].response
    assert final.usage is not None and final.usage.output_tokens == usage.output_tokens
    assert final.usage.input_tokens == usage.input_tokens


async def test_json_schema_is_what_the_reply_is(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(model=MODEL, input="Name a city in France.",
                                       text={"format": CITY}, max_output_tokens=40,
                                       temperature=0) as stream:
        final = await stream.get_final_response()
    assert final.status == "completed"
    value = json.loads(final.output_text)
    assert set(value) == {"city"} and isinstance(value["city"], str)
    assert len(value["city"]) <= 12


async def test_a_forced_function_call_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    whole = await client.responses.create(model=MODEL, input="What is the weather in Paris?",
                                          tools=[WEATHER, {"type": "web_search"}],
                                          tool_choice=FORCED, max_output_tokens=60,
                                          temperature=0)
    calls = [item for item in whole.output if item.type == "function_call"]
    assert len(calls) >= 1 and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    assert calls[0].call_id and calls[0].status == "completed"
    assert whole.model_extra is not None and whole.model_extra["ignored_tools"] == ["web_search"]

    arguments: list[str] = []
    async with client.responses.stream(model=MODEL, input="What is the weather in Rome?",
                                       tools=[WEATHER], tool_choice=FORCED,
                                       parallel_tool_calls=False,
                                       max_output_tokens=60, temperature=0) as stream:
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments.append(event.delta)
        final = await stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"  # parallel_tool_calls: false
    assert json.loads("".join(arguments)) == json.loads(calls[0].arguments)


async def test_a_conversation_by_previous_response_id_and_by_replayed_items(
        client: openai.AsyncOpenAI) -> None:
    """The same conversation sent both ways renders the same prompt: the same count of
    input tokens, more than the new turn alone."""
    first = await client.responses.create(model=MODEL, input="What is the weather in Oslo?",
                                          tools=[WEATHER], tool_choice=FORCED,
                                          max_output_tokens=60)
    call = next(item for item in first.output if item.type == "function_call")
    result: Any = {"type": "function_call_output", "call_id": call.call_id,
                   "output": "Snow, -3 C."}
    chained = await client.responses.create(model=MODEL, previous_response_id=first.id,
                                            input=[result], tools=[WEATHER],
                                            max_output_tokens=8, temperature=0)
    assert chained.previous_response_id == first.id
    replayed_input: Any = [{"role": "user", "content": "What is the weather in Oslo?"},
                           *[item.model_dump(exclude_none=True) for item in first.output],
                           result]
    replayed = await client.responses.create(model=MODEL, input=replayed_input,
                                             tools=[WEATHER], max_output_tokens=8,
                                             temperature=0, store=False)
    alone = await client.responses.create(model=MODEL, input="Snow, -3 C.", tools=[WEATHER],
                                          max_output_tokens=1)
    assert chained.usage is not None and replayed.usage is not None
    assert alone.usage is not None
    assert chained.usage.input_tokens == replayed.usage.input_tokens
    assert chained.usage.input_tokens > alone.usage.input_tokens
    assert chained.output_text == replayed.output_text  # greedy, same prompt

    kept = await client.responses.retrieve(chained.id)
    assert kept.id == chained.id and kept.output_text == chained.output_text
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(replayed.id)  # store: false
    with pytest.raises(openai.BadRequestError) as unknown:
        await client.responses.create(model=MODEL, previous_response_id="resp_gone",
                                      input="Hello?")
    assert unknown.value.code == "previous_response_not_found"
