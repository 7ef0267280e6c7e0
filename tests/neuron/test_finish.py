"""How a neuron's answers end: usage in streams as OpenAI's spec says, and a `length`
finish that says whether max_tokens or a full context cut it (the real model, through
the OpenAI SDK where a client would see it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..conftest import NeuronProcess, running_neuron

pytestmark = pytest.mark.model

N_CTX = 256  # llama.cpp pads a context to 256 cells: a smaller one would not be it
PROFILE = {"id": "tiny", "source": "bundled:gemma3-270m", "chat_format": "gemma",
           "n_ctx": N_CTX, "slots": 2}
# The same model with a default output budget (what the bundled profile sets for clients
# like Codex that send none).
BUDGETED = {**PROFILE, "id": "budgeted", "default_max_tokens": 4}
PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen"
MESSAGES: Any = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           cache_dir: Path) -> Iterator[NeuronProcess]:
    with running_neuron({"cache_dir": str(cache_dir), "preload": [PROFILE, BUDGETED]},
                        tmp_path_factory.mktemp("neuron-finish"), preloaded_within=120) as process:
        yield process


@pytest.fixture(scope="module")
def full(neuron: NeuronProcess) -> str:
    """A prompt that leaves a few cells of the context free (as chat, and as text)."""
    def count(text: str) -> int:
        counts = [httpx.post(f"{neuron.url}/tokenize", json={"model": "tiny", **body}).json()
                  ["count"] for body in ({"messages": [{"role": "user", "content": text}]},
                                         {"text": text})]
        return max(counts)

    text = "one" + " one" * (N_CTX - count("one") - 8)
    assert N_CTX - 12 <= count(text) <= N_CTX - 4
    return text


@pytest.fixture
def client(neuron: NeuronProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0,
                         timeout=120)


def _frames(neuron: NeuronProcess, path: str, body: dict[str, Any],
            headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{neuron.url}{path}", json={**body, "stream": True},
                      headers=headers, timeout=120) as reply:
        assert reply.status_code == 200, reply.read()
        lines = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# --- usage ---------------------------------------------------------------------------------

def test_a_stream_carries_no_usage_unless_asked(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                 max_tokens=3, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no extra empty-choices chunk
    assert chunks[-1].choices[0].finish_reason is not None


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_usage_asked_for_comes_once_on_an_extra_last_chunk(neuron: NeuronProcess,
                                                           path: str) -> None:
    body = {"model": "tiny", "max_tokens": 3, "stream_options": {"include_usage": True},
            **({"messages": MESSAGES} if "chat" in path else {"prompt": PROMPT})}
    frames = _frames(neuron, path, body)
    *rest, last = frames
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 3
    assert all("usage" in frame and frame["usage"] is None for frame in rest)
    assert rest[-1]["choices"][0]["finish_reason"] == "length"


def test_the_sdk_reads_the_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=3, stream=True,
        stream_options={"include_usage": True}))
    assert [chunk.usage is not None for chunk in chunks].count(True) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].choices == []


@pytest.mark.parametrize("asked", [False, True])
def test_a_gateway_that_asks_gets_usage_on_the_finish_chunk(neuron: NeuronProcess,
                                                            asked: bool) -> None:
    """`x-cortex-usage: finish`: the gateway reads the counts off the finish chunk
    whatever its client asked (transitional; docs/neuron.md)."""
    body: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 3}
    if asked:
        body["stream_options"] = {"include_usage": True}
    frames = _frames(neuron, "/v1/chat/completions", body, {"x-cortex-usage": "finish"})
    finish = next(f for f in frames if f["choices"] and f["choices"][0]["finish_reason"])
    assert finish["usage"]["completion_tokens"] == 3
    assert [f["choices"] == [] for f in frames].count(True) == int(asked)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_gateway_that_asks_gets_the_prompts_usage_before_any_content(
        neuron: NeuronProcess, path: str) -> None:
    """`stream_options.prompt_usage` (cortex's, which only its gateway sets): one chunk
    with no choices and the prompt's counts once the prompt holds a slot, before any
    text, and the same counts as the end's; a second run finds the prompt cached."""
    body: dict[str, Any] = {
        "model": "tiny", "max_tokens": 3,
        "stream_options": {"include_usage": True, "prompt_usage": True},
        **({"messages": MESSAGES} if "chat" in path else {"prompt": PROMPT})}
    tokenize = {"messages": MESSAGES} if "chat" in path else {"text": PROMPT}
    count = httpx.post(f"{neuron.url}/tokenize", json={"model": "tiny", **tokenize}).json()
    for run in range(2):
        frames = _frames(neuron, path, body)
        early = [i for i, f in enumerate(frames) if f["choices"] == []]
        assert len(early) == 2 and early[-1] == len(frames) - 1  # and the usual last one
        first, last = frames[early[0]]["usage"], frames[-1]["usage"]
        assert all(f["choices"][0].get("text", f["choices"][0].get("delta", {}).get(
            "content")) in ("", None) for f in frames[:early[0]])
        assert first["prompt_tokens"] == last["prompt_tokens"] == count["count"]
        assert first["completion_tokens"] == 0 and last["completion_tokens"] == 3
        cached = first["prompt_tokens_details"]["cached_tokens"]
        assert cached == last["prompt_tokens_details"]["cached_tokens"]
        if run == 1:  # the same prompt again: all but its last token reused
            assert cached == count["count"] - 1


# --- why `length` ----------------------------------------------------------------------------

@pytest.mark.parametrize(("max_tokens", "cause"), [(2, "max_tokens"), (400, "context"),
                                                   (None, "context")])
def test_a_length_finish_says_what_cut_it(client: openai.OpenAI, full: str,
                                          max_tokens: int | None, cause: str) -> None:
    extra: Any = {"ignore_eos": True}
    messages: Any = [{"role": "user", "content": full}]
    reply = client.chat.completions.create(model="tiny", messages=messages,
                                           max_tokens=max_tokens, extra_body=extra)
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert reply.model_extra is not None
    assert (choice.model_extra or {})["stop_cause"] == cause
    assert reply.usage is not None
    if cause == "context":  # the slot's every cell is used
        assert reply.usage.total_tokens == N_CTX
    else:
        assert reply.usage.completion_tokens == max_tokens
    chunks = list(client.chat.completions.create(model="tiny", messages=messages,
                                                 max_tokens=max_tokens, stream=True,
                                                 extra_body=extra))
    last = chunks[-1].choices[0]
    assert last.finish_reason == "length" and (last.model_extra or {})["stop_cause"] == cause
    assert not any((c.choices[0].model_extra or {}).get("stop_cause") for c in chunks[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_a_text_completion_cut_by_the_context_says_so(neuron: NeuronProcess, full: str,
                                                      stream: bool) -> None:
    body = {"model": "tiny", "prompt": full, "max_tokens": 400, "ignore_eos": True}
    if stream:
        choice = _frames(neuron, "/v1/completions", body)[-1]["choices"][0]
    else:
        reply = httpx.post(f"{neuron.url}/v1/completions", json=body, timeout=120)
        choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "length" and choice["stop_cause"] == "context"


def test_a_natural_stop_has_no_cause(client: openai.OpenAI) -> None:
    # Greedy: a sampled reply could run 30 tokens without a space or newline (seen once).
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30,
                                           stop=["\n", " "], temperature=0)
    assert reply.choices[0].finish_reason == "stop"
    assert "stop_cause" not in (reply.choices[0].model_extra or {})


@pytest.mark.parametrize("asked", [None, 7])
def test_a_default_budget_holds_only_when_the_client_sets_none(
        client: openai.OpenAI, asked: int | None) -> None:
    """`default_max_tokens` is a default, not a cap: a request with no budget stops there
    (`length`, cut by max_tokens), one that asks for more gets it (chat and text)."""
    extra: Any = {"ignore_eos": True}  # the model may not stop on its own first
    chat = client.chat.completions.create(model="budgeted", messages=MESSAGES,
                                          max_tokens=asked, extra_body=extra)
    text = client.completions.create(model="budgeted", prompt=PROMPT, max_tokens=asked,
                                     extra_body=extra)
    for reply, choice in ((chat, chat.choices[0]), (text, text.choices[0])):
        assert reply.usage is not None
        assert reply.usage.completion_tokens == (asked or 4)
        assert choice.finish_reason == "length"
        assert (choice.model_extra or {})["stop_cause"] == "max_tokens"
