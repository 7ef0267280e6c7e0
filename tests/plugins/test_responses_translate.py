"""Responses ⇄ OpenAI chat translation, alone: golden requests and events, and properties
of every stream and conversation.

The Codex request is what `codex exec` 0.171.0 sent (tests/fixtures/codex_request.json:
its shape kept, its long texts cut). Backend chunks are the JSON a neuron or
llama-cpp-python sends; expected events are the literal JSON a client receives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex import ChatCompletion, InvalidRequest
from cortex.dialect import decode_chunk
from cortex_plugins.responses.errors import PreviousResponseNotFound, ResponseNotFound, envelope
from cortex_plugins.responses.reply import Draft, from_openai
from cortex_plugins.responses.request import ToolSet, input_items, to_openai
from cortex_plugins.responses.store import ResponseStore
from cortex_plugins.responses.stream import StreamTranslator, encode_sse
from cortex_plugins.responses.types import ResponseObject, ResponsesRequest

ROOT = Path(__file__).resolve().parents[2]
CODEX = (ROOT / "tests" / "fixtures" / "codex_request.json").read_bytes()
_request = msgspec.json.Decoder(ResponsesRequest)
_ID = re.compile(r"\b(msg|fc|call|resp)_[0-9a-f]{48}\b")


def request(**fields: Any) -> ResponsesRequest:
    return _request.decode(json.dumps({"model": "m", "input": "hi", **fields}).encode())


def canonical(req: ResponsesRequest, history: list[Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(to_openai(
        req, model="gemma", history=history or [], items=input_items(req),
        tools=ToolSet(req.tools)))
    out["messages"] = [{k: v for k, v in m.items() if v is not None} for m in out["messages"]]
    return out


def ids_out(value: Any) -> Any:
    """The JSON with generated ids replaced by their prefix, for goldens."""
    return json.loads(_ID.sub(lambda m: f"{m.group(1)}_X", json.dumps(value)))


def chunk(content: str | None = None, *, finish: str | None = None,
          calls: list[dict[str, Any]] | None = None, usage: dict[str, Any] | None = None,
          **choice: Any) -> bytes:
    """A chunk as llama-cpp-python writes it: explicit nulls."""
    delta = {"role": None, "content": content, "tool_calls": calls}
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                            "model": "m", "choices": [{"index": 0, "delta": delta,
                                                       "finish_reason": finish, **choice}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def call(index: int, name: str | None, arguments: str, call_id: str | None = None
         ) -> dict[str, Any]:
    return {"index": index, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def events_of(translator: StreamTranslator, frames: list[bytes]) -> list[dict[str, Any]]:
    events: list[Any] = []
    for frame in frames:
        backend = decode_chunk(frame)
        events += translator.finish() if backend is None else translator.feed(backend)
    events += translator.finish()
    wire = b"".join(encode_sse(event) for event in events).decode()
    out = []
    for block in wire.split("\n\n")[:-1]:
        name, data = block.split("\n")
        parsed = json.loads(data.removeprefix("data: "))
        assert name == f"event: {parsed['type']}"
        out.append(parsed)
    return out


# --- requests ------------------------------------------------------------------------------

def test_codexs_request_golden() -> None:
    req = _request.decode(CODEX)
    tools = ToolSet(req.tools)
    out = canonical(req)
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user"]  # two developer messages, then two user messages
    system = out["messages"][0]["content"]
    assert system.startswith("You are a coding agent running in the Co...\n\n<skills_instr")
    assert out["messages"][1]["content"].endswith("\n\nSay hello")
    assert [t["function"]["name"] for t in out["tools"]] == [
        "exec_command", "write_stdin", "request_user_input", "view_image", "close_agent",
        "resume_agent", "send_input", "spawn_agent", "wait_agent", "get_goal", "create_goal",
        "update_goal"]
    assert tools.ignored == ["web_search"]
    assert tools.origin("spawn_agent") == ("multi_agent_v1", "spawn_agent")
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is True
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert req.store is False and Draft(req, tools).store is False
    assert out["model"] == "gemma" and out["max_tokens"] is None


def test_string_input_instructions_and_sampling_golden() -> None:
    out = canonical(request(input="Say hi.", instructions="Be brief.", max_output_tokens=9,
                            temperature=0.2, top_p=0.5, user="u1",
                            reasoning={"effort": "high", "summary": "auto"}))
    assert out["messages"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Say hi."}]
    assert (out["max_tokens"], out["temperature"], out["top_p"], out["user"]) == (
        9, 0.2, 0.5, "u1")
    assert out["tools"] is None and out["tool_choice"] is None and out["stream"] is False


def test_text_formats_golden() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = canonical(request(text={"format": {"type": "json_schema", "name": "n",
                                             "schema": schema}}))["response_format"]
    assert fmt == {"type": "json_schema",
                   "json_schema": {"name": "n", "schema": schema, "strict": True}}
    assert canonical(request(text={"format": {"type": "json_object"}}))["response_format"] \
        == {"type": "json_object"}
    assert canonical(request(text={"format": {"type": "text"}}))["response_format"] is None


def test_a_tool_loop_keeps_openai_order_golden() -> None:
    items = [
        {"role": "system", "content": "Sys."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Looking."}]},
        {"type": "function_call", "call_id": "a", "name": "w", "arguments": '{"c": 1}'},
        {"type": "function_call", "call_id": "b", "name": "w", "arguments": ""},
        {"type": "function_call_output", "call_id": "a", "output": "sun"},
        {"type": "function_call_output", "call_id": "b",
         "output": [{"type": "input_text", "text": "rain"}]},
        {"role": "user", "content": "Thanks."},
        {"role": "developer", "content": "Be nice."},
    ]
    out = canonical(request(input=items, tools=[{"type": "function", "name": "w"}]))
    assert out["messages"] == [
        {"role": "system", "content": "Sys."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "w", "arguments": '{"c": 1}'}},
            {"id": "b", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "content": "sun", "tool_call_id": "a"},
        {"role": "tool", "content": "rain", "tool_call_id": "b"},
        {"role": "user", "content": "Thanks.\n\nBe nice."}]


def test_namespaced_calls_replay_under_their_flattened_names() -> None:
    tools = [{"type": "function", "name": "run"},
             {"type": "namespace", "name": "a", "tools": [{"type": "function", "name": "run"}]},
             {"type": "namespace", "name": "b", "tools": [{"type": "function", "name": "go"},
                                                          {"type": "custom", "name": "patch"}]}]
    items = [{"role": "user", "content": "x"},
             {"type": "function_call", "call_id": "1", "name": "run", "namespace": "a",
              "arguments": "{}"},
             {"type": "function_call", "call_id": "2", "name": "go", "namespace": "b",
              "arguments": "{}"}]
    req = request(input=items, tools=tools)
    out = canonical(req)
    assert [t["function"]["name"] for t in out["tools"]] == ["run", "a__run", "go"]
    assert [c["function"]["name"] for c in out["messages"][1]["tool_calls"]] == ["a__run", "go"]
    assert ToolSet(req.tools).ignored == ["b.custom"]


@pytest.mark.parametrize("choice, expected", [
    ("required", "required"),
    ({"type": "function", "name": "go"}, {"type": "function", "function": {"name": "go"}}),
    ({"type": "allowed_tools", "mode": "required",
      "tools": [{"type": "function", "name": "go"}]}, "required"),
])
def test_tool_choice_golden(choice: Any, expected: Any) -> None:
    tools = [{"type": "function", "name": "run"},
             {"type": "namespace", "name": "b", "tools": [{"type": "function", "name": "go"}]}]
    out = canonical(request(tools=tools, tool_choice=choice))
    assert out["tool_choice"] == expected
    if isinstance(choice, dict) and choice["type"] == "allowed_tools":
        assert [t["function"]["name"] for t in out["tools"]] == ["go"]


@pytest.mark.parametrize("fields, param", [
    ({"input": []}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "function_call", "call_id": 1, "name": "x", "arguments": ""}]},
     "input[0]"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
    ({"tool_choice": "required", "tools": [{"type": "web_search"}]}, "tool_choice"),
    ({"tool_choice": {"type": "allowed_tools", "mode": "required", "tools": []},
      "tools": [{"type": "function", "name": "x"}]}, "tool_choice"),
    ({"tools": [{"type": "function", "name": "x"}, {"type": "function", "name": "x"}]},
     "tools"),
])
def test_what_cannot_be_translated_is_a_400_naming_it(fields: dict[str, Any],
                                                      param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        canonical(request(**fields))
    assert refused.value.param == param


def test_errors_name_this_apis_fields() -> None:
    for canonical_param, ours in [("messages", "input"), ("messages[2].content", "input"),
                                  ("response_format", "text.format"),
                                  ("max_tokens", "max_output_tokens"), ("tools", "tools")]:
        assert envelope(InvalidRequest("x", param=canonical_param))["error"]["param"] == ours


# --- replies -------------------------------------------------------------------------------

def completion(content: str | None, calls: list[dict[str, Any]] | None = None,
               finish: str = "stop") -> ChatCompletion:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return msgspec.json.decode(json.dumps({
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}),
        type=ChatCompletion)


def test_a_whole_reply_golden() -> None:
    req = request(tools=[{"type": "function", "name": "w"}, {"type": "web_search"}])
    draft = Draft(req, ToolSet(req.tools), response_id="resp_1")
    reply = from_openai(draft, completion("On it.", [
        {"id": "k", "type": "function", "function": {"name": "w", "arguments": ""}}],
        "tool_calls"))
    body = ids_out(json.loads(msgspec.json.encode(reply)))
    assert body["output"] == [
        {"type": "message", "id": "msg_X", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "On it.", "annotations": [],
                      "logprobs": []}]},
        {"type": "function_call", "id": "fc_X", "call_id": "k", "name": "w", "arguments": "{}",
         "status": "completed"}]
    assert body["usage"] == {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens": 3, "output_tokens_details": {
                                 "reasoning_tokens": 0}, "total_tokens": 10}
    assert (body["id"], body["object"], body["status"]) == ("resp_1", "response", "completed")
    assert body["ignored_tools"] == ["web_search"] and body["tool_choice"] == "auto"
    assert body["tools"] == [{"type": "function", "name": "w"}, {"type": "web_search"}]


def test_a_streamed_text_then_call_golden() -> None:
    req = request(tools=[{"type": "function", "name": "w"}])
    translator = StreamTranslator(Draft(req, ToolSet(req.tools), response_id="resp_1"))
    events = ids_out(events_of(translator, [
        chunk(""), chunk(" "), chunk("Hi"),
        chunk(calls=[call(0, "w", "", "call_7")]), chunk(calls=[call(0, "w", '{"a":1}')]),
        chunk(finish="tool_calls", usage={"prompt_tokens": 5, "completion_tokens": 2}),
        b"[DONE]"]))
    slim = [{k: v for k, v in e.items() if k not in ("response", "sequence_number")}
            for e in events]
    message = {"type": "message", "id": "msg_X", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": " Hi", "annotations": [],
                            "logprobs": []}]}
    fc = {"type": "function_call", "id": "fc_X", "call_id": "call_7", "name": "w",
          "arguments": '{"a":1}', "status": "completed"}
    at0, at1 = {"item_id": "msg_X", "output_index": 0}, {"item_id": "fc_X", "output_index": 1}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert slim == [
        {"type": "response.created"}, {"type": "response.in_progress"},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**message, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **at0, "content_index": 0, "part": part},
        {"type": "response.output_text.delta", **at0, "content_index": 0, "delta": " Hi",
         "logprobs": []},
        {"type": "response.output_text.done", **at0, "content_index": 0, "text": " Hi",
         "logprobs": []},
        {"type": "response.content_part.done", **at0, "content_index": 0,
         "part": {**part, "text": " Hi"}},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**fc, "arguments": "", "status": "in_progress"}},
        {"type": "response.function_call_arguments.delta", **at1, "delta": '{"a":1}'},
        {"type": "response.function_call_arguments.done", **at1, "name": "w",
         "arguments": '{"a":1}'},
        {"type": "response.output_item.done", "output_index": 1, "item": fc},
        {"type": "response.completed"}]
    final = events[-1]["response"]
    assert final["output"] == [message, fc] and final["status"] == "completed"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 2


# --- properties of every stream ------------------------------------------------------------

pieces = st.lists(st.text(alphabet="ab \n{}\"", min_size=1, max_size=4), max_size=6)


@st.composite
def backend_streams(draw: st.DrawFn) -> tuple[list[bytes], str, list[tuple[str, str]], str]:
    """A neuron's stream: text pieces, then calls whose arguments arrive split (and,
    for the first two, interleaved once the first is a whole object), then a finish."""
    text = draw(pieces)
    n_calls = draw(st.integers(0, 3))
    calls = [(f"f{i}", json.dumps({"k": draw(st.text(max_size=6))})) for i in range(n_calls)]
    frames = [chunk(piece) for piece in text]
    for i, (name, args) in enumerate(calls):
        cut = draw(st.integers(0, len(args)))
        frames += [chunk(calls=[call(i, name, args[:cut], f"id{i}")]),
                   chunk(calls=[call(i, name, args[cut:])])]
    finish = draw(st.sampled_from(["stop", "length", "tool_calls"]))
    frames.append(chunk(finish=finish, usage={"prompt_tokens": 3, "completion_tokens": 4}))
    if draw(st.booleans()):
        frames.append(b"[DONE]")
    return frames, "".join(text), calls, finish


@settings(max_examples=200, deadline=None)
@given(backend_streams(), st.booleans())
def test_every_stream_is_well_formed_and_says_what_was_sent(
        case: tuple[list[bytes], str, list[tuple[str, str]], str], budget: bool) -> None:
    frames, text, calls, finish = case
    req = request(max_output_tokens=4) if budget else request()
    events = events_of(StreamTranslator(Draft(req, ToolSet(req.tools))), frames)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    # `length` is incomplete only against the client's own budget (else the server's).
    last = "response.incomplete" if finish == "length" and budget else "response.completed"
    assert kinds[-1] == last and kinds.count(last) == 1
    open_item: str | None = None
    texts: dict[str, str] = {}
    done: list[dict[str, Any]] = []
    for event in events[2:-1]:
        if event["type"] == "response.output_item.added":
            assert open_item is None and event["output_index"] == len(done)
            open_item = event["item"]["id"]
            texts[open_item] = ""
        elif event["type"] == "response.output_item.done":
            assert event["item"]["id"] == open_item
            done.append(event["item"])
            open_item = None
        elif event["type"].endswith(".delta"):
            assert event["item_id"] == open_item
            texts[open_item] += event["delta"]
        elif event["type"] in ("response.output_text.done",
                               "response.function_call_arguments.done"):
            assert event.get("text", event.get("arguments")) == texts[open_item]
    assert open_item is None
    final = events[-1]["response"]
    assert final["output"] == done
    said = "".join(part["text"] for item in done if item["type"] == "message"
                   for part in item["content"])
    assert said == (text if text.strip() else "")
    assert [(i["name"], i["arguments"]) for i in done if i["type"] == "function_call"] == calls
    assert all(texts[i["id"]] == i["arguments"] for i in done if i["type"] == "function_call")
    assert final["usage"]["total_tokens"] == 7


@settings(max_examples=100, deadline=None)
@given(backend_streams())
def test_a_stream_and_the_same_whole_reply_give_the_same_output(
        case: tuple[list[bytes], str, list[tuple[str, str]], str]) -> None:
    frames, text, calls, finish = case
    req = request()
    draft = Draft(req, ToolSet(req.tools))
    streamed = events_of(StreamTranslator(draft), frames)[-1]["response"]
    whole = from_openai(draft, completion(text, [
        {"id": f"id{i}", "type": "function", "function": {"name": name, "arguments": args}}
        for i, (name, args) in enumerate(calls)], finish))
    assert ids_out(streamed["output"]) == ids_out(json.loads(msgspec.json.encode(whole.output)))
    assert streamed["status"] == whole.status


def test_a_stream_without_a_finish_fails_and_an_error_frame_fails_it() -> None:
    req = request()
    events = events_of(StreamTranslator(Draft(req, ToolSet(None))), [chunk("Hel")])
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-1]["response"]["output"][0]["status"] == "in_progress"
    translator = StreamTranslator(Draft(req, ToolSet(None)))
    failed = events_of(translator, [b'{"error": {"message": "busy", "code": "unavailable"}}'])
    assert failed[-1]["response"]["error"] == {"code": "unavailable", "message": "busy"}
    assert translator.result is None


# --- the store -----------------------------------------------------------------------------

def kept(store: ResponseStore, text: str, previous: str | None = None) -> ResponseObject:
    req = request(input=text, previous_response_id=previous)
    draft = Draft(req, ToolSet(None))
    response = from_openai(draft, completion(f"re: {text}"))
    store.put(response, input_items(req))
    return response


def test_the_store_chains_turns_and_is_bounded_in_count_and_bytes() -> None:
    limits = [3, 1 << 20]
    store = ResponseStore(lambda: (limits[0], limits[1]))
    a = kept(store, "one")
    b = kept(store, "two", a.id)
    assert [i["content"][0]["text"] for i in store.inputs(a.id)] == ["one"]
    history = store.history(b.id)  # uses `a` then `b`: `a` is the older
    assert [(type(i).__name__, i.role) for i in history] == [  # type: ignore[union-attr]
        ("MessageItem", "user"), ("MessageItem", "assistant")] * 2
    assert json.loads(store.response(b.id))["output"][0]["content"][0]["text"] == "re: two"
    kept(store, "three")
    kept(store, "four")  # pushes out `a`, the oldest used
    with pytest.raises(ResponseNotFound):
        store.response(a.id)
    with pytest.raises(PreviousResponseNotFound) as broken:
        store.history(b.id)
    assert a.id in broken.value.message and b.id in broken.value.message
    limits[1] = store.size  # a byte bound: the next one pushes out the oldest
    before = len(store)
    e = kept(store, "five")
    assert len(store) < before + 1 and store.size <= limits[1]
    store.delete(e.id)
    for gone in (store.response, store.delete):
        with pytest.raises(ResponseNotFound):
            gone(e.id)
    limits[0] = 0  # store_size 0 keeps nothing more
    f = kept(store, "six")
    with pytest.raises(ResponseNotFound):
        store.response(f.id)
