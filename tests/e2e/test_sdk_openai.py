"""The official `openai` SDK against a real gateway and a real neuron running the bundled
Gemma: chat (whole and streamed), completions, models and errors, with the Anthropic
dialect mounted beside it (the two share `/v1/models`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from ..conftest import NeuronProcess
from ..gateway_support import profile, running_gateway

pytestmark = [pytest.mark.model, pytest.mark.anyio]

MODEL = "org/gemma"  # a `/` in the id: openai 3.x sends it as %2F
HELLO = [{"role": "user", "content": "Write a short story about a cat."}]



@pytest.fixture
async def client(neuron: NeuronProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with running_gateway([("a", neuron)], [profile(MODEL, aliases=["gemma"])]) as gw:
        sdk = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0,
                                 timeout=120)
        try:
            yield sdk
        finally:
            await sdk.close()


async def test_chat_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(model="gemma", messages=HELLO,  # type: ignore[arg-type]
                                                 max_tokens=8, temperature=0)
    assert whole.object == "chat.completion" and whole.id and isinstance(whole.created, int)
    choice = whole.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and choice.message.content
    usage = whole.usage
    assert usage is not None and usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    stream = await client.chat.completions.create(
        model="gemma", messages=HELLO, max_tokens=8, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens


async def test_completions(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model=MODEL, prompt="Once upon a time",
                                            max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.choices[0].finish_reason in ("stop", "length")
    stream = await client.completions.create(model=MODEL, prompt="Once upon a time",
                                             max_tokens=6, temperature=0, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "text_completion" for chunk in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


async def test_models_in_the_openai_shape(client: openai.AsyncOpenAI) -> None:
    listed = [m async for m in client.models.list()]
    assert [m.id for m in listed] == [MODEL]
    assert listed[0].object == "model" and isinstance(listed[0].created, int)
    assert isinstance(listed[0].owned_by, str)
    assert (await client.models.retrieve(MODEL)).id == MODEL  # sent as org%2Fgemma
    assert (await client.models.retrieve("gemma")).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_errors_in_the_openai_envelope(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="nope", messages=HELLO)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    long = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 600}]
    with pytest.raises(openai.BadRequestError) as overflow:
        await client.chat.completions.create(model="gemma", messages=long)  # type: ignore[arg-type]
    assert overflow.value.code == "context_length_exceeded"


async def test_what_is_not_served_is_refused_naming_the_field(
        client: openai.AsyncOpenAI) -> None:
    """A field set expects an effect: no silent 200 that ignored it."""
    image = [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    asks: list[tuple[str, dict[str, object]]] = [
        ("n", {"n": 2}), ("logprobs", {"logprobs": True, "top_logprobs": 2}),
        ("messages[0].content[1]", {"messages": image})]
    for param, extra in asks:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(**{  # type: ignore[call-overload]
                "model": "gemma", "messages": HELLO, "max_tokens": 2, **extra})
        assert refused.value.param == param, refused.value.body
        assert refused.value.type == "invalid_request_error"
    for param, extra in [("n", {"n": 3}), ("suffix", {"suffix": "The end."}),
                         ("echo", {"echo": True, "prompt": [2, 9259]})]:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.completions.create(**{  # type: ignore[call-overload]
                "model": "gemma", "prompt": "Once", "max_tokens": 2, **extra})
        assert refused.value.param == param, refused.value.body
