"""The Responses dialect wired into a real gateway, against a scripted neuron.

The neuron is the Anthropic dialect tests' fake (tests/plugins/test_dialect_anthropic.py
says why a fake is right there): a real model cannot be made to emit a given tool call,
to repeat ids the way llama-cpp-python does, or to fail mid-stream. It records every
body the gateway sends, so the translation is checked where it lands. The client is
the real `openai` SDK (`responses.create`, `responses.stream`, `retrieve`,
`input_items.list`); everything between is real code. The same SDK against the real
model is tests/e2e/test_sdk_responses.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import openai
import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, running_gateway
from .test_dialect_anthropic import FakeNeuron, Script, call_delta, chunk
from .test_dialect_anthropic import neuron as neuron  # the fixture

pytestmark = [pytest.mark.anyio]

MODEL = "fake"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a place",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                          "required": ["location"]}}
DONE = b"data: [DONE]\n\n"
USAGE = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29,
         "prompt_tokens_details": {"cached_tokens": 4}}


def completion(content: str | None, calls: list[dict[str, Any]] | None = None,
               finish: str = "stop", **choice: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
            "usage": USAGE}


def sent_messages(neuron: FakeNeuron) -> list[dict[str, Any]]:
    """The last body's messages, without the all-null fields, for readable goldens."""
    return [{k: v for k, v in m.items() if v is not None}
            for m in neuron.bodies[-1]["messages"]]


def text_stream(*pieces: str, finish: str = "stop") -> list[Any]:
    return [chunk({"role": "assistant", "content": ""}),
            *(chunk({"content": piece}) for piece in pieces),
            chunk({}, finish, usage=USAGE), DONE]


@pytest.fixture
async def gw(neuron: FakeNeuron) -> AsyncIterator[RunningGateway]:
    profiles = [ModelProfile(id=MODEL, source="fake", aliases=["gpt-local"])]
    async with running_gateway([("fake", cast(NeuronProcess, neuron))], profiles,
                               retries=1, dialects={"responses": {"store_size": 3}}) as gateway:
        yield gateway


@pytest.fixture
async def sdk(gw: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0,
                                timeout=60)
    try:
        yield client
    finally:
        await client.close()


async def raw_events(gw: RunningGateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streamed /v1/responses and parse every frame, checking the framing: each
    `event:` names its data's type, and sequence numbers count up from 0."""
    events: list[dict[str, Any]] = []
    async with gw.client.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        name = None
        async for line in reply.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name
                events.append(data)
            else:
                assert line == "" or line.startswith(":"), line
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


# --- text, whole and streamed --------------------------------------------------------------

async def test_a_string_input_whole_and_what_the_neuron_was_sent(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    neuron.scripts.append(Script(body=completion("Hello there.")))
    response = await sdk.responses.create(
        model="gpt-local", input="Say hello.", instructions="Be brief.", max_output_tokens=30,
        temperature=0.5, top_p=0.9, reasoning={"effort": "low"}, metadata={"k": "v"})
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == "gpt-local"
    assert response.output_text == "Hello there."
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.id.startswith("msg_")
    usage = response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (20, 9)
    assert usage.total_tokens == 29 and usage.input_tokens_details.cached_tokens == 4
    assert response.instructions == "Be brief." and response.max_output_tokens == 30
    assert response.metadata == {"k": "v"} and response.temperature == 0.5

    sent = neuron.bodies[-1]
    assert sent["model"] == MODEL and sent["stream"] is False
    assert sent_messages(neuron) == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Say hello."}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (30, 0.5, 0.9)
    assert "tools" not in sent or sent["tools"] is None


async def test_a_text_stream_with_the_sdk_helper(gw: RunningGateway, neuron: FakeNeuron,
                                                 sdk: openai.AsyncOpenAI) -> None:
    neuron.scripts.append(Script(frames=text_stream("\n", "Hel", "lo", "!")))
    deltas: list[str] = []
    async with sdk.responses.stream(model=MODEL, input="Say hello.") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert "".join(deltas) == "\nHello!" and final.output_text == "\nHello!"
    assert final.status == "completed" and final.usage is not None
    assert final.usage.output_tokens == 9
    assert neuron.bodies[-1]["stream"] is True
    assert neuron.bodies[-1]["stream_options"] == {"include_usage": True}


async def test_the_documented_event_sequence(gw: RunningGateway, neuron: FakeNeuron) -> None:
    neuron.scripts.append(Script(frames=text_stream("Hi", " there")))
    events = await raw_events(gw, {"model": MODEL, "input": "hi"})
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    item_id = events[2]["item"]["id"]
    assert {e.get("item_id", item_id) for e in events[3:9]} == {item_id}
    assert events[6]["text"] == "Hi there"
    assert events[8]["item"]["content"] == [
        {"type": "output_text", "text": "Hi there", "annotations": [], "logprobs": []}]
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["id"] == events[0]["response"]["id"]
    assert done["usage"]["input_tokens"] == 20 and done["output"][0]["id"] == item_id


async def test_a_length_finish_is_an_incomplete_response(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    neuron.scripts.append(Script(body=completion("Once upon", finish="length",
                                                 stop_cause="max_tokens")))
    response = await sdk.responses.create(model=MODEL, input="Tell a story.",
                                          max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    neuron.scripts.append(Script(frames=text_stream("Once", finish="length")))
    events = await raw_events(gw, {"model": MODEL, "input": "Tell a story.",
                                   "max_output_tokens": 1})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_a_budget_the_client_did_not_set_ends_a_complete_response(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    """With no `max_output_tokens` (Codex sends none), a `length` finish came from the
    profile's default budget or cap: the server's choice, so `completed` (Codex fails a
    turn on `incomplete`)."""
    neuron.scripts.append(Script(body=completion("Once upon", finish="length",
                                                 stop_cause="max_tokens")))
    response = await sdk.responses.create(model=MODEL, input="Tell a story.")
    assert response.status == "completed" and response.incomplete_details is None
    assert response.output_text == "Once upon"
    neuron.scripts.append(Script(frames=text_stream("Once", finish="length")))
    events = await raw_events(gw, {"model": MODEL, "input": "Tell a story."})
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["status"] == "completed"


# --- tools ---------------------------------------------------------------------------------

async def test_a_streamed_tool_call_and_hosted_tools_set_aside(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    call = "call__0_get_weather_cmpl-1"
    neuron.scripts.append(Script(frames=[
        chunk({"role": "assistant"}), chunk({"content": "\n"}),
        chunk(call_delta(0, call, "get_weather", "")),
        chunk(call_delta(0, call, "get_weather", '{"location": "Pa')),
        chunk(call_delta(0, call, "get_weather", 'ris"}')),
        chunk({}, "tool_calls", usage=USAGE), DONE]))
    tools: Any = [WEATHER, {"type": "web_search"}, {"type": "file_search",
                                                   "vector_store_ids": ["vs_1"]}]
    arguments: list[str] = []
    async with sdk.responses.stream(model=MODEL, input="Weather in Paris?", tools=tools,
                                    tool_choice="auto") as stream:
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments.append(event.delta)
        final = await stream.get_final_response()
    assert [item.type for item in final.output] == ["function_call"]  # no whitespace message
    item = final.output[0]
    assert item.type == "function_call" and item.name == "get_weather"
    assert item.call_id == call and json.loads(item.arguments) == {"location": "Paris"}
    assert json.loads("".join(arguments)) == {"location": "Paris"}
    assert final.model_extra is not None
    assert final.model_extra["ignored_tools"] == ["web_search", "file_search"]
    sent = neuron.bodies[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert sent["tool_choice"] == "auto"


async def test_namespaces_are_flattened_and_calls_name_their_namespace(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    spawn = {"type": "function", "name": "spawn", "parameters": {"type": "object"}}
    tools: Any = [
        WEATHER,
        {"type": "namespace", "name": "agents", "description": "Sub-agents.",
         "tools": [spawn, {"type": "function", "name": "close"}]},
        {"type": "namespace", "name": "jobs", "description": "Jobs.", "tools": [spawn]}]
    neuron.scripts.append(Script(body=completion("", [
        {"id": "c1", "type": "function", "function": {"name": "close", "arguments": ""}},
        {"id": "c2", "type": "function",
         "function": {"name": "jobs__spawn", "arguments": '{"n": 1}'}}], "tool_calls")))
    response = await sdk.responses.create(model=MODEL, input="Go.", tools=tools)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, c.namespace, c.arguments) for c in calls] == [
        ("close", "agents", "{}"), ("spawn", "jobs", '{"n": 1}')]
    sent = neuron.bodies[-1]["tools"]
    names = [t["function"]["name"] for t in sent]
    assert names == ["get_weather", "agents__spawn", "close", "jobs__spawn"]
    assert sent[2]["function"]["description"] == "Sub-agents."
    assert sent[2]["function"]["parameters"] == {"type": "object", "properties": {}}


async def test_a_function_call_round_trip_by_replayed_items(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    neuron.scripts.append(Script(body=completion("It is sunny in Paris.")))
    items: Any = [
        {"type": "message", "role": "developer",
         "content": [{"type": "input_text", "text": "Use tools."}]},
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"location": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "message", "role": "developer", "content": "Answer in one line."},
    ]
    response = await sdk.responses.create(model=MODEL, input=items, tools=[WEATHER],  # type: ignore[list-item]
                                          store=False)
    assert response.output_text == "It is sunny in Paris." and response.store is False
    sent = sent_messages(neuron)
    assert [(m["role"], m.get("content")) for m in sent] == [
        ("system", "Use tools."), ("user", "Weather in Paris?"), ("assistant", "Checking."),
        ("tool", "sunny"), ("user", "Answer in one line.")]
    assert sent[2]["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"location": "Paris"}'}}]
    assert sent[3]["tool_call_id"] == "call_1"
    with pytest.raises(openai.NotFoundError):  # store: false kept nothing
        await sdk.responses.retrieve(response.id)


async def test_tool_choice_and_parallel_tool_calls(gw: RunningGateway, neuron: FakeNeuron,
                                                   sdk: openai.AsyncOpenAI) -> None:
    two = [{"id": f"c{i}", "type": "function",
            "function": {"name": "get_weather", "arguments": f'{{"location": "{city}"}}'}}
           for i, city in enumerate(("Paris", "Rome"))]
    neuron.scripts.append(Script(body=completion("", two, "tool_calls")))
    response = await sdk.responses.create(
        model=MODEL, input="Weather?", tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False)
    assert [item.type for item in response.output] == ["function_call"]
    assert response.parallel_tool_calls is False
    sent = neuron.bodies[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    neuron.scripts.append(Script(body=completion("ok")))
    await sdk.responses.create(model=MODEL, input="Weather?", tools=[WEATHER],  # type: ignore[list-item]
                               tool_choice="none")
    assert not neuron.bodies[-1].get("tools")
    for choice, param in [({"type": "function", "name": "nope"}, "tool_choice"),
                          ({"type": "web_search"}, "tool_choice")]:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.responses.create(model=MODEL, input="x", tools=[WEATHER],  # type: ignore[list-item]
                                       tool_choice=choice)  # type: ignore[arg-type]
        assert refused.value.param == param


async def test_json_schema_text_format_becomes_a_response_format(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    neuron.scripts.append(Script(body=completion('{"city": "Paris"}')))
    response = await sdk.responses.create(
        model=MODEL, input="Capital of France?",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema,
                         "strict": True}})
    assert json.loads(response.output_text) == {"city": "Paris"}
    assert neuron.bodies[-1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


# --- kept responses ------------------------------------------------------------------------

async def test_previous_response_id_retrieve_and_input_items(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    neuron.scripts.append(Script(body=completion("", [{"id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Oslo"}'}}],
        "tool_calls")))
    first = await sdk.responses.create(model=MODEL, input="Weather in Oslo?",
                                       instructions="Be brief.", tools=[WEATHER])  # type: ignore[list-item]
    call = first.output[0]
    assert call.type == "function_call"
    neuron.scripts.append(Script(frames=text_stream("Snow.")))
    async with sdk.responses.stream(
            model=MODEL, previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": "snow"}]) as stream:
        second = await stream.get_final_response()
    assert second.output_text == "Snow." and second.previous_response_id == first.id
    sent = neuron.bodies[-1]["messages"]  # instructions are not carried over
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id and sent[2]["content"] == "snow"

    kept = await sdk.responses.retrieve(second.id)
    assert kept.id == second.id and kept.output_text == "Snow." and kept.status == "completed"
    inputs = [item async for item in sdk.responses.input_items.list(first.id)]
    assert [(i.type, getattr(i, "role", None)) for i in inputs] == [("message", "user")]
    assert inputs[0].id.startswith("msg_")

    neuron.scripts.append(Script(body=completion("Rain.")))
    third = await sdk.responses.create(model=MODEL, previous_response_id=second.id,
                                       input="And tomorrow?")
    assert [m["role"] for m in neuron.bodies[-1]["messages"]] == [
        "user", "assistant", "tool", "assistant", "user"]
    # store_size is 3 here: two more push out `second` and `first` (used by the third,
    # so fresher than it), and the chain through them breaks.
    for _ in range(2):
        neuron.scripts.append(Script(body=completion("x")))
        await sdk.responses.create(model=MODEL, input="x")
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as broken:
        await sdk.responses.create(model=MODEL, previous_response_id=third.id, input="more")
    assert broken.value.code == "previous_response_not_found"
    assert broken.value.param == "previous_response_id"
    assert third.id in broken.value.message and second.id in broken.value.message


async def test_an_unknown_previous_response_id_is_a_clear_400(
        gw: RunningGateway, sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.responses.create(model=MODEL, previous_response_id="resp_nope", input="hi")
    assert refused.value.code == "previous_response_not_found"
    assert "resp_nope" in refused.value.message
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.delete("resp_nope")


# --- refusals and failures -----------------------------------------------------------------

@pytest.mark.parametrize("extra, param", [
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input[0]"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0]"),
    ({"max_output_tokens": 0}, None),
    ({"temperature": 3}, None),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"tools": [{"type": "function", "name": "bad name"}]}, "tools[0]"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
], ids=["image", "item-type", "role", "budget", "temperature", "background", "truncation",
        "tool-name", "schema"])
async def test_what_cannot_be_served_is_refused_naming_the_field(
        gw: RunningGateway, neuron: FakeNeuron, extra: dict[str, Any], param: str | None
        ) -> None:
    reply = await gw.client.post("/v1/responses", json={"model": MODEL, "input": "hi", **extra})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert neuron.bodies == []  # nothing reached the neuron


async def test_neuron_errors_keep_their_envelope_with_this_apis_field_names(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    body = {"error": {"message": "bad schema", "type": "invalid_request_error",
                      "param": "response_format", "code": "invalid_schema"}}
    neuron.scripts.append(Script(status=400, body=body))
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.responses.create(model=MODEL, input="x")
    assert refused.value.code == "invalid_schema" and refused.value.param == "text.format"
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.responses.create(model="nope", input="x")
    assert missing.value.code == "model_not_found"


async def test_a_stream_that_fails_midway_ends_with_response_failed(
        gw: RunningGateway, neuron: FakeNeuron) -> None:
    neuron.scripts.append(Script(frames=[chunk({"role": "assistant", "content": "Hel"}),
                                         {"error": {"message": "busy", "code": "unavailable"}}]))
    events = await raw_events(gw, {"model": MODEL, "input": "hi"})
    assert events[0]["type"] == "response.created"
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "unavailable" and events[-2]["message"] == "busy"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "unavailable"
    neuron.scripts.append(Script(frames=[chunk({"role": "assistant", "content": "Hel"})]))
    events = await raw_events(gw, {"model": MODEL, "input": "hi"})  # dropped: no finish
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"


async def test_a_context_that_fills_up_is_an_error_not_an_incomplete_reply(
        gw: RunningGateway, neuron: FakeNeuron, sdk: openai.AsyncOpenAI) -> None:
    neuron.scripts.append(Script(body=completion("Once", finish="length",
                                                 stop_cause="context")))
    with pytest.raises(openai.BadRequestError) as full:
        await sdk.responses.create(model=MODEL, input="Tell a story.")
    assert full.value.code == "context_length_exceeded"
    cut = chunk({}, "length", usage=USAGE)
    cut["choices"][0]["stop_cause"] = "context"
    neuron.scripts.append(Script(frames=[
        chunk({"role": "assistant", "content": "Once"}), cut, DONE]))
    events = await raw_events(gw, {"model": MODEL, "input": "Tell a story."})
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "context_length_exceeded"
