"""Anthropic ⇄ OpenAI translation against golden wire fixtures (api-conformance §6 to §8).

Backend chunks are written as the bytes a neuron or llama-cpp-python sends; expected
events are the literal JSON a client receives.
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cortex import ChatCompletion, ChatCompletionRequest, Usage
from cortex.dialect import BackendChunk, decode_chunk
from cortex.errors import (
    ContextLengthExceeded,
    CortexError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    Timeout,
    Unavailable,
    UpstreamError,
)
from cortex.types import PromptTokensDetails
from cortex_plugins.anthropic.errors import anthropic_error, anthropic_error_type, anthropic_status
from cortex_plugins.anthropic.reply import assemble, from_openai, new_message_id, stop_reason
from cortex_plugins.anthropic.request import to_openai, to_tokenize
from cortex_plugins.anthropic.stream import StreamTranslator, encode_sse
from cortex_plugins.anthropic.types import (
    CountTokensResponse,
    ErrorDetail,
    ErrorEvent,
    MessagesRequest,
    StreamEvent,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
    decode_count_tokens_request,
    decode_messages_request,
)

ROOT = Path(__file__).resolve().parents[2]
MSG = "msg_0123456789abcdefghijklmn"


# --- helpers -------------------------------------------------------------------------------

def request(**fields: Any) -> MessagesRequest:
    body = {"model": "claude-local", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}], **fields}
    return decode_messages_request(json.dumps(body).encode())


def backend(req: MessagesRequest, **kw: Any) -> dict[str, Any]:
    """The canonical request as the neuron receives it (JSON builtins)."""
    out: dict[str, Any] = msgspec.to_builtins(to_openai(req, model="qwen3-8b", **kw))
    return out


def messages(req: MessagesRequest) -> list[dict[str, Any]]:
    """The backend messages, without the all-null fields, for readable goldens."""
    return [{k: v for k, v in m.items() if v is not None} for m in backend(req)["messages"]]


def chunk(content: str | None = None, *, finish: str | None = None,
          tool_calls: list[dict[str, Any]] | None = None, reasoning: str | None = None,
          usage: dict[str, Any] | None = None) -> bytes:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                            "created": 1, "model": "qwen3-8b",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def call(index: int, *, id: str | None = None, name: str | None = None,
         args: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "function": {}}
    if id is not None:
        out["id"], out["type"] = id, "function"
    if name is not None:
        out["function"]["name"] = name
    if args is not None:
        out["function"]["arguments"] = args
    return out


def stream(frames: list[bytes], *, finish: bool = True, **kw: Any) -> list[StreamEvent]:
    """Run frames through a translator the way the dialect will: feed, finish."""
    kw.setdefault("model", "claude-local")
    kw.setdefault("message_id", MSG)
    translator = StreamTranslator(**kw)
    events: list[StreamEvent] = []
    for frame in frames:
        decoded = decode_chunk(frame)
        if decoded is None:
            break
        events += translator.feed(decoded)
        if translator.stopped:
            break
    if finish:
        events += translator.finish()
    return events


def wire(events: list[StreamEvent]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(e) for e in events]


def start_event(input_tokens: int = 0, cached: int = 0) -> dict[str, Any]:
    return {"type": "message_start", "message": {
        "id": MSG, "type": "message", "role": "assistant", "model": "claude-local",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}}}


def prompt_chunk(prompt: int, cached: int = 0) -> bytes:
    """The neuron's `prompt_usage` chunk: no choices, the prompt's counts, before output."""
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                       "model": "qwen3-8b", "choices": [],
                       "usage": {"prompt_tokens": prompt, "completion_tokens": 0,
                                 "total_tokens": prompt,
                                 "prompt_tokens_details": {"cached_tokens": cached}}}).encode()


def text_start(i: int) -> dict[str, Any]:
    return {"type": "content_block_start", "index": i,
            "content_block": {"type": "text", "text": ""}}


def tool_start(i: int, id: str, name: str) -> dict[str, Any]:
    return {"type": "content_block_start", "index": i,
            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}


def text_delta(i: int, text: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": i,
            "delta": {"type": "text_delta", "text": text}}


def json_delta(i: int, partial: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": i,
            "delta": {"type": "input_json_delta", "partial_json": partial}}


def stop(i: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": i}


def end(reason: str, output: int, sequence: str | None = None,
        **usage: int) -> list[dict[str, Any]]:
    return [{"type": "message_delta",
             "delta": {"stop_reason": reason, "stop_sequence": sequence},
             "usage": {"output_tokens": output, **usage}},
            {"type": "message_stop"}]


STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                "model_context_window_exceeded"}
DELTA_FOR = {"text": {"text_delta"}, "tool_use": {"input_json_delta"},
             "thinking": {"thinking_delta", "signature_delta"}}


def assert_well_formed(events: list[StreamEvent]) -> None:
    """The §11 E grammar (items 45 to 52): what Claude Code and both SDKs insist on."""
    data = wire(events)
    if data and data[0]["type"] == "error":  # it failed before message_start
        assert len(data) == 1
        return
    assert data and data[0]["type"] == "message_start"
    assert [d["type"] for d in data].count("message_start") == 1
    ended_by_error = data[-1]["type"] == "error"
    open_block: tuple[int, str] | None = None
    started: list[int] = []
    text_seen: dict[int, str] = {}
    json_seen: dict[int, str] = {}
    for d in data[1:-1]:
        kind = d["type"]
        assert kind not in ("message_start", "message_stop", "error")
        if kind == "content_block_start":
            assert open_block is None, "blocks interleave"
            assert d["index"] == len(started), "indices not 0, 1, 2 …"
            started.append(d["index"])
            block = d["content_block"]
            open_block = (d["index"], block["type"])
            if block["type"] == "text":
                assert block["text"] == ""
                text_seen[d["index"]] = ""
            if block["type"] == "tool_use":
                assert block["input"] == {} and block["name"]
                assert re.fullmatch(r"[A-Za-z0-9_-]+", block["id"])
                json_seen[d["index"]] = ""
        elif kind == "content_block_delta":
            assert open_block is not None and d["index"] == open_block[0]
            assert d["delta"]["type"] in DELTA_FOR[open_block[1]]
            if d["delta"]["type"] == "text_delta":
                text_seen[d["index"]] += d["delta"]["text"]
            if d["delta"]["type"] == "input_json_delta":
                json_seen[d["index"]] += d["delta"]["partial_json"]
        elif kind == "content_block_stop":
            assert open_block is not None and d["index"] == open_block[0]
            open_block = None
        elif kind == "message_delta":
            assert open_block is None
            assert d["delta"]["stop_reason"] in STOP_REASONS
            assert isinstance(d["usage"]["output_tokens"], int)
        else:
            assert kind == "ping"
    if ended_by_error:
        assert data[-1]["error"]["type"] in ("api_error", "overloaded_error")
        return
    assert data[-1]["type"] == "message_stop"
    assert [d["type"] for d in data].count("message_delta") == 1
    assert data[-2]["type"] == "message_delta"
    assert open_block is None
    assert all(text.strip() for text in text_seen.values()), "an empty text block"
    if data[-2]["delta"]["stop_reason"] != "max_tokens":  # max_tokens may cut a call short
        for partial in json_seen.values():
            assert isinstance(json.loads(partial), dict)


def completion(content: str | None, *, finish: str = "stop",
               tool_calls: list[dict[str, Any]] | None = None,
               prompt: int = 11, completion_tokens: int = 5) -> ChatCompletion:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return msgspec.convert({
        "id": "chatcmpl-1", "created": 1, "model": "qwen3-8b",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                  "total_tokens": prompt + completion_tokens}}, ChatCompletion)


def fn(id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- decoding requests (§1.3, §3.1) --------------------------------------------------------

def test_unknown_fields_and_block_types_are_accepted() -> None:
    req = decode_messages_request(json.dumps({
        "model": "claude-local", "max_tokens": 32,
        "context_management": {"edits": []}, "output_config": {"effort": "high"},
        "service_tier": "auto", "container": "c", "metadata": {"user_id": "u"},
        "thinking": {"type": "adaptive"}, "inference_geo": "eu",
        "system": [{"type": "text", "text": "S",
                    "cache_control": {"type": "ephemeral", "scope": "global"}}],
        "tools": [{"name": "Read", "input_schema": {"type": "object"}, "strict": True,
                   "input_examples": [{}], "defer_loading": False,
                   "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}},
            {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}},
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "search_result", "source": "x", "title": "y", "content": []}]},
        ]}]}).encode())
    assert req.messages[0].content[1] == UnknownBlock(kind="server_tool_use")
    inner = req.messages[0].content[2]
    assert isinstance(inner, ToolResultBlock)
    assert inner.content == [UnknownBlock(kind="search_result")]


@pytest.mark.parametrize(("body", "path"), [
    ({"model": "m", "messages": []}, "max_tokens"),
    ({"model": "m", "max_tokens": 5}, "messages"),
    ({"max_tokens": 5, "messages": []}, "model"),
    ({"model": "m", "max_tokens": 0, "messages": []}, "$.max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]},
     "$.messages[0].role"),
])
def test_missing_or_bad_required_fields_are_400(body: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_messages_request(json.dumps(body).encode())
    assert caught.value.status == 400 and path in caught.value.message
    assert anthropic_error(caught.value)[1].error.type == "invalid_request_error"


def test_malformed_json_is_400() -> None:
    with pytest.raises(InvalidRequest, match="malformed JSON"):
        decode_messages_request(b'{"model": ')


def test_count_tokens_needs_no_max_tokens() -> None:
    req = decode_count_tokens_request(
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[]}')
    assert req.model == "m"
    assert msgspec.json.encode(CountTokensResponse(input_tokens=7)) == b'{"input_tokens":7}'


# --- requests: Anthropic → OpenAI (§6.1) ---------------------------------------------------

def test_system_string_becomes_the_leading_system_message() -> None:
    assert messages(request(system="Be brief.")) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_system_blocks_join_and_the_billing_stamp_is_normalised() -> None:
    def system(stamp: str) -> list[dict[str, Any]]:
        return [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.101.e51; "
                                         f"cc_entrypoint=cli; cch={stamp};"},
                {"type": "text", "text": "You are Claude Code.",
                 "cache_control": {"type": "ephemeral"}}]
    first, second = messages(request(system=system("a5145"))), messages(
        request(system=system("9bc01")))
    assert first == second  # checklist 71: byte-identical prompts
    assert first[0] == {"role": "system", "content":
                        "x-anthropic-billing-header: cc_version=2.1.101.e51; cc_entrypoint=cli; "
                        "cch=fffff;\n\nYou are Claude Code."}


def test_system_role_in_messages_is_accepted() -> None:
    req = request(system="S", messages=[
        {"role": "system", "content": "Leading."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": [{"type": "text", "text": "Mid."}]},
        {"role": "user", "content": "go on"}])
    assert messages(req) == [
        {"role": "system", "content": "S\n\nLeading."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        # A late system turn as a marked user turn, merged so roles still alternate.
        {"role": "user", "content": "<system-reminder>\nMid.\n</system-reminder>\n\ngo on"}]


def test_a_late_system_turn_never_parts_tool_results_from_their_call() -> None:
    req = request(messages=[
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ls",
                                           "input": {}}]},
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "a.txt"}]},
        {"role": "system", "content": "Last word."}])
    assert [(m["role"], m["content"]) for m in messages(req)] == [
        ("user", "list files"), ("assistant", ""), ("tool", "a.txt"),
        ("user", "<system-reminder>\nBe terse.\n</system-reminder>\n\n"
                 "<system-reminder>\nLast word.\n</system-reminder>")]


def test_consecutive_turns_of_one_role_combine() -> None:
    """Anthropic combines them; strict templates reject two user turns in a row."""
    req = request(messages=[
        {"role": "user", "content": "look:"},
        {"role": "user", "content": [{"type": "document", "source": {
            "type": "text", "media_type": "text/plain", "data": "the page"}}]},
        {"role": "assistant", "content": "One"},
        {"role": "assistant", "content": [
            {"type": "text", "text": " two"},
            {"type": "tool_use", "id": "t", "name": "n", "input": {}}]}])
    assert messages(req) == [
        {"role": "user", "content": "look:\n\nthe page"},
        {"role": "assistant", "content": "One two", "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "n", "arguments": "{}"}}]}]


@pytest.mark.parametrize(("content", "where", "kind"), [
    ([{"type": "text", "text": "What is this?"},
      {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                   "data": "iVBORw0KGgo="}}], "messages[0].content[1]", "image"),
    ([{"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}],
     "messages[0].content[0]", "image"),
    ([{"type": "tool_result", "tool_use_id": "t1", "content": [
        {"type": "text", "text": "captured"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": "AAAA"}}]}], "messages[0].content[0].content[1]",
     "image"),
    ([{"type": "text", "text": "hi"}, {"type": "mystery_block", "x": 1}],
     "messages[0].content[1]", "mystery_block"),
    ([{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "search_result", "source": "x", "title": "y", "content": []}]}],
     "messages[0].content[0].content[0]", "search_result"),
])
def test_images_and_unknown_blocks_are_refused_naming_them(
        content: list[dict[str, Any]], where: str, kind: str) -> None:
    """The models here read text: a block they cannot is a 400, not a reply that acts
    as if it had been seen."""
    req = request(messages=[{"role": "user", "content": content}])
    with pytest.raises(InvalidRequest) as refused:
        to_openai(req, model="m")
    assert refused.value.param == where and refused.value.status == 400
    assert f"{where}: `{kind}` content blocks are not supported" in refused.value.message
    with pytest.raises(InvalidRequest):  # count_tokens says the same
        to_tokenize(req, model="m")
    status, body = anthropic_error(refused.value)
    assert status == 400 and body.error.type == "invalid_request_error"


def test_a_system_image_is_refused_too() -> None:
    req = request(system=[{"type": "text", "text": "S"}, {"type": "image", "source": {
        "type": "url", "url": "https://x.test/a.png"}}])
    with pytest.raises(InvalidRequest, match=r"system\[1\]: `image` content blocks"):
        to_openai(req, model="m")


def test_text_blocks_of_a_user_turn_join_into_one_string() -> None:
    req = request(messages=[{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>r</system-reminder>"},
        {"type": "text", "text": "hello"}]}])
    assert messages(req) == [
        {"role": "user", "content": "<system-reminder>r</system-reminder>\n\nhello"}]


def test_tool_loop_keeps_openai_order() -> None:
    """Checklist 39 and 72; llama.cpp puts the user text first, fuergaosi drops it (§8)."""
    req = request(messages=[
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_A", "name": "get_weather",
             "input": {"city": "Paris", "units": "c"}},
            {"type": "tool_use", "id": "toolu_B", "name": "get_weather",
             "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_A", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_B", "is_error": True,
             "content": [{"type": "text", "text": "service down"}]},
            {"type": "text", "text": "thanks"}]}])
    assert messages(req) == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_A", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city":"Paris","units":"c"}'}},
            {"id": "toolu_B", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "content": "18C", "tool_call_id": "toolu_A"},
        {"role": "tool", "content": "Error: service down", "tool_call_id": "toolu_B"},
        {"role": "user", "content": "thanks"}]


def test_tool_results_come_first_even_when_written_after_text() -> None:
    req = request(messages=[
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "ls", "input": {}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "here:"},
            {"type": "tool_result", "tool_use_id": "t1"}]}])
    assert messages(req) == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "content": "", "tool_call_id": "t1"},
        {"role": "user", "content": "here:"}]


def test_thinking_documents_and_unknown_assistant_blocks_never_fail() -> None:
    """Checklist 41: thinking with signature "", redacted_thinking, document, and an
    unknown block in an assistant turn (the assistant's own past output, such as a real
    Claude's server_tool_use: its text and tool calls are kept, the rest is history the
    model need not read). Unknown blocks a client sends are refused (above)."""
    req = request(messages=[
        {"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "The notes."}, "title": "notes.txt"},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": "JVBER"}},
            {"type": "text", "text": "summarise"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": ""},
            {"type": "redacted_thinking", "data": "abc"},
            {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}},
            {"type": "text", "text": "Done."}]}])
    assert messages(req) == [
        {"role": "user", "content": "notes.txt\n\nThe notes.\n\n[document omitted: "
                                    "application/pdf documents are not supported]\n\nsummarise"},
        {"role": "assistant", "content": "Done.", "reasoning_content": "Let me think."}]


def test_assistant_tool_arguments_keep_key_order_compactly() -> None:
    req = request(messages=[{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "w", "input": {"z": 1, "a": [1, {"b": "é"}]}}]}])
    assert messages(req)[0]["tool_calls"][0]["function"]["arguments"] == \
        '{"z":1,"a":[1,{"b":"é"}]}'


def test_tools_become_functions_and_server_tools_are_skipped() -> None:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}}
    out = backend(request(tools=[
        {"name": "Read", "description": "Read a file", "input_schema": schema},
        {"name": "Noop", "type": "custom"},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]))
    assert out["tools"] == [
        {"type": "function", "function": {"name": "Read", "description": "Read a file",
                                          "parameters": schema, "strict": None}},
        {"type": "function", "function": {"name": "Noop", "description": None,
                                          "parameters": {"type": "object", "properties": {}},
                                          "strict": None}}]
    assert out["tool_choice"] == "auto"  # explicit: some backends read absence as none


TWO_TOOLS = [{"name": "a", "input_schema": {"type": "object"}},
             {"name": "b", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(("choice", "tools", "expected", "parallel"), [
    ({"type": "auto"}, TWO_TOOLS, "auto", None),
    ({"type": "any"}, TWO_TOOLS, "required", None),
    ({"type": "any"}, TWO_TOOLS[:1], {"type": "function", "function": {"name": "a"}}, None),
    ({"type": "tool", "name": "b"}, TWO_TOOLS, {"type": "function", "function": {"name": "b"}},
     None),
    ({"type": "none"}, TWO_TOOLS, "none", None),
    ({"type": "auto", "disable_parallel_tool_use": True}, TWO_TOOLS, "auto", False),
    ({"type": "tool", "name": "a", "disable_parallel_tool_use": True}, TWO_TOOLS,
     {"type": "function", "function": {"name": "a"}}, False),
])
def test_tool_choice_mapping(choice: dict[str, Any], tools: list[dict[str, Any]],
                             expected: Any, parallel: bool | None) -> None:
    out = backend(request(tools=tools, tool_choice=choice))
    assert (out["tool_choice"], out["parallel_tool_calls"]) == (expected, parallel)


@pytest.mark.parametrize("choice", [None, {"type": "any"}, {"type": "tool", "name": "x"}])
def test_empty_tools_send_neither_tools_nor_tool_choice(choice: dict[str, Any] | None) -> None:
    out = backend(request(tools=[], **({"tool_choice": choice} if choice else {})))
    assert (out["tools"], out["tool_choice"], out["parallel_tool_calls"]) == (None, None, None)


def test_sampling_fields_pass_through() -> None:
    out = backend(request(max_tokens=5, temperature=0.2, top_p=0.9, top_k=40,
                          metadata={"user_id": "user-7"}))
    assert {k: out[k] for k in ("model", "max_tokens", "temperature", "top_p", "top_k", "user",
                                "stream", "stream_options", "stop")} == {
        "model": "qwen3-8b", "max_tokens": 5, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
        "user": "user-7", "stream": False, "stream_options": None, "stop": None}


def test_stream_asks_the_backend_for_usage() -> None:
    """And for the prompt's counts before any output (cortex's `prompt_usage`), which
    message_start waits for."""
    out = backend(request(stream=True))
    assert (out["stream"], out["stream_options"]) == (
        True, {"include_usage": True, "prompt_usage": True})
    assert backend(request())["stream_options"] is None


def test_stop_sequences_are_matched_here_by_default() -> None:
    """The backend must not strip them (it reports `stop` like EOS), and must stream so
    the gateway can cut generation at the hit."""
    out = backend(request(stop_sequences=["END", ""]))
    assert (out["stop"], out["stream"], out["stream_options"]) == (
        None, True, {"include_usage": True, "prompt_usage": True})


def test_stop_sequences_can_go_to_the_backend() -> None:
    out = backend(request(stop_sequences=["END", "STOP"]), match_stops=False)
    assert (out["stop"], out["stream"]) == (["END", "STOP"], False)


def test_output_format_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = backend(request(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert out["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "structured_output", "schema": schema, "strict": True}}


def test_canonical_request_decodes_as_the_neuron_reads_it() -> None:
    req = request(tools=TWO_TOOLS, messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "a",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}])
    body = msgspec.json.encode(to_openai(req, model="qwen3-8b"))
    assert msgspec.json.decode(body, type=ChatCompletionRequest) == to_openai(
        req, model="qwen3-8b")


def test_count_tokens_tokenizes_what_messages_would_send() -> None:
    req = decode_count_tokens_request(json.dumps({
        "model": "claude-local", "system": "S", "tools": TWO_TOOLS,
        "messages": [{"role": "user", "content": "hi"}]}).encode())
    tok = to_tokenize(req, model="qwen3-8b")
    full = to_openai(request(system="S", tools=TWO_TOOLS), model="qwen3-8b")
    assert (tok.model, tok.messages, tok.tools) == ("qwen3-8b", full.messages, full.tools)
    req = decode_count_tokens_request(json.dumps({
        "model": "claude-local", "tools": TWO_TOOLS, "tool_choice": {"type": "none"},
        "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert to_tokenize(req, model="qwen3-8b").tools is None  # the neuron drops them too


# --- whole replies: OpenAI → Anthropic (§6.2 to §6.4) -----------------------------------------

def test_text_reply() -> None:
    message = from_openai(completion("Hello!"), model="claude-local", message_id=MSG)
    assert msgspec.to_builtins(message) == {
        "id": MSG, "type": "message", "role": "assistant", "model": "claude-local",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 5,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def test_a_whole_reply_reports_the_cached_prompt_apart_as_a_stream_does() -> None:
    """§6.4, checklist 62: input_tokens = prompt - cached, cache_read = cached; the same
    counts a stream's message_start and message_delta give for that prompt."""
    whole = completion("Hi", prompt=120, completion_tokens=1)
    whole.usage.prompt_tokens_details = PromptTokensDetails(cached_tokens=100)
    usage = msgspec.to_builtins(from_openai(whole, model="claude-local").usage)
    assert usage == {"input_tokens": 20, "output_tokens": 1,
                     "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100}
    events = wire(stream([prompt_chunk(120, cached=100), chunk("Hi"), chunk(finish="stop")]))
    assert events[0]["message"]["usage"] == {**usage, "output_tokens": 0}


def test_generated_ids_are_msg_prefixed_and_unique() -> None:
    ids = {new_message_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"msg_[A-Za-z0-9_-]{24}", i) for i in ids)
    assert from_openai(completion("x"), model="m").id.startswith("msg_")


@pytest.mark.parametrize("content", [None, "", "\n\n", "  "])
def test_tool_only_reply_has_no_empty_text_block(content: str | None) -> None:
    """claude-code#88536: an empty text block is replayed and rejected forever."""
    message = from_openai(completion(content, finish="tool_calls", tool_calls=[
        fn("call_0", "get_weather", '{"location": "Paris"}')]), model="m", message_id=MSG)
    assert msgspec.to_builtins(message.content) == [
        {"type": "tool_use", "id": "call_0", "name": "get_weather",
         "input": {"location": "Paris"}}]
    assert message.stop_reason == "tool_use"


def test_text_and_tools_both_survive() -> None:
    """Older LiteLLM dropped the text when tool calls were present (§8)."""
    message = from_openai(completion("Let me look.", tool_calls=[
        fn("c1", "a", "{}"), fn("c2", "b", '{"x": [1]}')]), model="m", message_id=MSG)
    assert msgspec.to_builtins(message.content) == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "c1", "name": "a", "input": {}},
        {"type": "tool_use", "id": "c2", "name": "b", "input": {"x": [1]}}]
    # Finish `stop` with tool calls present still reads tool_use (§6.3).
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize(("finish", "tools", "hit", "expected"), [
    ("length", True, None, "max_tokens"),
    ("length", False, None, "max_tokens"),
    ("tool_calls", True, None, "tool_use"),
    ("stop", True, None, "tool_use"),
    ("tool_calls", False, None, "end_turn"),
    ("stop", False, "END", "stop_sequence"),
    ("stop", False, None, "end_turn"),
    ("content_filter", False, None, "end_turn"),
    ("something_new", False, None, "end_turn"),
    (None, False, None, "end_turn"),
])
def test_stop_reason_mapping(finish: str | None, tools: bool, hit: str | None,
                             expected: str) -> None:
    """Checklist 73: never null, "error" or a value outside the enum."""
    assert stop_reason(finish, tool_use=tools, stop_sequence=hit) == expected


@pytest.mark.parametrize(("cause", "tools", "expected"), [
    ("context", False, "model_context_window_exceeded"),
    ("context", True, "model_context_window_exceeded"),
    ("max_tokens", False, "max_tokens"),  # the client's max_tokens, or the profile's cap
    (None, False, "max_tokens"),  # a backend that does not say why
    ("something_new", False, "max_tokens"),
])
def test_a_full_context_is_told_apart_from_an_output_limit(cause: str | None, tools: bool,
                                                           expected: str) -> None:
    """The neuron's `stop_cause` on a `length` finish: a full context window reads
    `model_context_window_exceeded`, not `max_tokens` (docs/clients.md says what Claude
    Code does with each)."""
    assert stop_reason("length", tool_use=tools, stop_sequence=None,
                       stop_cause=cause) == expected
    # The cause of any other finish is not read.
    assert stop_reason("stop", tool_use=False, stop_sequence=None,
                       stop_cause=cause) == "end_turn"


@pytest.mark.parametrize(("cause", "expected"), [
    ("context", "model_context_window_exceeded"), ("max_tokens", "max_tokens")])
def test_a_whole_and_a_streamed_reply_read_the_stop_cause(cause: str, expected: str) -> None:
    whole = completion("Once upon", finish="length")
    whole.choices[0].stop_cause = cause
    assert from_openai(whole, model="m").stop_reason == expected
    finish = json.loads(chunk(finish="length", usage={
        "prompt_tokens": 60, "completion_tokens": 4, "total_tokens": 64}))
    finish["choices"][0]["stop_cause"] = cause
    events = stream([chunk("Once upon"), json.dumps(finish).encode(), b"[DONE]"])
    assert wire(events)[-2]["delta"] == {"stop_reason": expected, "stop_sequence": None}
    assert_well_formed(events)
    assert assemble(events).stop_reason == expected  # a whole reply from a stream


def test_length_drops_a_tool_call_cut_off_mid_arguments() -> None:
    message = from_openai(completion("Writing.", finish="length", tool_calls=[
        fn("c1", "write", '{"path": "a.txt", "content": "HEL')]), model="m")
    assert msgspec.to_builtins(message.content) == [{"type": "text", "text": "Writing."}]
    assert message.stop_reason == "max_tokens"


def test_stop_sequence_in_the_text_is_cut_and_reported() -> None:
    """Checklist 44, when the backend was not told the stop (match_stops)."""
    message = from_openai(completion("one two END three", tool_calls=[fn("c", "a", "{}")]),
                          model="m", stop_sequences=["END"])
    assert msgspec.to_builtins(message.content) == [{"type": "text", "text": "one two "}]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_backend_stripped_stops_read_as_end_turn() -> None:
    """§7.10: a stop string the backend stripped looks exactly like EOS: finish `stop`, no
    trace in the text. Only gateway-side matching (the default) can report it."""
    by_eos = from_openai(completion("one two"), model="m", stop_sequences=["END"])
    by_stop = from_openai(completion("one two "), model="m", stop_sequences=["END"])
    assert (by_eos.stop_reason, by_eos.stop_sequence) == ("end_turn", None)
    assert (by_stop.stop_reason, by_stop.stop_sequence) == ("end_turn", None)


@pytest.mark.parametrize(("raw", "parsed"), [
    ("", {}),
    ("  ", {}),
    ('{"a": 1}', {"a": 1}),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('{"a": 1}\n<|im_end|>', {"a": 1}),
])
def test_tool_arguments_are_repaired_when_safe(raw: str, parsed: dict[str, Any]) -> None:
    message = from_openai(completion(None, tool_calls=[fn("c", "t", raw)]), model="m")
    assert msgspec.to_builtins(message.content) == [
        {"type": "tool_use", "id": "c", "name": "t", "input": parsed}]


@pytest.mark.parametrize("raw", ['{"a": ', "[1, 2]", "not json", '"text"'])
def test_unrepairable_tool_arguments_fail_the_turn(raw: str) -> None:
    """Never `{}`: Claude Code loops on "Invalid tool parameters" (LiteLLM#25321)."""
    with pytest.raises(UpstreamError, match="arguments for tool `t`"):
        from_openai(completion(None, tool_calls=[fn("c", "t", raw)]), model="m")


def test_tool_ids_are_sanitised_made_unique_and_synthesised() -> None:
    message = from_openai(completion(None, tool_calls=[
        fn("call__0_get.weather_cmpl-9f", "get.weather", "{}"),
        fn("dup", "a", "{}"), fn("dup", "a", "{}"), fn("", "a", "{}")]),
        model="m", message_id=MSG)
    ids = [block.id for block in message.content if isinstance(block, ToolUseBlock)]
    assert ids == ["call__0_get_weather_cmpl-9f", "dup", "toolu_0123456789abcdefghijklmn_2",
                   "toolu_0123456789abcdefghijklmn_3"]


def test_a_reply_without_choices_is_an_upstream_error() -> None:
    bad = msgspec.convert({"id": "x", "created": 1, "model": "m", "choices": [],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 0,
                                     "total_tokens": 1}}, ChatCompletion)
    with pytest.raises(UpstreamError):
        from_openai(bad, model="m")


# --- streamed replies (§6.5) ---------------------------------------------------------------

def test_golden_text_stream_from_a_neuron() -> None:
    """The neuron's own shape: role chunk with content "", usage on the finish chunk."""
    events = stream([
        chunk("", finish=None),
        chunk("Hello"),
        chunk(" world"),
        chunk(finish="stop", usage={"prompt_tokens": 25, "completion_tokens": 2,
                                    "total_tokens": 27}),
        b"[DONE]"])
    assert wire(events) == [
        start_event(),
        text_start(0), text_delta(0, "Hello"), text_delta(0, " world"), stop(0),
        # §6.4: input_tokens was 0 in message_start; message_delta corrects it.
        *end("end_turn", 2, input_tokens=25, cache_creation_input_tokens=0,
             cache_read_input_tokens=0)]
    assert_well_formed(events)


def test_golden_sse_bytes() -> None:
    events = stream([chunk("Hi"), chunk(finish="stop")], input_tokens=9)
    assert b"".join(encode_sse(e) for e in events).decode() == (
        'event: message_start\n'
        'data: {"type":"message_start","message":{"id":"' + MSG + '","type":"message",'
        '"role":"assistant","model":"claude-local","content":[],"stop_reason":null,'
        '"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":0,'
        '"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}\n\n'
        'event: content_block_start\n'
        'data: {"type":"content_block_start","index":0,"content_block":{"type":"text",'
        '"text":""}}\n\n'
        'event: content_block_delta\n'
        'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        '"text":"Hi"}}\n\n'
        'event: content_block_stop\n'
        'data: {"type":"content_block_stop","index":0}\n\n'
        'event: message_delta\n'
        'data: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        '"stop_sequence":null},"usage":{"output_tokens":1}}\n\n'
        'event: message_stop\n'
        'data: {"type":"message_stop"}\n\n')


def test_every_event_names_its_type() -> None:
    """Checklist 45: the `event:` line equals data.type; `data: ` has one space."""
    translator = StreamTranslator(model="m", thinking=True)
    events = [*translator.feed(msgspec.json.decode(chunk(reasoning="hm"),
                                                   type=BackendChunk)),
              *translator.ping(),
              *translator.error(Unavailable("busy"))]
    events += stream([chunk("a"), chunk(tool_calls=[call(0, id="c", name="t", args="{}")]),
                      chunk(finish="tool_calls")])
    seen = set()
    for event in events:
        frame = encode_sse(event)
        match = re.fullmatch(rb"event: (\w+)\ndata: (\{.*\})\n\n", frame)
        assert match, frame
        assert json.loads(match[2])["type"] == match[1].decode()
        seen.add(match[1])
    assert len(seen) == 8 and b"[DONE]" not in b"".join(map(encode_sse, events))


def test_llama_cpp_python_tool_stream() -> None:
    """§7.2: id and name repeated in every chunk, deprecated function_call deltas, explicit
    nulls, no usage. One block, name and id not doubled (checklist 57)."""
    def frame(args: str, finish: str | None = None) -> bytes:
        return json.dumps({
            "id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "q",
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None, "delta": {
                "role": None, "content": None,
                "function_call": {"name": "get_weather", "arguments": args},
                "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-x",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": args}}]}}],
        }).encode()
    events = stream([
        frame('{"loc'), frame('ation": "Par'), frame('is"}'),
        json.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
                    "model": "q", "choices": [{"index": 0, "finish_reason": "tool_calls",
                                               "delta": {"content": None,
                                                         "tool_calls": None}}]}).encode(),
        b"[DONE]"])
    assert wire(events) == [
        start_event(),
        tool_start(0, "call__0_get_weather_cmpl-x", "get_weather"),
        json_delta(0, '{"loc'), json_delta(0, 'ation": "Par'), json_delta(0, 'is"}'), stop(0),
        *end("tool_use", 3)]  # no usage from the backend: one token per output chunk
    assert_well_formed(events)


def test_empty_tool_calls_beside_text_open_no_tool_block() -> None:
    """LiteLLM#29286: `tool_calls: []` (or null) next to text must not open a tool block."""
    events = stream([
        b'{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi","tool_calls":[]}}]}',
        b'{"choices":[{"index":0,"delta":{"content":"!","tool_calls":null,"reasoning_content":'
        b'null},"finish_reason":null}],"usage":null}',
        b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'])
    assert wire(events) == [start_event(), text_start(0), text_delta(0, "Hi"),
                            text_delta(0, "!"), stop(0), *end("end_turn", 2)]


def test_whitespace_before_a_tool_call_opens_no_text_block() -> None:
    events = stream([
        chunk("\n"), chunk("\n"),
        chunk(tool_calls=[call(0, id="c1", name="ls", args="{}")]),
        chunk(finish="tool_calls")])
    assert wire(events) == [start_event(), tool_start(0, "c1", "ls"), json_delta(0, "{}"),
                            stop(0), *end("tool_use", 3)]


def test_leading_whitespace_is_kept_once_text_arrives() -> None:
    events = stream([chunk("\n"), chunk("Sure"), chunk(finish="stop")])
    assert wire(events)[1:3] == [text_start(0), text_delta(0, "\nSure")]


def test_text_block_closes_before_a_tool_block_opens() -> None:
    """fuergaosi kept text block 0 open across tool blocks (§8): indices must not overlap."""
    events = stream([
        chunk("Let me check."),
        chunk(tool_calls=[call(0, id="c1", name="get", args='{"q": 1}')]),
        chunk(finish="tool_calls")])
    assert wire(events) == [
        start_event(), text_start(0), text_delta(0, "Let me check."), stop(0),
        tool_start(1, "c1", "get"), json_delta(1, '{"q": 1}'), stop(1), *end("tool_use", 2)]


def test_interleaved_parallel_calls_give_separate_blocks() -> None:
    """Checklist 58; a shared argument buffer corrupted the second call (dify#2667)."""
    events = stream([
        chunk(tool_calls=[call(0, id="a", name="get", args='{"city": ')]),
        chunk(tool_calls=[call(1, id="b", name="get", args='{"city": ')]),
        chunk(tool_calls=[call(0, args='"Paris"}')]),
        chunk(tool_calls=[call(1, args='"Rome"}')]),
        chunk(finish="tool_calls")])
    assert wire(events) == [
        start_event(),
        tool_start(0, "a", "get"), json_delta(0, '{"city": '), json_delta(0, '"Paris"}'),
        stop(0),
        # b waited while a's arguments were incomplete, then streamed on its own.
        tool_start(1, "b", "get"), json_delta(1, '{"city": '), json_delta(1, '"Rome"}'),
        stop(1),
        *end("tool_use", 4)]
    assert [b.input for b in assemble(events).content if isinstance(b, ToolUseBlock)] == [
        {"city": "Paris"}, {"city": "Rome"}]


def test_repeated_id_and_name_of_a_waiting_call_are_not_doubled() -> None:
    """The §7.2 repeat, on a call that waits its turn: OpenAI SDKs concatenate such
    repeats into `call_1call_1`; we must take the first, never join them."""
    def both(first: str, second: str) -> bytes:
        return chunk(tool_calls=[call(0, id="call_0", name="get", args=first),
                                 call(1, id="call_1", name="put", args=second)])
    events = stream([both('{"a": ', '{"b": '), both("1", "2"), both("}", "}"),
                     chunk(finish="tool_calls")])
    assert wire(events) == [
        start_event(),
        tool_start(0, "call_0", "get"), json_delta(0, '{"a": '), json_delta(0, "1"),
        json_delta(0, "}"), stop(0),
        tool_start(1, "call_1", "put"), json_delta(1, '{"b": 2'), json_delta(1, "}"), stop(1),
        *end("tool_use", 6)]


def test_sequential_parallel_calls_stream_without_waiting() -> None:
    events = stream([
        chunk(tool_calls=[call(0, id="a", name="get", args='{"x": 1}')]),
        chunk(tool_calls=[call(1, id="b", name="put", args='{"y"')]),
        chunk(tool_calls=[call(1, args=": 2}")]),
        chunk(finish="tool_calls")])
    assert wire(events) == [
        start_event(),
        tool_start(0, "a", "get"), json_delta(0, '{"x": 1}'), stop(0),
        tool_start(1, "b", "put"), json_delta(1, '{"y"'), json_delta(1, ": 2}"), stop(1),
        *end("tool_use", 3)]


def test_whole_calls_in_one_chunk_like_a_neuron() -> None:
    """The neuron sends every parsed call in one chunk, arguments bundled (LiteLLM#25561)."""
    events = stream([chunk(tool_calls=[
        {"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "Read", "arguments": '{"path": "a"}'}},
        {"index": 1, "id": "call_b", "type": "function",
         "function": {"name": "Read", "arguments": '{"path": "b"}'}}]),
        chunk(finish="tool_calls")])
    assert wire(events) == [
        start_event(),
        tool_start(0, "call_a", "Read"), json_delta(0, '{"path": "a"}'), stop(0),
        tool_start(1, "call_b", "Read"), json_delta(1, '{"path": "b"}'), stop(1),
        *end("tool_use", 2)]


def test_arguments_before_the_name_are_kept_and_an_id_is_made() -> None:
    """CLIProxyAPI#3748: the block was suppressed because the first delta had no name."""
    events = stream([
        chunk(tool_calls=[call(0, args='{"a"')]),
        chunk(tool_calls=[call(0, name="t", args=": 1}")]),
        chunk(finish="tool_calls")])
    assert wire(events) == [
        start_event(), tool_start(0, "toolu_0123456789abcdefghijklmn_0", "t"),
        json_delta(0, '{"a": 1}'), stop(0), *end("tool_use", 2)]


def test_a_call_without_arguments_still_carries_an_object() -> None:
    events = stream([chunk(tool_calls=[call(0, id="c", name="now")]),
                     chunk(finish="tool_calls")])
    assert wire(events)[1:4] == [tool_start(0, "c", "now"), json_delta(0, "{}"), stop(0)]


def test_content_and_finish_in_one_chunk() -> None:
    """LiteLLM's _CombinedChunkSplitter: a fake-streamed answer is one chunk."""
    events = stream([chunk("All of it.", finish="stop")])
    assert wire(events) == [start_event(), text_start(0), text_delta(0, "All of it."), stop(0),
                            *end("end_turn", 1)]


def test_stop_sequence_split_across_chunks() -> None:
    translator = StreamTranslator(model="claude-local", message_id=MSG,
                                  stop_sequences=["</answer>", "STOP"])
    events = translator.start()
    for piece in ["The ST", "OCK is up </ans", "wer> and more"]:
        events += translator.feed(decode_chunk(chunk(piece)) or pytest.fail())
    assert translator.stopped  # the dialect now closes the upstream
    events += translator.feed(decode_chunk(chunk("ignored", finish="stop")) or pytest.fail())
    events += translator.finish()
    assert wire(events) == [
        start_event(), text_start(0), text_delta(0, "The "), text_delta(0, "STOCK is up "),
        stop(0), *end("stop_sequence", 3, "</answer>")]
    assert_well_formed(events)


def test_held_stop_prefix_is_released_at_the_end() -> None:
    events = stream([chunk("see you S"), chunk(finish="stop")], stop_sequences=["STOP"])
    assert wire(events)[2:4] == [text_delta(0, "see you "), text_delta(0, "S")]
    assert wire(events)[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_text_after_a_tool_call_comes_last() -> None:
    events = stream([
        chunk(tool_calls=[call(0, id="c", name="t", args="{}")]),
        chunk(" "), chunk("done"),
        chunk(finish="tool_calls")])
    assert wire(events) == [
        start_event(), tool_start(0, "c", "t"), json_delta(0, "{}"), stop(0),
        text_start(1), text_delta(1, " done"), stop(1), *end("tool_use", 3)]


def test_reasoning_becomes_a_signed_thinking_block_first() -> None:
    """§6.6, checklist 54; LiteLLM#33224 put thinking_delta into a text block."""
    events = stream([
        chunk(reasoning="Think"), chunk(reasoning="ing."), chunk("Answer."),
        chunk(reasoning="late"),  # reasoning after text is dropped, never a second block
        chunk(finish="stop")], thinking=True)
    assert wire(events) == [
        start_event(),
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "Think"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "ing."}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": ""}},
        stop(0),
        text_start(1), text_delta(1, "Answer."), stop(1),
        *end("end_turn", 4)]
    assert_well_formed(events)


def test_reasoning_is_hidden_unless_thinking_was_asked_for() -> None:
    events = stream([chunk(reasoning="hmm"), chunk("Hi"), chunk(finish="stop")])
    assert wire(events)[1:4] == [text_start(0), text_delta(0, "Hi"), stop(0)]
    asked = StreamTranslator.for_request(request(thinking={"type": "enabled",
                                                           "budget_tokens": 2048}))
    silent = StreamTranslator.for_request(request(thinking={"type": "disabled"}))
    reasoning = decode_chunk(chunk(reasoning="hmm")) or pytest.fail()
    assert [type(e).__name__ for e in asked.feed(reasoning)][1:] == [
        "ContentBlockStartEvent", "ContentBlockDeltaEvent"]
    assert [type(e).__name__ for e in silent.feed(reasoning)] == ["MessageStartEvent"]


def test_length_reads_max_tokens_and_usage_only_chunk_counts() -> None:
    """OpenAI puts usage in its own chunk after finish_reason, with `choices: []`."""
    events = stream([
        chunk("a long"), chunk(finish="length"),
        b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"q","choices":[],'
        b'"usage":{"prompt_tokens":120,"completion_tokens":5,"total_tokens":125,'
        b'"prompt_tokens_details":{"cached_tokens":100}}}',
        b"[DONE]"])
    assert wire(events)[-2:] == end("max_tokens", 5, input_tokens=20,
                                    cache_creation_input_tokens=0, cache_read_input_tokens=100)


def test_counted_usage_beats_the_backends() -> None:
    translator = StreamTranslator(model="m", message_id=MSG, input_tokens=30)
    translator.feed(decode_chunk(chunk("x", finish="stop")) or pytest.fail())
    events = translator.finish(Usage(prompt_tokens=31, completion_tokens=4, total_tokens=35))
    assert wire(events)[-2]["usage"] == {"output_tokens": 4, "input_tokens": 31,
                                         "cache_creation_input_tokens": 0,
                                         "cache_read_input_tokens": 0}


def test_known_prompt_count_goes_into_message_start() -> None:
    assert wire(stream([chunk(finish="stop")], input_tokens=4096))[0] == start_event(4096)


def test_a_stream_that_ends_without_finishing_is_an_error() -> None:
    """llama-cpp-python drops the connection on failure: no finish_reason, no [DONE]."""
    events = stream([chunk("partial")])
    assert wire(events) == [
        start_event(), text_start(0), text_delta(0, "partial"),
        {"type": "error", "error": {"type": "api_error",
                                    "message": "the backend stream ended before it finished"}}]
    assert_well_formed(events)


def test_backend_error_frame_mid_stream() -> None:
    translator = StreamTranslator(model="m", message_id=MSG)
    events = translator.start() + translator.feed(decode_chunk(chunk("a")) or pytest.fail())
    events += translator.feed(decode_chunk(
        b'{"error":{"message":"no free slot","type":"server_error","code":"unavailable"}}')
        or pytest.fail())
    assert wire(events)[-1] == {"type": "error", "error": {"type": "overloaded_error",
                                                           "message": "no free slot"}}
    assert translator.closed
    assert translator.feed(decode_chunk(chunk("b")) or pytest.fail()) == []
    assert translator.finish() == [] and translator.ping() == []
    assert_well_formed(events)


@pytest.mark.parametrize(("exc", "kind", "message"), [
    (Unavailable("all daemons busy"), "overloaded_error", "all daemons busy"),
    (UpstreamError("neuron reset the connection"), "api_error", "neuron reset the connection"),
    (Timeout("neuron timed out"), "timeout_error", "neuron timed out"),
    (ConnectionResetError(), "api_error", "ConnectionResetError"),
])
def test_error_after_the_stream_began(exc: BaseException, kind: str, message: str) -> None:
    translator = StreamTranslator(model="claude-local", message_id=MSG)
    events = translator.start() + translator.error(exc)
    assert wire(events) == [start_event(), {"type": "error",
                                            "error": {"type": kind, "message": message}}]
    assert translator.error(exc) == [] and translator.finish() == []


def test_malformed_streamed_arguments_end_in_an_error() -> None:
    """The bytes are already sent; an error makes Claude Code retry non-streaming, where
    `from_openai` may repair them."""
    events = stream([chunk(tool_calls=[call(0, id="c", name="t", args='{"a": 1} junk')]),
                     chunk(finish="tool_calls")])
    assert wire(events)[-1] == {"type": "error", "error": {
        "type": "api_error", "message": "the backend's arguments for tool `t` are not a JSON "
                                        "object"}}


def test_truncated_streamed_arguments_are_fine_with_max_tokens() -> None:
    events = stream([chunk(tool_calls=[call(0, id="c", name="t", args='{"a": "xy')]),
                     chunk(finish="length")])
    assert wire(events)[-2]["delta"]["stop_reason"] == "max_tokens"
    assert assemble(events).content == []


def test_no_ping_before_message_start_and_start_is_once() -> None:
    """Anthropic allows no event before message_start: while it waits, ping() gives
    nothing (the dialect sends an SSE comment instead)."""
    translator = StreamTranslator(model="claude-local", message_id=MSG)
    assert translator.ping() == [] and not translator.started
    assert wire(translator.start()) == [start_event()] and translator.started
    assert translator.start() == []
    assert wire(translator.ping()) == [{"type": "ping"}]


# --- message_start waits for the prompt's counts ---------------------------------------------

def test_message_start_waits_for_the_prompts_counts() -> None:
    """The role chunk starts nothing; the neuron's prompt chunk opens message_start with
    the uncached prompt as input_tokens and the cached part apart (§6.4), the same
    counts message_delta reports at the end."""
    translator = StreamTranslator(model="claude-local", message_id=MSG)
    feed = lambda frame: translator.feed(decode_chunk(frame) or pytest.fail())  # noqa: E731
    assert feed(chunk("")) == [] and translator.ping() == []
    assert wire(feed(prompt_chunk(120, cached=100))) == [start_event(20, cached=100)]
    assert wire(translator.ping()) == [{"type": "ping"}]
    events = feed(chunk("Hi")) + feed(chunk(finish="stop"))
    events += feed(b'{"choices":[],"usage":{"prompt_tokens":120,"completion_tokens":1,'
                   b'"prompt_tokens_details":{"cached_tokens":100}}}')
    assert wire(events + translator.finish()) == [
        text_start(0), text_delta(0, "Hi"), stop(0),
        *end("end_turn", 1, input_tokens=20, cache_creation_input_tokens=0,
             cache_read_input_tokens=100)]


@pytest.mark.parametrize("first", [
    chunk("Hi"), chunk(reasoning="hm"), chunk(tool_calls=[call(0, id="c", name="t", args="")]),
    chunk(finish="stop")], ids=["text", "reasoning", "tool", "finish"])
def test_without_counts_message_start_comes_with_the_first_output(first: bytes) -> None:
    """A backend that tells no prompt counts (not asked, or not cortex's neuron): the
    message starts at its first output or finish, with 0 until message_delta."""
    events = stream([chunk(""), b'{"choices":[{"index":0,"delta":{"content":null}}]}', first],
                    finish=False, thinking=True)
    assert wire(events)[0] == start_event(0)


def test_usage_on_the_finish_chunk_of_a_silent_reply_counts_in_message_start() -> None:
    events = stream([chunk(finish="stop", usage={
        "prompt_tokens": 30, "completion_tokens": 0, "total_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 12}})])
    assert wire(events) == [start_event(18, cached=12),
                            *end("end_turn", 0, input_tokens=18,
                                 cache_creation_input_tokens=0, cache_read_input_tokens=12)]


def test_a_stream_cut_at_a_stop_sequence_still_reports_the_prompt() -> None:
    """No usage chunk comes after a cut; the prompt's counts and the chunks sent do."""
    events = stream([prompt_chunk(40, cached=8), chunk("a "), chunk("b END c")],
                    stop_sequences=["END"])
    assert wire(events)[0] == start_event(32, cached=8)
    assert wire(events)[-2:] == end("stop_sequence", 2, "END", input_tokens=32,
                                    cache_creation_input_tokens=0, cache_read_input_tokens=8)


def test_an_error_before_any_output_ends_without_message_start() -> None:
    """The SDKs raise an `error` event wherever it comes; no message_start is made up."""
    translator = StreamTranslator(model="claude-local", message_id=MSG)
    assert translator.feed(decode_chunk(chunk("")) or pytest.fail()) == []
    events = translator.feed(decode_chunk(
        b'{"error":{"message":"grammar allows no token","type":"invalid_request_error"}}')
        or pytest.fail())
    assert wire(events) == [{"type": "error", "error": {
        "type": "api_error", "message": "grammar allows no token"}}]
    assert translator.closed and translator.ping() == [] and translator.start() == []
    fresh = StreamTranslator(model="claude-local", message_id=MSG)
    assert [e["type"] for e in wire(fresh.error(Unavailable("load failed")))] == ["error"]


def test_decode_chunk() -> None:
    assert decode_chunk(b"[DONE]") is None
    assert decode_chunk(b" [DONE] ") is None
    with pytest.raises(UpstreamError, match="malformed stream chunk"):
        decode_chunk(b'{"choices": [')
    with pytest.raises(UpstreamError):
        decode_chunk(b'{"choices": [{"delta": {"content": 5}}]}')


def test_for_request_echoes_the_model_and_takes_the_stops() -> None:
    req = request(model="claude-sonnet-4-5", stop_sequences=["END"])
    translator = StreamTranslator.for_request(req, message_id=MSG)
    events = translator.start() + translator.feed(
        decode_chunk(chunk("a END b")) or pytest.fail())
    assert translator.stopped and translator.message_id == MSG
    message = assemble(events + translator.finish())
    assert (message.model, message.stop_sequence, message.content) == (
        "claude-sonnet-4-5", "END", [TextBlock(text="a ")])
    passthrough = StreamTranslator.for_request(req, match_stops=False)
    assert passthrough.feed(decode_chunk(chunk("a END b")) or pytest.fail()) != []
    assert not passthrough.stopped


# --- stream and whole reply agree (checklist 53) -------------------------------------------

@pytest.mark.parametrize(("frames", "whole"), [
    ([chunk("Hel"), chunk("lo"), chunk(finish="stop")], completion("Hello")),
    ([chunk("\n"), chunk(tool_calls=[call(0, id="c1", name="get", args='{"q":')]),
      chunk(tool_calls=[call(0, args=' "x"}')]), chunk(finish="tool_calls")],
     completion("\n", finish="tool_calls", tool_calls=[fn("c1", "get", '{"q": "x"}')])),
    ([chunk("ok "), chunk(tool_calls=[call(0, id="c1", name="a", args="{}"),
                                      call(1, id="c2", name="b", args='{"n": 2}')]),
      chunk(finish="stop")],
     completion("ok ", tool_calls=[fn("c1", "a", "{}"), fn("c2", "b", '{"n": 2}')])),
    ([chunk("stop at END here"), chunk(finish="stop")], completion("stop at END here")),
    ([chunk("abc"), chunk(finish="length")], completion("abc", finish="length")),
])
def test_streamed_and_whole_replies_agree(frames: list[bytes], whole: ChatCompletion) -> None:
    streamed = assemble(stream(frames, stop_sequences=["END"]))
    direct = from_openai(whole, model="claude-local", stop_sequences=["END"], message_id=MSG)
    assert streamed.content == direct.content
    assert (streamed.stop_reason, streamed.stop_sequence) == (
        direct.stop_reason, direct.stop_sequence)


def test_assemble_raises_the_streams_error() -> None:
    with pytest.raises(Unavailable, match="busy"):
        assemble([*stream([chunk("a")], finish=False),
                  ErrorEvent(error=ErrorDetail(type="overloaded_error", message="busy"))])
    with pytest.raises(UpstreamError, match="before message_stop"):
        assemble(stream([chunk("a")], finish=False))


# --- deterministic fuzz: any chunk sequence gives a well-formed stream ---------------------

def _random_frames(rng: random.Random) -> list[bytes]:
    frames: list[bytes] = []
    pieces = ["", " ", "\n", "Hi", "ST", "OP", " there", "{", "}", "é"]
    args = ['{"a": ', "1", "}", "", '"x"', ", ", '"b": 2}']
    for _ in range(rng.randint(0, 14)):
        roll = rng.random()
        if roll < 0.35:
            frames.append(chunk(rng.choice(pieces)))
        elif roll < 0.45:
            frames.append(chunk(reasoning=rng.choice(pieces)))
        elif roll < 0.8:
            index = rng.randint(0, 2)
            frames.append(chunk(tool_calls=[call(
                index, id=rng.choice([None, f"call_{index}"]),
                name=rng.choice([None, f"tool{index}"]), args=rng.choice(args))]))
        elif roll < 0.85:
            frames.append(b'{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}')
        else:
            frames.append(b'{"choices":[{"index":0,"delta":{"content":null,"tool_calls":[]}}]}')
    if rng.random() < 0.9:
        frames.append(chunk(finish=rng.choice(["stop", "length", "tool_calls", None])))
    return frames


def _reference_calls(frames: list[bytes]) -> dict[str, Any]:
    """Each named call's arguments, concatenated per index: what no routing may lose."""
    names: dict[int, str] = {}
    args: dict[int, str] = {}
    for frame in frames:
        for choice in json.loads(frame)["choices"]:
            for tc in choice["delta"].get("tool_calls") or ():
                names.setdefault(tc["index"], tc["function"].get("name") or "")
                if not names[tc["index"]]:
                    names[tc["index"]] = tc["function"].get("name") or ""
                args[tc["index"]] = args.get(tc["index"], "") + (
                    tc["function"].get("arguments") or "")
    return {names[i]: json.loads(args[i]) if args[i].strip() else {}
            for i in sorted(names) if names[i]}


@pytest.mark.parametrize("seed", range(300))
def test_random_chunk_sequences_stay_well_formed(seed: int) -> None:
    rng = random.Random(seed)
    frames = _random_frames(rng)
    stops = rng.choice([(), ("STOP",)])
    events = stream(frames, stop_sequences=stops, thinking=rng.random() < 0.5)
    assert_well_formed(events)
    last = msgspec.to_builtins(events[-2]) if len(events) > 1 else {}
    if not stops and last.get("delta", {}).get("stop_reason") not in (None, "max_tokens"):
        message = assemble(events)
        assert {b.name: b.input for b in message.content if isinstance(b, ToolUseBlock)} == \
            _reference_calls(frames)


def test_random_sequences_reach_every_ending() -> None:
    """The fuzz above is not vacuous: it sees each way a stream can end."""
    endings = set()
    for seed in range(300):
        rng = random.Random(seed)
        events = stream(_random_frames(rng), stop_sequences=rng.choice([(), ("STOP",)]),
                        thinking=rng.random() < 0.5)
        last = msgspec.to_builtins(events[-1])
        endings.add(last["error"]["type"] if last["type"] == "error"
                    else msgspec.to_builtins(events[-2])["delta"]["stop_reason"])
    assert endings == {"api_error", "end_turn", "max_tokens", "stop_sequence", "tool_use"}


# --- errors (§3.5, §6.7) -------------------------------------------------------------------

@pytest.mark.parametrize(("status", "sent", "kind"), [
    (400, 400, "invalid_request_error"), (401, 401, "authentication_error"),
    (402, 402, "billing_error"), (403, 403, "permission_error"), (404, 404, "not_found_error"),
    (409, 409, "invalid_request_error"), (413, 413, "request_too_large"),
    (422, 400, "invalid_request_error"), (429, 429, "rate_limit_error"),
    (500, 500, "api_error"), (502, 502, "api_error"), (503, 529, "overloaded_error"),
    (504, 504, "timeout_error"), (507, 507, "api_error"), (529, 529, "overloaded_error"),
])
def test_status_and_error_type(status: int, sent: int, kind: str) -> None:
    assert anthropic_status(status) == sent
    assert anthropic_error_type(sent) == kind


def test_error_bodies() -> None:
    status, body = anthropic_error(ModelNotFound("claude-haiku-4-5"))
    assert (status, msgspec.to_builtins(body)) == (
        404, {"type": "error", "error": {"type": "not_found_error", "message":
              "The model `claude-haiku-4-5` does not exist or is not served here."}})
    assert anthropic_error(Unavailable("all daemons busy"))[0] == 529
    assert anthropic_error(PayloadTooLarge("too big"))[1].error.type == "request_too_large"


OVERFLOW = re.compile(r"^prompt is too long: \d+ tokens > \d+ maximum$")


@pytest.mark.parametrize(("exc", "message"), [
    (ContextLengthExceeded(219898, 200000), "prompt is too long: 219898 tokens > 200000 maximum"),
    (ContextLengthExceeded(9000, 8192, max_tokens=512),
     "prompt is too long: 9000 tokens > 8192 maximum"),
    # Rebuilt from a neuron's envelope (cortex.errors.from_openai_envelope): plain 400.
    (InvalidRequest("prompt is too long: 5000 tokens > 4096 maximum"),
     "prompt is too long: 5000 tokens > 4096 maximum"),
    # llama-cpp-python's wording, which Claude Code does not recognise (§5.7).
    (InvalidRequest("This model's maximum context length is 4096 tokens. However, you "
                    "requested 5000 tokens (4900 in the messages, 100 in the completion). "
                    "Please reduce the length of the messages or completion."),
     "prompt is too long: 4900 tokens > 4096 maximum"),
])
def test_context_overflow_speaks_claude_codes_words(exc: CortexError, message: str) -> None:
    status, body = anthropic_error(exc)
    assert (status, body.error.type, body.error.message) == (400, "invalid_request_error",
                                                             message)
    assert OVERFLOW.match(body.error.message)


def test_overflow_from_max_tokens_asks_for_fewer() -> None:
    """Claude Code retries with max_tokens = limit - input - 1000 on this wording."""
    exc = InvalidRequest("This model's maximum context length is 8192 tokens. However, you "
                         "requested 40000 tokens (8000 in the messages, 32000 in the "
                         "completion).")
    assert anthropic_error(exc)[1].error.message == (
        "input length and `max_tokens` exceed context limit: 8000 + 32000 > 8192, decrease "
        "input length or `max_tokens` and try again")


# --- the module's contract -----------------------------------------------------------------

def test_all_is_complete_and_imports_stay_public() -> None:
    import importlib

    names = ("errors", "reply", "request", "stream", "types")
    for module in [importlib.import_module(f"cortex_plugins.anthropic.{n}") for n in names]:
        assert all(hasattr(module, name) for name in module.__all__)
        path = ROOT / "cortex_plugins" / "anthropic" / f"{module.__name__.rsplit('.', 1)[1]}.py"
        tree = ast.parse(path.read_text())
        imported = {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert imported <= {"__future__", "collections", "typing", "msgspec", "cortex"}, module
