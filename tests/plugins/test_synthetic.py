"""The synthetic harness: a documented plugin that streams tokens at a set rate, no model."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from cortex.errors import InvalidRequest
from cortex_plugins.synthetic import SyntheticSettings, parse_source


def test_source_overrides_the_harness_defaults() -> None:
    settings = parse_source("synthetic:rate=250,tokens=7,bytes=2GiB",
                            SyntheticSettings(ttft_ms=5))
    assert (settings.rate, settings.tokens, settings.bytes, settings.ttft_ms) == \
        (250.0, 7, "2GiB", 5.0)
    with pytest.raises(InvalidRequest, match="synthetic"):
        parse_source("hf://a/b", SyntheticSettings())
    with pytest.raises(InvalidRequest, match="bad synthetic source"):
        parse_source("synthetic:speed=3", SyntheticSettings())


def _frames(reply: httpx.Response) -> list[Any]:
    return [json.loads(line[6:]) for line in reply.iter_lines()
            if line.startswith("data: {")]


def test_synthetic_neuron_streams_reserves_and_unloads(start_neuron: Any) -> None:
    neuron = start_neuron({"memory_budget": "3GiB", "harness": {"synthetic": {"rate": 400}}})
    with httpx.Client(base_url=neuron.url, timeout=30) as client:
        loaded = client.post("/models/load", json={"profile": {
            "id": "fake", "source": "synthetic:tokens=20,bytes=2GiB", "harness": "synthetic",
            "slots": 2}})
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["estimate"]["total"] == 2 * 2**30
        second = client.post("/models/load", json={"profile": {
            "id": "fake2", "source": "synthetic:bytes=2GiB", "harness": "synthetic"}})
        assert second.status_code == 507  # the claimed bytes count against the budget
        with client.stream("POST", "/v1/chat/completions", json={
                "model": "fake", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hello there"}]}) as reply:
            frames = _frames(reply)
        text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames
                       if f["choices"])
        assert len(text.split()) == 20
        assert frames[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 20,
                                       "total_tokens": 23,
                                       "prompt_tokens_details": {"cached_tokens": 0}}
        same = client.post("/v1/completions", json={"model": "fake", "prompt": "x",
                                                    "max_tokens": 5}).json()
        again = client.post("/v1/completions", json={"model": "fake", "prompt": "x",
                                                     "max_tokens": 5}).json()
        assert same["choices"][0]["text"] == again["choices"][0]["text"]
        assert client.post("/models/unload", json={"model": "fake"}).status_code == 200


def test_rate_is_held_and_forced_unload_ends_streams(start_neuron: Any) -> None:
    neuron = start_neuron({})
    with httpx.Client(base_url=neuron.url, timeout=30) as client:
        client.post("/models/load", json={"profile": {
            "id": "slow", "source": "synthetic:rate=20", "harness": "synthetic"}})
        started = time.monotonic()
        client.post("/v1/completions", json={"model": "slow", "prompt": "x", "max_tokens": 10})
        # Ten tokens at 20/s take at least half a second (a lower bound, not a timing goal).
        assert time.monotonic() - started >= 0.45
        frames: list[Any] = []
        begun = threading.Event()

        def read() -> None:
            with httpx.Client(base_url=neuron.url, timeout=30) as own, own.stream(
                    "POST", "/v1/completions", json={"model": "slow", "prompt": "x",
                                                     "max_tokens": 1000,
                                                     "stream": True}) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data: {"):
                        frames.append(json.loads(line[6:]))
                        begun.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert begun.wait(10)
        client.post("/models/unload", json={"model": "slow", "force": True})
        reader.join(10)
        assert not reader.is_alive()
        assert "unloaded" in frames[-1]["error"]["message"]


def test_a_script_answers_requests_with_tools_turn_by_turn(start_neuron: Any) -> None:
    """[harness.synthetic] script (neuron.toml only): step N answers a conversation
    with N assistant turns; a tool step needs the request to offer that tool."""
    script = [{"tool": "lookup", "arguments": {"q": "cortex"}}, {"text": "It is a fleet."}]
    neuron = start_neuron({"harness": {"synthetic": {"rate": 0, "script": script}}})
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    ask = [{"role": "user", "content": "What is cortex?"}]
    with httpx.Client(base_url=neuron.url, timeout=30) as client:
        assert client.post("/models/load", json={"profile": {
            "id": "s", "source": "synthetic:", "harness": "synthetic"}}).status_code == 200

        def chat(messages: list[Any], **extra: Any) -> dict[str, Any]:
            reply = client.post("/v1/chat/completions",
                                json={"model": "s", "messages": messages, **extra})
            assert reply.status_code == 200, reply.text
            return dict(reply.json()["choices"][0])

        first = chat(ask, tools=tools)
        assert first["finish_reason"] == "tool_calls"
        call = first["message"]["tool_calls"][0]
        assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
            "lookup", {"q": "cortex"})
        then = [*ask, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "a fleet"}]
        second = chat(then, tools=tools)
        assert (second["finish_reason"], second["message"]["content"]) == (
            "stop", "It is a fleet.")
        assert chat(then * 3, tools=tools)["message"]["content"] == "It is a fleet."
        # No tools, or not the scripted one: the usual words, no call.
        for extra in ({}, {"tools": [{"type": "function", "function": {"name": "other"}}]}):
            plain = chat(ask, max_tokens=5, **extra)
            assert plain["finish_reason"] == "length" and "tool_calls" not in plain["message"]


def test_reasoning_comes_apart_before_the_answer(start_neuron: Any) -> None:
    """[harness.synthetic] reasoning (neuron.toml only): every chat reply begins with
    those words as reasoning, which the neuron sends as `reasoning_content` (deltas of
    their own, or on the message) and counts as generated tokens. A text completion is
    not a chat reply: no reasoning there."""
    neuron = start_neuron({"harness": {"synthetic": {
        "rate": 0, "reasoning": "Two and two make four.",
        "script": [{"text": "It is 4."}]}}})
    tools = [{"type": "function", "function": {"name": "unused", "parameters": {}}}]
    ask = {"model": "s", "tools": tools, "messages": [{"role": "user", "content": "2+2?"}]}
    with httpx.Client(base_url=neuron.url, timeout=30) as client:
        assert client.post("/models/load", json={"profile": {
            "id": "s", "source": "synthetic:", "harness": "synthetic"}}).status_code == 200
        whole = client.post("/v1/chat/completions", json=ask).json()
        assert whole["choices"][0]["message"] == {
            "role": "assistant", "content": "It is 4.",
            "reasoning_content": "Two and two make four."}
        assert whole["usage"]["completion_tokens"] == 5 + 3
        with client.stream("POST", "/v1/chat/completions",
                           json={**ask, "stream": True}) as reply:
            deltas = [f["choices"][0]["delta"] for f in _frames(reply) if f["choices"]]
        thought = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
        said = [d["content"] for d in deltas if d.get("content")]
        assert "".join(thought) == "Two and two make four." and "".join(said) == "It is 4."
        first_word = next(i for i, d in enumerate(deltas) if d.get("content"))
        assert all("reasoning_content" in d for d in deltas[1:first_word])
        # Within the budget: a short one ends in the middle of the reasoning.
        cut = client.post("/v1/chat/completions", json={**ask, "max_tokens": 2}).json()
        assert cut["choices"][0]["message"]["reasoning_content"] == "Two and"
        assert cut["choices"][0]["finish_reason"] == "length"
        text = client.post("/v1/completions", json={"model": "s", "prompt": "x",
                                                    "max_tokens": 7}).json()
        assert "reasoning_content" not in text["choices"][0]
        assert len(text["choices"][0]["text"].split()) == 7
