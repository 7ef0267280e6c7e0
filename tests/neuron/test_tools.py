"""Tools on the bundled profile, through the OpenAI SDK against a real neuron: the
template describes them, a forced tool_choice makes the base model call one (it writes
nonsense otherwise), "none" leaves them out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from cortex.defaults import BUNDLED_GEMMA

from ..conftest import NeuronProcess, running_neuron

pytestmark = pytest.mark.model

MODEL = BUNDLED_GEMMA.id
# The bundled profile as shipped (its template), in a smaller context for the test.
PROFILE = {**{k: v for k, v in msgspec.to_builtins(BUNDLED_GEMMA).items() if v is not None},
           "n_ctx": 4096, "slots": 2}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "the city", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}},
                   "required": ["zone"]}}}
ASK = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           cache_dir: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"cache_dir": str(cache_dir), "preload": [PROFILE]},
                        tmp_path_factory.mktemp("neuron-tools"), preloaded_within=120) as process:
        yield process


@pytest.fixture
def client(neuron: NeuronProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0,
                         timeout=120)


def _arguments(call: Any) -> dict[str, Any]:
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments, dict)
    return arguments


def test_the_bundled_template_describes_tools_and_renders_a_tool_round_trip(
        neuron: NeuronProcess, client: openai.OpenAI) -> None:
    def count(**body: Any) -> int:
        reply = httpx.post(f"{neuron.url}/tokenize", json={"model": MODEL, **body})
        assert reply.status_code == 200, reply.text
        return int(reply.json()["count"])

    assert count(messages=ASK, tools=[WEATHER]) > count(messages=ASK) + 30
    # An earlier call and its result render back (a chat_format refused tools with 400).
    history: list[Any] = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]
    assert count(messages=history, tools=[WEATHER]) > count(messages=ASK, tools=[WEATHER])
    reply = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER],
                                           max_tokens=8)
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_choice_makes_the_model_call_that_tool(client: openai.OpenAI,
                                                            stream: bool) -> None:
    choice: Any = {"type": "function", "function": {"name": "get_weather"}}
    request: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": [CLOCK, WEATHER],
                               "tool_choice": choice, "max_tokens": 120, "seed": 7}
    if stream:
        chunks = list(client.chat.completions.create(**request, stream=True))
        calls = [c for chunk in chunks if chunk.choices
                 for c in chunk.choices[0].delta.tool_calls or []]
        finish = [chunk.choices[0].finish_reason for chunk in chunks
                  if chunk.choices and chunk.choices[0].finish_reason]
        assert not any(chunk.choices[0].delta.content for chunk in chunks if chunk.choices)
    else:
        reply = client.chat.completions.create(**request)
        calls = list(reply.choices[0].message.tool_calls or [])
        finish = [reply.choices[0].finish_reason]
        assert not reply.choices[0].message.content
    assert finish == ["tool_calls"]
    assert [c.function.name for c in calls] == ["get_weather"]
    arguments = _arguments(calls[0])
    assert set(arguments) == {"city", "unit"}
    assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 12
    assert arguments["unit"] in ("celsius", "fahrenheit")


def test_a_required_tool_choice_makes_the_model_call_one_of_the_tools(
        client: openai.OpenAI) -> None:
    for seed in (1, 2, 3):
        reply = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[CLOCK, WEATHER], tool_choice="required",
            max_tokens=120, seed=seed)
        assert reply.choices[0].finish_reason == "tool_calls", reply
        calls = reply.choices[0].message.tool_calls or []
        assert len(calls) == 1 and calls[0].function.name in ("get_time", "get_weather")
        arguments = _arguments(calls[0])
        if calls[0].function.name == "get_time":
            assert isinstance(arguments["zone"], int)
        else:
            assert set(arguments) == {"city", "unit"}


def test_tool_choice_none_leaves_the_tools_out(client: openai.OpenAI) -> None:
    bare = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    none = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                          tool_choice="none", max_tokens=1)
    offered = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                             max_tokens=1)
    assert bare.usage and none.usage and offered.usage
    assert none.usage.prompt_tokens == bare.usage.prompt_tokens
    assert offered.usage.prompt_tokens > bare.usage.prompt_tokens


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "`nope`"),
    ({"tool_choice": "required"}, "tool_choice", "no tools"),
    ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice", "must be"),
    ({"tools": [WEATHER], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "tool_choice", "cannot both"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "maxLength": 10**9}}}}}],
      "tool_choice": "required"}, "tools", "maxLength"),
])
def test_a_forced_tool_choice_that_cannot_be_met_is_a_400(
        client: openai.OpenAI, body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, **body)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert words in error["message"]
