"""The official `ollama` Python client against a real gateway: chat, generate, embed,
tags, ps, show, pull, streaming, keep_alive and errors.

Replies come from a real neuron running the bundled Gemma, greedy (temperature 0) so
a request asked twice answers the same. Where the point is the protocol rather than a
model (a tool call on cue, embeddings, a load slow enough to watch), a second neuron
runs the synthetic harness: a model that small does not call tools when asked, and
Gemma's embeddings take seconds an input on CPU.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import ollama
import pytest

from cortex import ModelProfile

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, profile, running_gateway, wait_until

pytestmark = [pytest.mark.anyio]

MODEL = "gemma"
GREEDY = {"temperature": 0, "num_predict": 12}
HELLO = [{"role": "user", "content": "Write a short story about a cat."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    """A neuron whose synthetic model calls get_weather, then answers in words."""
    process = NeuronProcess({"name": "s", "memory_budget": "8GiB", "harness": {"synthetic": {
        "script": [{"tool": "get_weather", "arguments": {"city": "Paris"}},
                   {"text": "It is sunny in Paris."}]}}},
        tmp_path_factory.mktemp("neuron-s"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def synthetic(model_id: str, **fields: Any) -> ModelProfile:
    fields.setdefault("source", "synthetic:rate=0,bytes=1GiB")
    fields.setdefault("neurons", ["s"])
    return ModelProfile(id=model_id, harness="synthetic", n_ctx=4096, **fields)


@pytest.fixture
async def gw(neuron: NeuronProcess, scripted: NeuronProcess) -> AsyncIterator[RunningGateway]:
    profiles = [profile(MODEL, aliases=["gemma3"], neurons=["a"]), synthetic("tools"),
                synthetic("emb", embeddings=True),
                synthetic("slow", source="synthetic:rate=0,bytes=1GiB,load_ms=1500"),
                synthetic("late", source="synthetic:rate=0,bytes=1GiB,ttft_ms=1000")]
    async with running_gateway([("a", neuron), ("s", scripted)], profiles) as gateway:
        await until(lambda: all(n.up for n in gateway.placer.snapshot().nodes),
                    "both neurons are up")
        yield gateway


@pytest.fixture
def client(gw: RunningGateway) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=gw.url, timeout=120)


def loaded(gw: RunningGateway, model: str) -> bool:
    return any(m.ready for _, m in gw.placer.snapshot().placements_of(model))


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    async def check() -> bool:
        return condition()

    await wait_until(check, timeout=timeout, what=what)


# --- the catalogue -------------------------------------------------------------------------

async def test_version_tags_and_show(client: ollama.AsyncClient, gw: RunningGateway) -> None:
    assert (await gw.client.get(f"{gw.url}/api/version")).json() == {"version": "0.13.5"}
    names = [m.model for m in (await client.list()).models]
    assert names[:2] == [MODEL, "gemma3"] and {"tools", "emb", "slow"} <= set(names)
    shown = await client.show(MODEL)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None and shown.modelinfo["cortex.context_length"] == 2048
    assert (await client.show("emb")).capabilities == ["embedding"]


async def test_the_root_says_ollama_is_running(gw: RunningGateway) -> None:
    """The `ollama` CLI sends `HEAD /` before every command (its heartbeat) and stops
    with "could not connect" on anything but a 2xx; tools that probe a server `GET /`
    and read this sentence."""
    head = await gw.client.head(f"{gw.url}/")
    got = await gw.client.get(f"{gw.url}/")
    assert head.status_code == got.status_code == 200
    assert got.text == "Ollama is running"


async def test_latest_tag_names_the_model(client: ollama.AsyncClient) -> None:
    shown = await client.show(f"{MODEL}:latest")
    assert shown.parameters == "num_ctx 2048"


async def test_unknown_model_is_404(client: ollama.AsyncClient, gw: RunningGateway) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="nope", messages=HELLO)
    assert caught.value.status_code == 404 and "nope" in caught.value.error
    # Ollama's envelope, on unknown routes under /api/ too: {"error": "<a sentence>"}.
    for path in ("/api/chat", "/api/nothing"):
        answer = await gw.client.post(f"{gw.url}{path}", json={"model": "nope"})
        body = answer.json()
        assert answer.status_code == 404 and list(body) == ["error"]
        assert isinstance(body["error"], str)


# --- chat and generate ---------------------------------------------------------------------

async def test_chat_whole_and_streamed_agree(client: ollama.AsyncClient,
                                             gw: RunningGateway) -> None:
    whole = await client.chat(model=MODEL, messages=HELLO, options=GREEDY)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.done and whole.done_reason == "length"
    assert whole.eval_count == 12 and (whole.prompt_eval_count or 0) > 5
    assert (whole.total_duration or 0) >= (whole.eval_duration or 0) > 0
    parts = [part async for part in await client.chat(model=MODEL, messages=HELLO,
                                                      options=GREEDY, stream=True)]
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    last = parts[-1]
    assert (last.eval_count, last.prompt_eval_count) == (12, whole.prompt_eval_count)
    assert last.eval_duration and last.prompt_eval_duration and last.total_duration
    assert last.total_duration >= last.eval_duration + last.prompt_eval_duration
    assert [r.dialect for r in gw.recorder.records] == ["ollama", "ollama"]


async def test_generate_whole_and_streamed(client: ollama.AsyncClient) -> None:
    whole = await client.generate(model=MODEL, prompt="Why is the sky blue?",
                                  options=GREEDY)
    assert whole.response and whole.done and whole.eval_count == 12
    parts = [p async for p in await client.generate(model=MODEL, prompt="Why is the sky blue?",
                                                    options=GREEDY, stream=True)]
    assert "".join(p.response or "" for p in parts) == whole.response
    raw = await client.generate(model=MODEL, prompt="The capital of France is",
                                raw=True, options=GREEDY)
    assert raw.response and raw.eval_count == 12


async def test_num_predict_and_stop(client: ollama.AsyncClient) -> None:
    short = await client.chat(model=MODEL, messages=HELLO,
                              options={"temperature": 0, "num_predict": 3})
    assert (short.eval_count, short.done_reason) == (3, "length")
    whole = await client.chat(model=MODEL, messages=HELLO, options=GREEDY)
    word = next(w for w in (whole.message.content or "").split()[1:] if len(w) > 3)
    cut = await client.chat(model=MODEL, messages=HELLO,
                            options={**GREEDY, "stop": [word]})
    assert word not in (cut.message.content or "") and cut.done_reason == "stop"


async def test_a_conversation_over_the_context_loses_its_oldest_turns(
        client: ollama.AsyncClient, gw: RunningGateway) -> None:
    """As Ollama (`truncate` defaults to true): a chat longer than the model's context
    (2,048 tokens here) is answered from its system prompt and latest turns, not
    refused; `truncate: false` refuses it (the client has no field for that: raw)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
    for turn in range(40):
        messages += [{"role": "user", "content": f"Question {turn}: " + "why " * 30},
                     {"role": "assistant", "content": "Because. " * 10}]
    messages.append({"role": "user", "content": "And the sky?"})
    reply = await client.chat(model=MODEL, messages=messages,
                              options={"temperature": 0, "num_predict": 2})
    assert reply.done and 2048 // 2 < (reply.prompt_eval_count or 0) < 2048
    refused = await gw.client.post(f"{gw.url}/api/chat", json={
        "model": MODEL, "messages": messages, "truncate": False, "stream": False})
    assert refused.status_code == 400 and "prompt is too long" in refused.json()["error"]


async def test_format_schema_is_enforced(client: ollama.AsyncClient) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}},
              "required": ["age"]}
    reply = await client.chat(model=MODEL, format=schema, options={"temperature": 0},
                              messages=[{"role": "user", "content": "Ollama is 22. JSON?"}])
    assert isinstance(json.loads(reply.message.content or "")["age"], int)


async def test_a_tool_round_trip(client: ollama.AsyncClient) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.chat(model="tools", messages=messages, tools=[WEATHER])
    calls = first.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    messages += [first.message, {"role": "tool", "tool_name": "get_weather",
                                 "content": "sunny"}]
    parts = [p async for p in await client.chat(model="tools", messages=messages,
                                                tools=[WEATHER], stream=True)]
    assert "".join(p.message.content or "" for p in parts) == "It is sunny in Paris."
    streamed = [p async for p in await client.chat(model="tools", tools=[WEATHER],
                                                   messages=messages[:1], stream=True)]
    assert [c.function.name for p in streamed for c in p.message.tool_calls or []] == [
        "get_weather"]


async def test_tool_calls_carry_ids_a_client_may_answer_by(gw: RunningGateway) -> None:
    """Ollama gives each call an `id`; Open WebUI sends it back as the result's
    `tool_call_id` (the `ollama` Python client has no field for either, so raw HTTP)."""
    ask: dict[str, Any] = {"model": "tools", "stream": False, "tools": [WEATHER],
                           "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    first = (await gw.client.post(f"{gw.url}/api/chat", json=ask)).json()["message"]
    [call] = first["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    ask["messages"] += [first, {"role": "tool", "tool_call_id": call["id"],
                                "content": "sunny"}]
    answer = await gw.client.post(f"{gw.url}/api/chat", json=ask)
    assert answer.json()["message"]["content"] == "It is sunny in Paris."


# --- thinking ------------------------------------------------------------------------------

REASONING = "Two and two make four."


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NeuronProcess]:
    """A neuron whose synthetic model reasons before it answers. No model here returns
    its reasoning apart from its answer (the bundled Gemma does not reason), so the
    harness's `reasoning` option stands in for a thinking model: the point is how the
    reasoning reaches the client, not what a model thinks."""
    process = NeuronProcess({"name": "t", "memory_budget": "8GiB", "harness": {"synthetic": {
        "rate": 0, "reasoning": REASONING, "script": [{"text": "It is 4."}]}}},
        tmp_path_factory.mktemp("neuron-t"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


async def test_thinking_is_shown_unless_think_is_false(thinker: NeuronProcess) -> None:
    """Ollama shows a thinking model's reasoning by default, in `message.thinking` (chat)
    or `thinking` (generate), streamed in parts of its own before the answer; `think:
    false` hides it (its tokens still count). A level is `true` here: the models take
    no effort level. (The script answers requests that offer tools, hence WEATHER.)"""
    ask = {"model": "thinks", "tools": [WEATHER],
           "messages": [{"role": "user", "content": "2+2?"}]}
    async with running_gateway([("t", thinker)], [synthetic("thinks", neurons=["t"])]) as gw:
        client = ollama.AsyncClient(host=gw.url, timeout=60)
        for think in (None, True, "high"):
            shown = await client.chat(**ask, think=think)
            assert (shown.message.thinking, shown.message.content) == (REASONING, "It is 4.")
        hidden = await client.chat(**ask, think=False)
        assert (hidden.message.thinking, hidden.message.content) == (None, "It is 4.")
        assert hidden.eval_count == shown.eval_count == 5 + 3

        parts = [p async for p in await client.chat(**ask, stream=True)]
        thought = [p.message.thinking for p in parts if p.message.thinking]
        assert "".join(thought) == REASONING and len(thought) == 5
        first = next(i for i, p in enumerate(parts) if p.message.content)
        assert all(not p.message.content for p in parts[:first])
        assert not any(p.message.thinking for p in parts[first:])
        assert "".join(p.message.content or "" for p in parts) == "It is 4."
        quiet = [p async for p in await client.chat(**ask, stream=True, think=False)]
        assert not any(p.message.thinking for p in quiet)
        assert "".join(p.message.content or "" for p in quiet) == "It is 4."

        generated = await client.generate(model="thinks", prompt="2+2?",
                                          options={"num_predict": 8})
        assert generated.thinking == REASONING and len(generated.response.split()) == 3
        plain = await client.generate(model="thinks", prompt="2+2?", think=False,
                                      options={"num_predict": 8})
        assert plain.thinking is None and plain.response == generated.response
        streamed = [p async for p in await client.generate(
            model="thinks", prompt="2+2?", stream=True, options={"num_predict": 8})]
        assert "".join(p.thinking or "" for p in streamed) == REASONING


async def test_a_model_that_does_not_reason_has_no_thinking(
        client: ollama.AsyncClient) -> None:
    """`think` on a model with no separate reasoning (the bundled Gemma) is not the 400
    Ollama gives a model it knows cannot think: the gateway cannot know a profile's
    model never reasons, so the answer simply has none."""
    reply = await client.chat(model=MODEL, messages=HELLO, options=GREEDY, think=True)
    assert reply.message.content and reply.message.thinking is None
    parts = [p async for p in await client.generate(model=MODEL, prompt="Hi", think="low",
                                                    options=GREEDY, stream=True)]
    assert parts[-1].done and not any(p.thinking for p in parts)
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model=MODEL, messages=HELLO, think="extreme")  # type: ignore[arg-type]
    assert caught.value.status_code == 400 and "think" in caught.value.error


# --- embeddings ----------------------------------------------------------------------------

async def test_embed_and_legacy_embeddings(client: ollama.AsyncClient) -> None:
    both = await client.embed(model="emb", input=["hello", "world"])
    assert len(both.embeddings) == 2 and len(both.embeddings[0]) > 8
    assert both.embeddings[0] != both.embeddings[1]
    one = await client.embeddings(model="emb", prompt="hello")
    assert list(one.embedding) == pytest.approx(list(both.embeddings[0]))
    second = await client.embed(model="emb", input="world")
    assert list(second.embeddings[0]) == pytest.approx(list(both.embeddings[1]))


async def test_embed_truncates_an_input_over_the_context_unless_told_not_to(
        client: ollama.AsyncClient) -> None:
    """Ollama cuts an over-long input to fit by default; `truncate: false` and the legacy
    route refuse it. The synthetic model counts a word as a token (context 4,096), so
    the cut input is known exactly: its first 4,095 words."""
    long = "word " * 5000 + "end"
    cut = await client.embed(model="emb", input=[long, "hello"])
    fits = await client.embed(model="emb", input=[" ".join(["word"] * 4095), "hello"])
    assert cut.embeddings == fits.embeddings and cut.prompt_eval_count == 4095 + 1
    for refused in (client.embed(model="emb", input=long, truncate=False),
                    client.embeddings(model="emb", prompt=long)):
        with pytest.raises(ollama.ResponseError) as caught:
            await refused
        assert caught.value.status_code == 400
        assert "the input length exceeds the context length" in caught.value.error
    assert (await client.embeddings(model="emb", prompt="")).embedding == []  # a load


async def test_embed_dimensions_cut_a_longer_vector_only(client: ollama.AsyncClient) -> None:
    whole = (await client.embed(model="emb", input="hello")).embeddings[0]
    short = (await client.embed(model="emb", input="hello", dimensions=8)).embeddings[0]
    norm = sum(x * x for x in whole[:8]) ** 0.5
    assert short == pytest.approx([x / norm for x in whole[:8]])
    # More than the model has is the whole vector, as Ollama answers, not an error.
    assert (await client.embed(model="emb", input="hello",
                               dimensions=len(whole) + 1)).embeddings[0] == whole


# --- pull, ps and keep_alive ---------------------------------------------------------------

async def test_pull_streams_the_load_and_ps_shows_it(client: ollama.AsyncClient,
                                                     gw: RunningGateway) -> None:
    assert "slow" not in [m.model for m in (await client.ps()).models]
    steps = [step async for step in await client.pull("slow", stream=True)]
    assert steps[-1].status == "success"
    progress = [s for s in steps if s.total]
    assert progress and all(0 <= (s.completed or 0) <= (s.total or 0) for s in progress)
    running = {m.model: m for m in (await client.ps()).models}
    assert running["slow"].size == running["slow"].size_vram == progress[0].total
    assert loaded(gw, "slow")


async def test_pull_of_an_unknown_model_is_404(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client.pull("gpt-oss:20b")
    assert caught.value.status_code == 404


async def test_keep_alive_zero_unloads_after_the_answer(client: ollama.AsyncClient,
                                                        gw: RunningGateway) -> None:
    await client.chat(model="tools", messages=[])  # Ollama's way to load
    assert loaded(gw, "tools")
    reply = await client.chat(model="tools", messages=HELLO, keep_alive=0)
    assert reply.message.content
    await until(lambda: not loaded(gw, "tools"), "the model is unloaded")
    again = await client.generate(model="tools", prompt="hi")  # loaded first, and timed
    assert again.load_duration and again.total_duration
    assert again.total_duration >= again.load_duration > 0
    unloaded = await client.generate(model="tools", prompt="", keep_alive=0)
    assert (unloaded.done, unloaded.done_reason) == (True, "unload")
    assert not loaded(gw, "tools")  # at once: Ollama's unload answers when it is done


async def test_keep_alive_sets_the_idle_ttl(client: ollama.AsyncClient,
                                            gw: RunningGateway) -> None:
    await client.chat(model="tools", messages=HELLO, keep_alive="10m")
    assert gw.live.profiles.resolve("tools").ttl == 600
    await client.generate(model="tools", prompt="hi", keep_alive=-1)
    assert gw.live.profiles.resolve("tools").ttl is None
    await client.generate(model="tools", prompt="hi", keep_alive=0.05)
    await until(lambda: not loaded(gw, "tools"), "the idle TTL unloads the model")


async def test_a_stream_waiting_for_its_first_token_sends_empty_lines(
        client: ollama.AsyncClient) -> None:
    """While the model prefills (here 1 s, keepalive_interval 0.2 s) the stream sends
    lines with no text, which the client reads as parts like any other (a blank line or
    an SSE comment would fail its JSON parse)."""
    await client.chat(model="late", messages=[])  # loaded, so only the prefill waits
    parts = [p async for p in await client.chat(model="late", messages=HELLO, stream=True)]
    waiting = [p for p in parts if not p.done and not p.message.content]
    assert len(waiting) >= 2 and parts[-1].done
    whole = await client.chat(model="late", messages=HELLO)
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


async def test_a_keys_model_allow_list_holds_for_pull_and_keep_alive(
        neuron: NeuronProcess, scripted: NeuronProcess) -> None:
    """A key limited to one model sees only it, and may not load, unload or keep another
    through the Ollama routes either, whether or not that model is loaded already."""
    auth = {"keys": [{"key": "team-a", "models": ["tools"]}, {"key": "ops"}]}
    async with running_gateway([("s", scripted)], [synthetic("tools"), synthetic("slow")],
                               auth=auth) as gateway:
        ops = ollama.AsyncClient(host=gateway.url, headers={"authorization": "Bearer ops"})
        assert (await ops.pull("slow")).status == "success"
        keyed = ollama.AsyncClient(host=gateway.url, headers={"authorization": "Bearer team-a"})
        for call in (keyed.pull("slow"), keyed.chat(model="slow", messages=[]),
                     keyed.chat(model="slow", messages=[], keep_alive=0),
                     keyed.chat(model="slow", messages=HELLO, keep_alive="1h")):
            with pytest.raises(ollama.ResponseError) as caught:
                await call
            assert caught.value.status_code == 404  # its catalogue has no such model
        assert [m.model for m in (await keyed.list()).models] == ["tools"]
        assert "slow" not in [m.model for m in (await keyed.ps()).models]
        assert gateway.live.profiles.resolve("slow").ttl is None
        assert loaded(gateway, "slow")
        assert (await keyed.chat(model="tools", messages=HELLO)).message.content
        with pytest.raises(ollama.ResponseError) as refused:
            await ollama.AsyncClient(host=gateway.url).list()
        assert refused.value.status_code == 401


async def test_a_neurons_own_preload_is_served_where_it_is_loaded(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A model a neuron loaded itself, with no profile in the gateway, is listed and
    served where it is (the gateway cannot load it anywhere else)."""
    process = NeuronProcess({"name": "p", "memory_budget": "8GiB", "preload": [
        {"id": "pre", "harness": "synthetic", "source": "synthetic:rate=0"}]},
        tmp_path_factory.mktemp("neuron-p"))
    try:
        process.wait_ready()
        async with running_gateway([("p", process)], []) as gateway:
            client = ollama.AsyncClient(host=gateway.url)
            await until(lambda: loaded(gateway, "pre"), "the preload is seen")
            assert [m.model for m in (await client.ps()).models] == ["pre"]
            assert (await client.chat(model="pre", messages=HELLO)).message.content
            assert (await client.pull("pre")).status == "success"
    finally:
        process.stop()


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("options, words", [({"num_ctx": 0}, "num_ctx"),
                                            ({"top_p": 2}, "top_p")])
async def test_bad_options_are_400_in_ollamas_shape(client: ollama.AsyncClient,
                                                    options: dict[str, Any],
                                                    words: str) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model=MODEL, messages=HELLO, options=options)
    assert caught.value.status_code == 400 and words in caught.value.error


async def test_a_num_ctx_over_the_profiles_context_is_served(
        client: ollama.AsyncClient) -> None:
    """Continue sends its own context length with every request: a num_ctx over the
    profile's n_ctx is served by the profile's context, as Ollama caps one over a
    model's length (it answered 400 before)."""
    reply = await client.chat(model=MODEL, messages=HELLO,
                              options={**GREEDY, "num_ctx": 100_000})
    assert reply.done and reply.message.content


async def test_model_store_routes_say_they_are_not_supported(
        client: ollama.AsyncClient) -> None:
    for call in (client.delete(MODEL), client.copy(MODEL, "other"),
                 client.create(model="x", from_=MODEL)):
        with pytest.raises(ollama.ResponseError) as caught:
            await call
        assert caught.value.status_code == 501
        assert "not supported by this gateway" in caught.value.error
