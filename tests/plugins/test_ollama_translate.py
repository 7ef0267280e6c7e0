"""Ollama ⇄ OpenAI translation: golden requests and replies, and properties of the
stream translation and of keep_alive's durations.

Backend chunks are written as the bytes a neuron sends; expected objects are the
literal JSON an Ollama client receives (timestamps and durations from fixed clocks).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex import (
    CatalogueEntry,
    ChatCompletionRequest,
    CompletionRequest,
    ContextLengthExceeded,
    CortexError,
    InvalidRequest,
    decode_body,
)
from cortex_plugins.ollama.errors import in_ollamas_words
from cortex_plugins.ollama.exchange import EmbedExchange
from cortex_plugins.ollama.models import running, show, tag
from cortex_plugins.ollama.reply import Reply
from cortex_plugins.ollama.request import (
    FOREVER,
    chat_request,
    embed_inputs,
    embed_request,
    generate_request,
    keep_alive_seconds,
)
from cortex_plugins.ollama.types import ChatRequest, EmbedRequest, GenerateRequest

WHEN = "2026-01-02T03:04:05.000000Z"


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return chat_request(decode_body(json.dumps(body).encode(), ChatRequest), model="m")


def generate(**fields: Any) -> ChatCompletionRequest | CompletionRequest:
    body = {"model": "m", "prompt": "hi", **fields}
    return generate_request(decode_body(json.dumps(body).encode(), GenerateRequest),
                            model="m")


def wire(request: Any) -> dict[str, Any]:
    """The canonical request as the neuron receives it."""
    return json.loads(msgspec.json.encode(request))


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reply(kind: str = "chat", clock: Clock | None = None, thinking: bool = True) -> Reply:
    clock = clock or Clock()
    return Reply(kind, "m:latest", started=clock.now, load_seconds=0.5, clock=clock,  # type: ignore[arg-type]
                 wall=lambda: 1767323045.0, thinking=thinking)


def chunk(content: str | None = None, *, finish: str | None = None,
          calls: list[dict[str, Any]] | None = None, usage: dict[str, int] | None = None,
          reasoning: str | None = None) -> bytes:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if calls is not None:
        delta["tool_calls"] = calls
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                            "model": "m", "choices": [{"index": 0, "delta": delta,
                                                       "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


# --- requests ------------------------------------------------------------------------------

def test_options_map_to_openai_sampling_fields() -> None:
    body = wire(chat(options={"num_predict": 32, "temperature": 0.2, "top_p": 0.9,
                              "top_k": 40, "min_p": 0.05, "seed": 7, "stop": ["\n\n"],
                              "repeat_penalty": 1.1, "num_ctx": 2048, "num_gpu": 99,
                              "num_thread": 4}, stream=False))
    sent = {key: body[key] for key in ("max_tokens", "temperature", "top_p", "top_k",
                                       "min_p", "seed", "stop", "repeat_penalty", "stream")}
    assert sent == {"max_tokens": 32, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
                    "min_p": 0.05, "seed": 7, "stop": ["\n\n"], "repeat_penalty": 1.1,
                    "stream": False}
    # The runtime options are the profile's: nothing of them reaches the neuron.
    assert not {"num_ctx", "num_gpu", "num_thread", "options"} & set(body)


def test_a_stream_asks_the_neuron_for_usage() -> None:
    assert wire(chat())["stream_options"] == {"include_usage": True}
    assert wire(chat(stream=False))["stream_options"] is None


@pytest.mark.parametrize("predict", [-1, -2])
def test_unlimited_num_predict_sends_no_budget(predict: int) -> None:
    assert wire(chat(options={"num_predict": predict}))["max_tokens"] is None


@pytest.mark.parametrize("options", [{"num_predict": 0}, {"num_predict": -3},
                                     {"temperature": -1}, {"top_p": 1.5}, {"top_k": -1},
                                     {"num_ctx": 0}, {"stop": "x"}])
def test_out_of_range_options_are_400(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        chat(options=options)


def test_a_random_seed_is_no_seed() -> None:
    assert wire(chat(options={"seed": -1}))["seed"] is None


def test_num_ctx_is_validated_and_not_sent() -> None:
    """The context is the profile's: any valid num_ctx is served by it, none reaches
    the neuron (an invalid one is refused in test_bad_options_are_400)."""
    assert "num_ctx" not in wire(chat(options={"num_ctx": 1_000_000}))


def test_format_json_and_schema() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    assert wire(chat(format="json"))["response_format"] == {"type": "json_object"}
    assert wire(chat(format=schema))["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "format", "schema": schema}}
    assert wire(chat(format=""))["response_format"] is None
    with pytest.raises(InvalidRequest, match="format"):
        chat(format="yaml")


def test_tools_and_a_tool_round_trip() -> None:
    tool = {"type": "function", "function": {"name": "weather", "description": "w",
                                             "parameters": {"type": "object"}}}
    body = wire(chat(tools=[tool], messages=[
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "time", "arguments": {}}}]},
        {"role": "tool", "tool_name": "time", "content": "noon"},
        {"role": "tool", "content": "sunny"}]))
    assert body["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "w", "parameters": {"type": "object"},
        "strict": None}}]
    assistant, by_name, by_order = body["messages"][1:]
    assert assistant["content"] is None
    assert [(c["id"], c["function"]) for c in assistant["tool_calls"]] == [
        ("call_1", {"name": "weather", "arguments": '{"city":"Paris"}'}),
        ("call_2", {"name": "time", "arguments": "{}"})]
    assert (by_name["tool_call_id"], by_order["tool_call_id"]) == ("call_2", "call_1")


def test_chat_truncates_its_history_unless_told_not_to() -> None:
    """Ollama's chat `truncate` (default true) is the neuron's `truncate_history`."""
    assert wire(chat())["truncate_history"] is True
    assert wire(chat(truncate=False))["truncate_history"] is False


def test_roles_are_read_as_ollama_reads_them() -> None:
    body = wire(chat(messages=[{"role": "System", "content": "s"},
                               {"role": "USER", "content": "u"}]))
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_two_calls_of_one_tool_are_answered_by_their_ids() -> None:
    """The ids a reply gave its calls come back on the calls and on their results, in
    any order; matched by name alone, the second result would answer the first call."""
    body = wire(chat(messages=[
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_p", "function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"id": "call_r", "function": {"name": "weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "tool_name": "weather", "tool_call_id": "call_r", "content": "rain"},
        {"role": "tool", "tool_name": "weather", "tool_call_id": "call_p", "content": "sun"}]))
    assert [c["id"] for c in body["messages"][1]["tool_calls"]] == ["call_p", "call_r"]
    assert [(m["tool_call_id"], m["content"]) for m in body["messages"][2:]] == [
        ("call_r", "rain"), ("call_p", "sun")]


@pytest.mark.parametrize("message, field", [
    ({"role": "user", "content": "x", "images": ["aGk="]}, "images"),
    ({"role": "robot", "content": "x"}, "role")])
def test_messages_we_cannot_serve_are_refused_naming_the_field(
        message: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat(messages=[message])
    assert caught.value.param == f"messages[0].{field}"


@pytest.mark.parametrize("field", [{"logprobs": True}, {"top_logprobs": 2}])
def test_chat_logprobs_are_refused(field: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat(**field)
    assert caught.value.param == next(iter(field))


@pytest.mark.parametrize("think", [True, False, "low", "medium", "high", "max"])
def test_think_asks_nothing_of_the_neuron(think: Any) -> None:
    """Shown or hidden is the reply's business; the models here take no effort level."""
    assert wire(chat(think=think)) == wire(chat())
    assert wire(generate(think=think)) == wire(generate())


@pytest.mark.parametrize("think", ["extreme", 1, "true"])
def test_a_think_that_is_no_level_is_400(think: Any) -> None:
    with pytest.raises(InvalidRequest, match=r"\$\.think"):
        chat(think=think)


def test_an_assistant_turns_thinking_is_its_reasoning() -> None:
    body = wire(chat(messages=[
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "thinking": "two and two"},
        {"role": "assistant", "content": "", "thinking": "now a call", "tool_calls": [
            {"function": {"name": "f", "arguments": {}}}]},
        {"role": "user", "content": "sure?", "thinking": "not a user's"}]))
    assert [m["reasoning_content"] for m in body["messages"]] == [
        None, "two and two", "now a call", None]


def test_bad_tools_are_400() -> None:
    with pytest.raises(InvalidRequest, match="tools"):
        chat(tools=[{"type": "function", "function": {"description": "no name"}}])


def test_generate_is_a_chat_turn_with_its_system_prompt() -> None:
    body = wire(generate(system="be brief", stream=False))
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "be brief"), ("user", "hi")]


def test_raw_generate_is_a_text_completion_without_openai_default_budget() -> None:
    request = generate(raw=True)
    assert isinstance(request, CompletionRequest)
    assert (request.prompt, request.max_tokens) == ("hi", None)


@pytest.mark.parametrize("field", [{"template": "{{ .Prompt }}"}, {"context": [1, 2]},
                                   {"images": ["aGk="]}, {"suffix": "end"},
                                   {"logprobs": True}, {"top_logprobs": 3}])
def test_generate_fields_we_cannot_honour_are_refused(field: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate(**field)
    assert caught.value.param == next(iter(field))


# --- keep_alive ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    (None, None), (0, 0.0), ("0", 0.0), (300, 300.0), ("5m", 300.0), ("1h30m", 5400.0),
    ("1.5s", 1.5), ("250ms", 0.25), (-1, FOREVER), ("-1", FOREVER), ("-1m", FOREVER)])
def test_keep_alive_durations(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m5", "", "1e99"])
def test_keep_alive_that_is_no_duration_is_400(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        keep_alive_seconds(value)
    assert caught.value.param == "keep_alive"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["h", "m", "s", "ms"])),
                min_size=1, max_size=4))
def test_any_go_duration_is_its_sum(parts: list[tuple[int, str]]) -> None:
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert keep_alive_seconds(text) == pytest.approx(sum(n * scale[u] for n, u in parts))


# --- replies -------------------------------------------------------------------------------

def test_streamed_chat_lines_and_the_done_object() -> None:
    clock = Clock()
    answer = reply(clock=clock)
    clock.now += 0.5  # the load
    clock.now += 0.25  # prefill
    lines = answer.feed(chunk("Hel"))
    clock.now += 1.0
    lines += answer.feed(chunk("lo", finish="stop"))
    lines += answer.feed(chunk(usage={"prompt_tokens": 9, "completion_tokens": 2,
                                      "total_tokens": 11}))
    lines += answer.feed(b"[DONE]")
    assert lines == [
        {"model": "m:latest", "created_at": WHEN,
         "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": "m:latest", "created_at": WHEN,
         "message": {"role": "assistant", "content": "lo"}, "done": False},
        {"model": "m:latest", "created_at": WHEN,
         "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "total_duration": 1_750_000_000,
         "load_duration": 500_000_000, "prompt_eval_count": 9,
         "prompt_eval_duration": 250_000_000, "eval_count": 2,
         "eval_duration": 1_000_000_000}]


def test_streamed_thinking_comes_in_lines_of_its_own() -> None:
    clock = Clock()
    answer = reply(clock=clock)
    clock.now += 0.75  # the load and the prefill, to the first reasoning token
    lines = answer.feed(chunk(reasoning="Two and"))
    clock.now += 1.0
    lines += answer.feed(chunk(reasoning=" two."))
    lines += answer.feed(chunk("4", finish="stop",
                               usage={"prompt_tokens": 9, "completion_tokens": 4}))
    lines += answer.feed(b"[DONE]")
    head = {"model": "m:latest", "created_at": WHEN}
    assert lines[:3] == [
        {**head, "message": {"role": "assistant", "content": "", "thinking": "Two and"},
         "done": False},
        {**head, "message": {"role": "assistant", "content": "", "thinking": " two."},
         "done": False},
        {**head, "message": {"role": "assistant", "content": "4"}, "done": False}]
    assert (lines[3]["done"], lines[3]["eval_count"]) == (True, 4)
    assert lines[3]["prompt_eval_duration"] == 250_000_000  # reasoning is generation


@pytest.mark.parametrize("kind, field", [("chat", "message"), ("generate", "response")])
def test_think_false_hides_the_reasoning_but_not_its_cost(kind: str, field: str) -> None:
    shown, hidden = reply(kind), reply(kind, thinking=False)
    feed = [chunk(reasoning="hmm"), chunk("ok", finish="stop",
                                          usage={"prompt_tokens": 1, "completion_tokens": 2})]
    seen = [line for data in feed for line in shown.feed(data)]
    unseen = [line for data in feed for line in hidden.feed(data)]
    if kind == "chat":
        assert [line["message"].get("thinking") for line in seen] == ["hmm", None]
    else:
        assert [line.get("thinking") for line in seen] == ["hmm", None]
    assert unseen == seen[1:] and "thinking" not in json.dumps(unseen)
    assert hidden.finish()[-1]["eval_count"] == shown.finish()[-1]["eval_count"] == 2


def test_streamed_tool_calls_arrive_whole_before_done() -> None:
    answer = reply()
    lines = answer.feed(chunk(calls=[{"index": 0, "id": "call_a", "type": "function",
                                      "function": {"name": "weather", "arguments": ""}}]))
    lines += answer.feed(chunk(calls=[{"index": 0, "function": {"arguments": '{"city"'}}]))
    lines += answer.feed(chunk(calls=[{"index": 0, "function": {"arguments": ':"Paris"}'}}],
                               finish="tool_calls"))
    lines += answer.feed(b"[DONE]")
    assert [line["message"].get("tool_calls") for line in lines] == [
        [{"id": "call_a", "function": {"index": 0, "name": "weather",
                                       "arguments": {"city": "Paris"}}}], None]
    assert lines[-1]["done_reason"] == "stop"


def test_a_length_stop_is_length() -> None:
    answer = reply("generate")
    lines = answer.feed(chunk("a", finish="length")) + answer.finish()
    assert lines[0]["response"] == "a"
    assert (lines[-1]["done"], lines[-1]["done_reason"]) == (True, "length")


def test_a_stream_that_ends_early_fails() -> None:
    answer = reply()
    answer.feed(chunk("a"))
    with pytest.raises(CortexError, match="ended before"):
        answer.finish()


def test_an_error_frame_fails_the_stream() -> None:
    with pytest.raises(CortexError, match="boom"):
        reply().feed(b'{"error": {"message": "boom"}}')


def test_tool_arguments_that_are_not_an_object_fail() -> None:
    answer = reply()
    answer.feed(chunk(calls=[{"index": 0, "function": {"name": "f", "arguments": "[1]"}}],
                      finish="tool_calls"))
    with pytest.raises(CortexError, match="not a JSON object"):
        answer.finish()


def test_a_whole_chat_reply() -> None:
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [
                    {"id": "x", "type": "function",
                     "function": {"name": "f", "arguments": '{"a": 1}'}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    out = reply().whole(json.dumps(body).encode())
    assert out["message"] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "x", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]}
    assert (out["done"], out["done_reason"], out["prompt_eval_count"], out["eval_count"]) \
        == (True, "stop", 3, 4)


@pytest.mark.parametrize("thinking", [True, False])
def test_a_whole_reply_with_reasoning(thinking: bool) -> None:
    message = {"role": "assistant", "content": "4", "reasoning_content": "two and two"}
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    chat_reply = reply(thinking=thinking).whole(json.dumps(body).encode())
    generated = reply("generate", thinking=thinking).whole(json.dumps(body).encode())
    if thinking:
        assert chat_reply["message"] == {"role": "assistant", "content": "4",
                                         "thinking": "two and two"}
        assert (generated["response"], generated["thinking"]) == ("4", "two and two")
    else:
        assert chat_reply["message"] == {"role": "assistant", "content": "4"}
        assert "thinking" not in generated


def test_a_whole_raw_generate_reply() -> None:
    body = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    out = reply("generate").whole(json.dumps(body).encode())
    assert (out["response"], out["done_reason"]) == ("ok", "stop")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60), st.lists(st.integers(0, 60), max_size=8),
       st.text(alphabet="abc \"{}:", max_size=20))
def test_any_split_of_text_and_arguments_reassembles(text: str, cuts: list[int],
                                                     value: str) -> None:
    """However the neuron splits the text and a call's arguments into chunks, the client
    gets the text in order and the arguments whole."""
    arguments = json.dumps({"v": value})
    points = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    answer = reply()
    lines = []
    for start, end in itertools.pairwise(points):
        lines += answer.feed(chunk(text[start:end]))
    arg_points = sorted({0, len(arguments), *(c for c in cuts if c < len(arguments))})
    for start, end in itertools.pairwise(arg_points):
        call: dict[str, Any] = {"index": 0, "function": {"arguments": arguments[start:end]}}
        if start == 0:
            call["function"]["name"] = "f"
        lines += answer.feed(chunk(calls=[call]))
    lines += answer.feed(chunk(finish="tool_calls")) + answer.finish()
    assert "".join(line["message"]["content"] for line in lines) == text
    assert lines[-2]["message"]["tool_calls"][0]["function"]["arguments"] == {"v": value}


# --- embeddings ----------------------------------------------------------------------------

def embeddings(*vectors: list[float]) -> bytes:
    return json.dumps({"object": "list", "model": "m", "usage": {"prompt_tokens": 5},
                       "data": [{"index": i, "embedding": v}
                                for i, v in enumerate(vectors)]}).encode()


def test_embed_asks_the_neuron_to_truncate_by_default() -> None:
    """Ollama truncates unless told not to; the cut is the neuron's (it has the tokens)."""
    def sent(**fields: Any) -> dict[str, Any]:
        req = decode_body(json.dumps({"model": "m", "input": "a", **fields}).encode(),
                          EmbedRequest)
        return wire(embed_request(embed_inputs(req), model="m", truncate=req.truncate))

    assert sent()["truncate"] is True and sent(truncate=True)["truncate"] is True
    assert sent(truncate=False)["truncate"] is False
    assert sent(dimensions=4)["dimensions"] is None  # cut in the answer, as Ollama cuts


def test_dimensions_cut_only_a_longer_vector_and_renormalise() -> None:
    """As Ollama: the first N components, at unit length again; asking for more than the
    model has is the whole vector, not an error."""
    vector = [0.6, 0.0, 0.8, 0.0]
    cut = json.loads(EmbedExchange("m", started=0.0, load_seconds=0.0, dimensions=1)
                     .reply(embeddings(vector, [0.0, 0.6, 0.0, 0.8])).body)
    assert cut["embeddings"] == [[1.0], [0.0]]
    two = json.loads(EmbedExchange("m", started=0.0, load_seconds=0.0, dimensions=2)
                     .reply(embeddings(vector)).body)["embeddings"][0]
    assert two == [1.0, 0.0]
    for dimensions in (None, 4, 4096):
        whole = json.loads(EmbedExchange("m", started=0.0, load_seconds=0.0,
                                         dimensions=dimensions).reply(embeddings(vector)).body)
        assert whole["embeddings"] == [vector] and whole["prompt_eval_count"] == 5


def test_an_input_over_the_context_is_said_in_ollamas_words() -> None:
    over = ContextLengthExceeded(600, 512, param="input")
    body = json.dumps(over.openai_envelope()).encode()
    said = in_ollamas_words(body, InvalidRequest(over.message))
    assert said.message == ("the input length exceeds the context length (prompt is too "
                            "long: 600 tokens > 512 maximum)")
    prompt = ContextLengthExceeded(600, 512)  # a chat prompt: the neuron's words stand
    kept = InvalidRequest(prompt.message)
    assert in_ollamas_words(json.dumps(prompt.openai_envelope()).encode(), kept) is kept
    assert in_ollamas_words(b"not json", kept) is kept


# --- the catalogue -------------------------------------------------------------------------

def test_catalogue_shapes() -> None:
    entry = CatalogueEntry(id="gemma", state="ready", loaded_on=["a"], aliases=["g"],
                           n_ctx=4096, bytes=1234, ttl=None)
    names = [item["name"] for item in tag(entry)]
    assert names == ["gemma", "g"]
    assert tag(entry)[0]["size"] == 1234
    ps = running(entry, now=lambda: 0.0)
    assert (ps["size_vram"], ps["context_length"], ps["expires_at"]) == (
        1234, 4096, "2318-01-01T00:00:00Z")
    timed = running(CatalogueEntry(id="x", state="ready", ttl=60.0), now=lambda: 0.0)
    assert timed["expires_at"] == "1970-01-01T00:01:00Z"
    assert show(entry)["capabilities"] == ["completion", "tools"]
    assert show(CatalogueEntry(id="e", state="available", embeddings=True))[
        "capabilities"] == ["embedding"]
