"""The Anthropic dialect wired into a real gateway, against a scripted neuron.

The neuron here is a fake, on purpose: it is the one place one is right. A real model
cannot be made to emit a given tool call, to repeat ids the way llama-cpp-python does,
to hold its first token until the test has seen a keep-alive, to die mid-stream, or to answer
429 or 413; a scripted server speaking the neuron's wire format (real HTTP on a real
port, `/status` included, so the gateway polls, routes and proxies it as any neuron)
can. It also records every body the gateway sends, so the translation is checked where
it lands. The SDK is the real `anthropic` package; everything between is real code.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import anthropic
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cortex import GatewayConfig, ModelProfile, SSEReader

from ..conftest import NeuronProcess, free_port
from ..gateway_support import RunningGateway, running_gateway, wait_until

pytestmark = [pytest.mark.anyio,
              pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")]

MODEL = "fake"
WEATHER = {"name": "get_weather", "description": "Weather for a place",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


# --- the scripted neuron -------------------------------------------------------------------

def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """A chat.completion.chunk as llama-cpp-python writes it: explicit nulls everywhere."""
    full = {"role": None, "content": None, "function_call": None, "tool_calls": None,
            **(delta or {})}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": MODEL, "choices": [{"index": 0, "delta": full, "finish_reason": finish,
                                         "logprobs": None}], **extra}


def call_delta(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """llama-cpp-python repeats `id`, `type` and `name` in every delta of a call, and sends
    the deprecated `function_call` beside it (api-conformance §7.2)."""
    return {"function_call": {"name": name, "arguments": arguments},
            "tool_calls": [{"index": index, "id": call_id, "type": "function",
                            "function": {"name": name, "arguments": arguments}}]}


class Script:
    """One canned answer: a status and JSON body, or SSE frames (each a payload, or a raw
    bytes frame such as a comment). `hold` delays the answer (the first frame) until set;
    `then_wait` keeps the stream open after the frames until the client leaves."""

    def __init__(self, *, status: int = 200, body: Any = None,
                 frames: list[Any] | None = None, hold: asyncio.Event | None = None,
                 then_wait: bool = False, crlf: bool = False) -> None:
        self.status, self.body, self.frames = status, body, frames
        self.hold, self.then_wait, self.crlf = hold, then_wait, crlf


class FakeNeuron:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scripts: list[Script] = []
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.disconnected = asyncio.Event()
        self.count = 37

    def app(self) -> Starlette:
        async def status(request: Request) -> Response:
            model = {"id": MODEL, "state": "ready", "source": "fake", "n_ctx": 4096}
            return JSONResponse({"node": "fake", "version": "0", "cpu_only": True,
                                 "budget_bytes": 1 << 30, "reserved_bytes": 0,
                                 "free_bytes": 1 << 30, "models": [model]})

        async def health(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def tokenize(request: Request) -> Response:
            self.paths.append(request.url.path)
            self.bodies.append(await request.json())
            return JSONResponse({"model": MODEL, "count": self.count})

        async def chat(request: Request) -> Response:
            self.paths.append(request.url.path)
            self.bodies.append(await request.json())
            script = self.scripts.pop(0)
            if script.frames is None:
                if script.hold is not None:
                    await script.hold.wait()
                return JSONResponse(script.body, status_code=script.status)
            return StreamingResponse(self._stream(script), media_type="text/event-stream")

        return Starlette(routes=[
            Route("/health", health), Route("/status", status),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"])])

    async def _stream(self, script: Script) -> AsyncIterator[bytes]:
        end = b"\r\n" if script.crlf else b"\n"
        try:
            if script.hold is not None:
                await script.hold.wait()
            for frame in script.frames or ():
                if isinstance(frame, bytes):
                    yield frame
                else:
                    yield b"data: " + json.dumps(frame).encode() + end + end
            if script.then_wait:
                await asyncio.Event().wait()  # until the gateway closes the connection
        except (asyncio.CancelledError, GeneratorExit):
            self.disconnected.set()
            raise


@pytest.fixture
async def neuron() -> AsyncIterator[FakeNeuron]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    fake = FakeNeuron()
    config = Config()
    config.bind = [f"127.0.0.1:{fake.port}"]
    config.accesslog = None
    config.graceful_timeout = 1
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(fake.app(), config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        yield fake
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def gw(neuron: FakeNeuron) -> AsyncIterator[RunningGateway]:
    profiles = [ModelProfile(id=MODEL, source="fake", aliases=["claude-sonnet-4-5"])]
    async with running_gateway([("fake", cast(NeuronProcess, neuron))], profiles,
                               retries=1) as gateway:
        yield gateway


@pytest.fixture
async def sdk(gw: RunningGateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=60)
    try:
        yield client
    finally:
        await client.close()


async def raw_events(gw: RunningGateway, body: dict[str, Any],
                     on_event: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """POST a streamed /v1/messages and parse every frame, checking the framing (§1.4).
    SSE comments (keep-alives) may come only before the first event; `on_event` is told
    of each as ":"."""
    events: list[dict[str, Any]] = []
    async with gw.client.stream("POST", "/v1/messages", json={**body, "stream": True}) as reply:
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
                if on_event is not None:
                    on_event(name)
            elif line.startswith(":"):
                assert not events, line  # Anthropic allows nothing before message_start
                if on_event is not None:
                    on_event(":")
            else:
                assert line == "", line
    return events


def well_formed(events: list[dict[str, Any]]) -> None:
    """The grammar of §3.3 (checklist 46 to 52)."""
    kinds = [e["type"] for e in events if e["type"] != "ping"]
    assert kinds[0] == "message_start" and kinds.count("message_start") == 1
    assert events[0]["type"] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"] and kinds.count("message_delta") == 1
    open_block: int | None = None
    started = 0
    for event in events:
        if event["type"] == "content_block_start":
            assert open_block is None and event["index"] == started
            open_block, started = event["index"], started + 1
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_block
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_block
            open_block = None
    assert open_block is None


# --- tool calls ----------------------------------------------------------------------------

def llama_tool_stream() -> list[Any]:
    call = "call__0_get_weather_cmpl-1"
    return [
        chunk({"role": "assistant"}),
        b": ping - 2026-11-22 16:00:00.000000\n\n",  # sse_starlette's keep-alive comment
        chunk(call_delta(0, call, "get_weather", "")),
        chunk(call_delta(0, call, "get_weather", '{"location": "Pa')),
        chunk({**call_delta(0, call, "get_weather", 'ris"}'), "content": None}),
        chunk({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
async def test_a_llama_cpp_python_tool_stream_becomes_one_tool_use_block(
        gw: RunningGateway, neuron: FakeNeuron, sdk: anthropic.AsyncAnthropic,
        crlf: bool) -> None:
    neuron.scripts.append(Script(frames=llama_tool_stream(), crlf=crlf))
    partials: list[str] = []
    async with sdk.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=ASK,
                                   tools=[WEATHER]) as stream:  # type: ignore[list-item]
        async for event in stream:
            if event.type == "input_json":
                partials.append(event.partial_json)
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["tool_use"]  # no empty text block
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"  # not doubled
    assert block.id == "call__0_get_weather_cmpl-1"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", block.id)
    assert block.input == {"location": "Paris"}
    assert json.loads("".join(partials)) == {"location": "Paris"}
    assert final.stop_reason == "tool_use" and final.model == "claude-sonnet-4-5"
    assert final.usage.output_tokens >= 1

    sent = neuron.bodies[-1]
    assert sent["model"] == MODEL  # the alias became the profile id
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "auto" and sent["stream"] is True


async def test_text_then_parallel_interleaved_calls(gw: RunningGateway,
                                                    neuron: FakeNeuron) -> None:
    a, b = "call_a", "call_b"
    neuron.scripts.append(Script(frames=[
        chunk({"role": "assistant", "content": "Checking", "tool_calls": []}),
        chunk({"content": " both."}),
        chunk(call_delta(0, a, "get_weather", '{"location": ')),
        chunk(call_delta(1, b, "get_weather", '{"location": "Rome"')),
        chunk(call_delta(0, a, "get_weather", '"Paris"}')),
        chunk(call_delta(1, b, "get_weather", "}")),
        chunk({}, "tool_calls", usage={"prompt_tokens": 20, "completion_tokens": 9,
                                       "total_tokens": 29}),
        b"data: [DONE]\n\n",
    ]))
    events = await raw_events(gw, {"model": MODEL, "max_tokens": 100, "messages": ASK,
                                   "tools": [WEATHER]})
    well_formed(events)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [(s["type"], s.get("id")) for s in starts] == [("text", None), ("tool_use", a),
                                                          ("tool_use", b)]
    assert starts[1]["input"] == {} and starts[1]["name"] == "get_weather"
    inputs: dict[int, str] = {}
    text = ""
    for e in events:
        if e["type"] == "content_block_delta":
            if e["delta"]["type"] == "input_json_delta":
                assert e["index"] in (1, 2)
                inputs[e["index"]] = inputs.get(e["index"], "") + e["delta"]["partial_json"]
            else:
                assert e["delta"]["type"] == "text_delta" and e["index"] == 0
                text += e["delta"]["text"]
    assert text == "Checking both."
    assert json.loads(inputs[1]) == {"location": "Paris"}
    assert json.loads(inputs[2]) == {"location": "Rome"}
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] == 9 and delta["usage"]["input_tokens"] == 20


async def test_a_whole_tool_reply_and_what_the_neuron_was_sent(
        gw: RunningGateway, neuron: FakeNeuron, sdk: anthropic.AsyncAnthropic) -> None:
    neuron.scripts.append(Script(body={
        "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "",
            "tool_calls": [{"id": "call 1!", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"location": "Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}}))
    history = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "toolu_A", "name": "get_weather",
             "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "toolu_B", "name": "get_weather",
             "input": {"location": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_A", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_B", "is_error": True,
             "content": [{"type": "text", "text": "no station"}]},
            {"type": "text", "text": "And Oslo?"}]},
    ]
    message = await sdk.messages.create(
        model=MODEL, max_tokens=50, messages=history, tools=[WEATHER],  # type: ignore[arg-type]
        tool_choice={"type": "tool", "name": "get_weather"},
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}])
    assert [b.type for b in message.content] == ["tool_use"]
    block = message.content[0]
    assert block.type == "tool_use" and block.input == {"location": "Oslo"}
    assert re.fullmatch(r"[A-Za-z0-9_-]+", block.id)  # "call 1!" sanitised
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (50, 7)

    sent = neuron.bodies[-1]
    assert sent["stream"] is False
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    roles = [(m["role"], m.get("tool_call_id")) for m in sent["messages"]]
    assert roles == [("system", None), ("user", None), ("assistant", None),
                     ("tool", "toolu_A"), ("tool", "toolu_B"), ("user", None)]
    assert sent["messages"][0]["content"] == "Be brief.\n\nUse tools."
    assert [c["id"] for c in sent["messages"][2]["tool_calls"]] == ["toolu_A", "toolu_B"]
    assert "Error" in sent["messages"][4]["content"] and "no station" in sent["messages"][4][
        "content"]
    assert sent["messages"][5]["content"] == "And Oslo?"


# --- streams: pings, stop sequences, failures ----------------------------------------------

async def test_comments_come_until_message_start_which_carries_the_prompts_counts(
        gw: RunningGateway, neuron: FakeNeuron) -> None:
    """While the neuron prefills the gateway sends SSE comments (no event may come before
    message_start, which waits for the prompt's counts); the neuron's prompt chunk opens
    message_start with input_tokens = prompt - cached and the cached part apart."""
    first_token = asyncio.Event()
    usage = {"prompt_tokens": 120, "completion_tokens": 0, "total_tokens": 120,
             "prompt_tokens_details": {"cached_tokens": 100}}
    neuron.scripts.append(Script(hold=first_token, frames=[
        chunk({"role": "assistant", "content": ""}),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
         "model": MODEL, "choices": [], "usage": usage},
        chunk({"content": "Hi"}), chunk({}, "stop"),
        {"choices": [], "usage": {**usage, "completion_tokens": 1, "total_tokens": 121}},
        b"data: [DONE]\n\n"]))
    seen: list[str] = []

    def on_event(name: str) -> None:
        seen.append(name)
        first_token.set()  # the neuron answers once the client has seen a keep-alive

    events = await raw_events(gw, {"model": MODEL, "max_tokens": 10, "messages": ASK},
                              on_event)
    well_formed(events)
    assert seen[0] == ":" and "ping" not in seen
    assert events[0]["message"]["usage"] == {
        "input_tokens": 20, "output_tokens": 0, "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100}
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["usage"]["input_tokens"] == 20 and delta["usage"]["output_tokens"] == 1
    assert neuron.bodies[-1]["stream_options"] == {"include_usage": True,
                                                   "prompt_usage": True}


async def test_a_refusal_after_the_stream_began_is_an_error_event(
        gw: RunningGateway, neuron: FakeNeuron) -> None:
    """A neuron that answers 400 once the gateway has begun the stream (a cold load, a
    long queue): comments, then the error event alone, no message_start made up, which
    the SDK raises with the neuron's error type."""
    body = {"error": {"message": "bad field", "type": "invalid_request_error",
                      "param": None, "code": None}}
    held = asyncio.Event()
    neuron.scripts.append(Script(status=400, body=body, hold=held))
    seen: list[str] = []

    def on_event(name: str) -> None:
        seen.append(name)
        held.set()

    events = await raw_events(gw, {"model": MODEL, "max_tokens": 10, "messages": ASK},
                              on_event)
    assert seen[0] == ":" and [e["type"] for e in events] == ["error"]
    assert events[0]["error"] == {"type": "invalid_request_error", "message": "bad field"}

    held = asyncio.Event()
    neuron.scripts.append(Script(status=400, body=body, hold=held))

    async def begun(response: Any) -> None:  # its headers came: the stream began
        held.set()

    async with anthropic.DefaultAsyncHttpxClient(event_hooks={"response": [begun]}) as http:
        sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0,
                                       timeout=60, http_client=http)
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with sdk.messages.stream(model=MODEL, max_tokens=10, messages=ASK) as s:
                await s.get_final_message()
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "invalid_request_error"


async def test_a_stop_sequence_ends_the_stream_and_the_generation(
        gw: RunningGateway, neuron: FakeNeuron, sdk: anthropic.AsyncAnthropic) -> None:
    neuron.scripts.append(Script(then_wait=True, frames=[
        chunk({"role": "assistant", "content": "one two E"}),
        chunk({"content": "ND three"})]))
    async with sdk.messages.stream(model=MODEL, max_tokens=100, messages=ASK,
                                   stop_sequences=["END"]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "END"
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].type == "text" and final.content[0].text == "one two "
    assert "stop" not in neuron.bodies[-1] or neuron.bodies[-1]["stop"] is None
    # The neuron was still generating: the gateway hung up on it.
    await wait_until(lambda: _is_set(neuron.disconnected), timeout=30,
                     what="the neuron sees the gateway close the stream")


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


async def test_a_stop_sequence_for_a_whole_reply(gw: RunningGateway, neuron: FakeNeuron,
                                                 sdk: anthropic.AsyncAnthropic) -> None:
    neuron.scripts.append(Script(frames=[
        chunk({"role": "assistant", "content": "alpha STOP beta"}), chunk({}, "stop"),
        b"data: [DONE]\n\n"]))
    message = await sdk.messages.create(model=MODEL, max_tokens=100, messages=ASK,
                                        stop_sequences=["STOP"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")
    assert message.content[0].type == "text" and message.content[0].text == "alpha "
    assert neuron.bodies[-1]["stream"] is True  # streamed upstream, so it could be cut


def _whole(text: str) -> Script:
    """A whole ChatCompletion, as a neuron that stripped a stop string answers."""
    return Script(body={
        "id": "chatcmpl-3", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})


async def test_match_stops_false_hands_the_stops_to_the_neuron(neuron: FakeNeuron) -> None:
    """`[dialects.anthropic] match_stops` reaches the dialect, at start and on reload:
    false sends the stops to the neuron (which strips a hit: `end_turn`); true, the
    default, keeps them and streams so the gateway can report `stop_sequence`."""
    tables: dict[str, Any] = {"anthropic": {"match_stops": False}}
    profiles = [ModelProfile(id=MODEL, source="fake")]

    def reloader() -> tuple[GatewayConfig, list[ModelProfile]]:
        config = msgspec.convert({"gateway": {"listen": gw.url.removeprefix("http://")},
                                  "neurons": [{"name": "fake", "endpoint": neuron.url}],
                                  "dialects": tables}, GatewayConfig)
        return config, profiles

    body = {"model": MODEL, "max_tokens": 100, "messages": ASK, "stop_sequences": ["STOP"]}
    async with running_gateway([("fake", cast(NeuronProcess, neuron))], profiles,
                               dialects=tables, reloader=reloader) as gw:
        neuron.scripts.append(_whole("alpha "))
        reply = (await gw.client.post("/v1/messages", json=body)).json()
        assert (neuron.bodies[-1]["stop"], neuron.bodies[-1]["stream"]) == (["STOP"], False)
        assert (reply["stop_reason"], reply["stop_sequence"]) == ("end_turn", None)

        tables = {"anthropic": {}}  # the default again, from the next request on
        assert (await gw.client.post("/admin/reload")).status_code == 200
        neuron.scripts.append(Script(frames=[
            chunk({"role": "assistant", "content": "alpha STOP beta"}), chunk({}, "stop"),
            b"data: [DONE]\n\n"]))
        reply = (await gw.client.post("/v1/messages", json=body)).json()
        assert neuron.bodies[-1].get("stop") is None and neuron.bodies[-1]["stream"] is True
        assert (reply["stop_reason"], reply["stop_sequence"]) == ("stop_sequence", "STOP")

        tables = {"anthropic": {"match_stop": False}}  # misspelt: refused, nothing changes
        refused = await gw.client.post("/admin/reload")
        assert refused.status_code == 400 and "dialects.anthropic" in refused.text
        neuron.scripts.append(Script(frames=[
            chunk({"role": "assistant", "content": "STOP"}), chunk({}, "stop"),
            b"data: [DONE]\n\n"]))
        reply = (await gw.client.post("/v1/messages", json=body)).json()
        assert reply["stop_reason"] == "stop_sequence"


@pytest.mark.parametrize("frames, kind", [
    ([chunk({"role": "assistant", "content": "Hel"})], "api_error"),  # dropped, no finish
    ([chunk({"role": "assistant", "content": "Hel"}),
      {"error": {"message": "busy", "type": "overloaded_error", "code": "unavailable"}}],
     "overloaded_error"),
], ids=["dropped", "error-frame"])
async def test_a_stream_that_fails_midway_ends_with_an_error_event(
        gw: RunningGateway, neuron: FakeNeuron, sdk: anthropic.AsyncAnthropic,
        frames: list[Any], kind: str) -> None:
    neuron.scripts.append(Script(frames=frames))
    events = await raw_events(gw, {"model": MODEL, "max_tokens": 10, "messages": ASK})
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == kind
    assert not any(e["type"] == "message_stop" for e in events)

    neuron.scripts.append(Script(frames=frames))
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with sdk.messages.stream(model=MODEL, max_tokens=10, messages=ASK) as stream:
            await stream.get_final_message()
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == kind


# --- errors --------------------------------------------------------------------------------

LLAMA_OVERFLOW = ("This model's maximum context length is 2048 tokens. However, you "
                  "requested 2110 tokens (2100 in the messages, 10 in the completion). "
                  "Please reduce the length of the messages or completion.")


@pytest.mark.parametrize("status, message, expected, error_type, exc", [
    (400, "bad field", 400, "invalid_request_error", anthropic.BadRequestError),
    (400, LLAMA_OVERFLOW, 400, "invalid_request_error", anthropic.BadRequestError),
    # The neuron refused the gateway's secret: the operator's fault, not the client's key.
    (401, "wrong secret", 502, "api_error", anthropic.InternalServerError),
    (413, "too big", 413, "request_too_large", anthropic.ContentTooLargeError),
    (429, "slow down", 429, "rate_limit_error", anthropic.RateLimitError),
    (500, "crashed", 500, "api_error", anthropic.InternalServerError),
    (503, "loading", 529, "overloaded_error", anthropic.OverloadedError),
], ids=["400", "overflow", "401", "413", "429", "500", "503"])
async def test_neuron_errors_in_the_anthropic_envelope(
        gw: RunningGateway, neuron: FakeNeuron, sdk: anthropic.AsyncAnthropic, status: int,
        message: str, expected: int, error_type: str, exc: type[anthropic.APIStatusError]
        ) -> None:
    body = {"error": {"message": message, "type": "x", "param": None, "code": None}}
    # A 503 is retried on the next node first (retries=1 here): script both attempts.
    neuron.scripts += [Script(status=status, body=body) for _ in range(2)]
    for stream in (False, True):
        with pytest.raises(exc) as caught:
            if stream:
                async with sdk.messages.stream(model=MODEL, max_tokens=10,
                                               messages=ASK) as reply:
                    await reply.get_final_message()
            else:
                await sdk.messages.create(model=MODEL, max_tokens=10, messages=ASK)
        error = caught.value
        assert error.status_code == expected and isinstance(error.body, dict)
        assert error.body["type"] == "error" and error.body["error"]["type"] == error_type
        if message == LLAMA_OVERFLOW:
            assert error.body["error"]["message"] == \
                "prompt is too long: 2100 tokens > 2048 maximum"
        if expected == 529:
            assert int(error.response.headers["retry-after"]) >= 1
        neuron.scripts[:] = [Script(status=status, body=body) for _ in range(2)]


# --- count_tokens and models ---------------------------------------------------------------

async def test_count_tokens_asks_the_neuron_to_tokenize_the_translated_prompt(
        gw: RunningGateway, neuron: FakeNeuron, sdk: anthropic.AsyncAnthropic) -> None:
    counted = await sdk.messages.count_tokens(
        model="claude-sonnet-4-5", messages=ASK, system="Be brief.",
        tools=[WEATHER])  # type: ignore[list-item]
    assert counted.input_tokens == 37
    assert neuron.paths[-1] == "/tokenize"
    sent = neuron.bodies[-1]
    assert sent["model"] == MODEL
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]


async def test_count_tokens_never_answers_a_zero(gw: RunningGateway, neuron: FakeNeuron,
                                                 sdk: anthropic.AsyncAnthropic) -> None:
    neuron.count = 0  # Claude Code would trust it and never compact (§5.8)
    with pytest.raises(anthropic.InternalServerError) as caught:
        await sdk.messages.count_tokens(model=MODEL, messages=ASK)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "api_error"


# --- the SSE parser ------------------------------------------------------------------------

def test_sse_reader_handles_every_line_end_comments_and_multiline_data() -> None:
    reader = SSEReader()
    stream = (b": ping\r\n\r\ndata: {\"a\":\r", b"\n", b"data: 1}\r\n\r\n",
              b"event: x\rdata:[DONE]\r\r", b"data: tail\n")
    got = [data for part in stream for data in reader.feed(part)]
    assert got == [b'{"a":\n1}', b"[DONE]"]  # the unterminated last event is not complete
    assert reader.feed(b"\n") == [b"tail"]


async def test_models_pick_their_shape_by_header(gw: RunningGateway) -> None:
    anthropic_shape = await gw.client.get("/v1/models",
                                          headers={"anthropic-version": "2023-06-01"})
    assert anthropic_shape.json()["has_more"] is False
    assert [m["id"] for m in anthropic_shape.json()["data"]] == [MODEL, "claude-sonnet-4-5"]
    openai_shape = await gw.client.get("/v1/models", headers={"authorization": "Bearer k"})
    assert openai_shape.json()["object"] == "list"
    missing = await gw.client.get("/v1/models/nope", headers={"x-api-key": "k"})
    assert missing.status_code == 404 and missing.json()["type"] == "error"
    assert (await gw.client.get("/v1/models/nope")).json()["error"]["code"] == "model_not_found"
