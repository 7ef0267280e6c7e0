"""Tool calls parsed out of generated text, whole and streamed piece by piece."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from cortex import Done, GenerationEvent, TextDelta, ToolCalls
from cortex_plugins.llamacpp.tools import ToolCallParser, parse_tool_calls, with_tool_calls


def stream(pieces: list[str]) -> tuple[str, list[tuple[str, dict[str, object]]]]:
    parser = ToolCallParser()
    shown = "".join(parser.feed(p) for p in pieces)
    rest, calls = parser.finish()
    return shown + rest, [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def test_hermes_calls_streamed_in_pieces() -> None:
    pieces = ["Let me check.", "\n<tool", "_call>\n{\"name\": \"get_weather\", ",
              "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
              "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>"]
    # The newline before the marker was already shown when the marker began.
    assert stream(pieces) == ("Let me check.\n",
                              [("get_weather", {"city": "Paris"}), ("get_time", {})])


def test_mistral_calls() -> None:
    text = '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}]'
    assert stream([text[:5], text[5:]]) == ("", [("add", {"a": 1, "b": 2})])


def test_bare_json_reply_with_parameters() -> None:
    assert stream(['{"name": "lookup", ', '"parameters": {"q": "x"}}']) == (
        "", [("lookup", {"q": "x"})])


def test_plain_text_passes_through_even_with_a_false_start() -> None:
    assert stream(["a <tool", " tip> b"]) == ("a <tool tip> b", [])


def test_unparseable_call_is_returned_as_text() -> None:
    text = "<tool_call>{not json}</tool_call>"
    assert stream([text]) == (text, [])


@pytest.mark.parametrize("text", ['{"answer": 42}', "[1, 2]"])
def test_json_that_is_not_a_call_stays_text(text: str) -> None:
    assert parse_tool_calls(text) == (text, [])


def test_call_ids_are_unique_and_arguments_are_json_strings() -> None:
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": "é"}}</tool_call>'
                                '<tool_call>{"name": "f", "arguments": "{}"}</tool_call>')
    assert calls[0].id != calls[1].id and calls[0].id.startswith("call_")
    assert calls[0].function.arguments == '{"x": "é"}' and calls[1].function.arguments == "{}"


CUT = '<tool_call>{"name": "read", "arguments": {"path": "a.txt"}}</tool_call>\n' \
      '<tool_call>{"name": "read", "arguments": {"pa'


def test_a_cut_off_reply_keeps_its_complete_calls() -> None:
    """max_tokens (or a full context) cut the second call short: the first stands."""
    parser = ToolCallParser()
    shown = parser.feed(CUT[:30]) + parser.feed(CUT[30:])
    rest, calls = parser.finish(truncated=True)
    assert shown + rest == ""
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("read", {"path": "a.txt"})]


def test_an_unfinished_call_without_a_cut_is_text() -> None:
    """A reply that ended on its own (EOS, a stop string) with a broken call is text."""
    assert parse_tool_calls(CUT) == (CUT, [])


@pytest.mark.parametrize("text", [
    '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}, {"name": "add", "argu',
    '[{"name": "add", "arguments": {"a": 1}}, {"name": "ad',
])
def test_a_cut_off_list_keeps_its_complete_calls(text: str) -> None:
    _, calls = parse_tool_calls(text, truncated=True)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("add", {"a": 1})]
    assert parse_tool_calls(text) == (text, [])


def test_a_broken_complete_call_before_a_cut_is_still_text() -> None:
    text = '<tool_call>{not json}</tool_call><tool_call>{"name": "f", "argu'
    assert parse_tool_calls(text, truncated=True) == (text, [])


def test_a_cut_off_lone_call_is_text() -> None:
    text = '<tool_call>{"name": "f", "argu'
    assert parse_tool_calls(text, truncated=True) == (text, [])


@pytest.mark.anyio
async def test_held_text_sends_a_heartbeat_at_once_then_every_interval() -> None:
    """A reply that may be one JSON tool call is held to its end; meanwhile an empty delta
    goes out at the first token (the neuron's response starts) and then once per
    heartbeat, so a gateway waiting on the neuron sees it alive. The clock is a list of
    times, one per token: deterministic."""
    pieces = ['{"name": "add", ', '"arguments": ', '{"a": 1, ', '"b": 2}', "}"]
    times = iter([0.0, 1.0, 5.5, 6.0, 11.0])
    done = Done(finish_reason="stop", prompt_tokens=3, completion_tokens=5)

    async def events() -> AsyncIterator[GenerationEvent]:
        for piece in pieces:
            yield TextDelta(piece)
        yield done

    out = [e async for e in with_tool_calls(events(), heartbeat=5.0,
                                            clock=lambda: next(times))]
    assert out[:3] == [TextDelta(""), TextDelta(""), TextDelta("")]  # at 0.0, 5.5, 11.0
    assert isinstance(out[3], ToolCalls) and out[4] is done and len(out) == 5
    assert [(c.function.name, json.loads(c.function.arguments)) for c in out[3].calls] \
        == [("add", {"a": 1, "b": 2})]


@pytest.mark.anyio
async def test_text_shown_as_it_comes_needs_no_heartbeat() -> None:
    times = iter([0.0, 10.0, 20.0])
    done = Done(finish_reason="stop", prompt_tokens=3, completion_tokens=3)

    async def events() -> AsyncIterator[GenerationEvent]:
        for piece in ["Hello", " there", "."]:
            yield TextDelta(piece)
        yield done

    out = [e async for e in with_tool_calls(events(), heartbeat=5.0,
                                            clock=lambda: next(times))]
    assert out == [TextDelta("Hello"), TextDelta(" there"), TextDelta("."), done]
