"""The official `anthropic` SDK against a real gateway and a real neuron running the
bundled Gemma: messages (whole and streamed), stop reasons, usage, count_tokens,
errors, auth headers, `?beta=true` and `/v1/models` (api-conformance §11 D to G).

One neuron serves the module; each test runs its own in-process gateway. Replies are
greedy (temperature 0), so a request asked twice answers the same text."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import httpx
import msgspec
import pytest

from cortex_plugins.anthropic.request import to_tokenize
from cortex_plugins.anthropic.types import decode_count_tokens_request

from ..conftest import NeuronProcess
from ..gateway_support import RunningGateway, profile, reset, running_gateway, sse_lines

pytestmark = [pytest.mark.model, pytest.mark.anyio,
              # The SDK warns about retired Claude names; here they are only aliases.
              pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")]

MODEL = "gemma"
ALIASES = ["claude-3-5-haiku-latest", "claude-sonnet-4-5"]
STOP_REASONS = {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                "model_context_window_exceeded"}
HELLO = [{"role": "user", "content": "Write a short story about a cat."}]
# This SDK has no `temperature` argument any more; the API still takes the field.
GREEDY = {"temperature": 0}



@pytest.fixture
async def gw(neuron: NeuronProcess) -> AsyncIterator[RunningGateway]:
    async with running_gateway([("a", neuron)], [profile(MODEL, aliases=ALIASES)],
                               keepalive_interval=5.0) as gateway:
        yield gateway


@pytest.fixture
async def sdk(gw: RunningGateway) -> AsyncIterator[Callable[..., anthropic.AsyncAnthropic]]:
    """Factory for SDK clients on the gateway, closed before the test's event loop ends."""
    made: list[anthropic.AsyncAnthropic] = []

    def make(**kwargs: Any) -> anthropic.AsyncAnthropic:
        kwargs.setdefault("api_key", "any-key")
        made.append(anthropic.AsyncAnthropic(base_url=gw.url, max_retries=0, timeout=120,
                                             **kwargs))
        return made[-1]

    yield make
    for client in made:
        await client.close()


SDK = Callable[..., anthropic.AsyncAnthropic]


async def create(client: anthropic.AsyncAnthropic, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("max_tokens", 24)
    kwargs.setdefault("messages", HELLO)
    return await client.messages.create(extra_body=GREEDY, **kwargs)


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


# --- messages ------------------------------------------------------------------------------

async def test_a_whole_reply_has_the_message_shape(sdk: SDK, gw: RunningGateway) -> None:
    message = await create(sdk(), model=ALIASES[1])
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant"
    assert message.model == ALIASES[1]  # the name asked for, not the profile id
    assert message.stop_reason in STOP_REASONS and message.stop_sequence is None
    assert [b.type for b in message.content] == ["text"] and text_of(message).strip()
    assert message.usage.input_tokens > 0 and 1 <= message.usage.output_tokens <= 24
    assert message._request_id  # the `request-id` header


async def test_the_stream_agrees_with_the_whole_reply(sdk: SDK, gw: RunningGateway) -> None:
    client = sdk()
    whole = await create(client, max_tokens=16)
    async with client.messages.stream(model=MODEL, max_tokens=16, messages=HELLO,
                                      extra_body=GREEDY) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == text_of(final) == text_of(whole)
    assert final.stop_reason == whole.stop_reason == "max_tokens"
    assert final.id.startswith("msg_") and final.model == MODEL
    assert final.usage.output_tokens == whole.usage.output_tokens <= 16
    assert final.usage.input_tokens > 0


async def test_stream_wire_format(gw: RunningGateway) -> None:
    async with gw.client.stream("POST", "/v1/messages", json={
            "model": MODEL, "max_tokens": 8, "stream": True, "messages": HELLO}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in reply.headers
        await reply.aread()
    lines = sse_lines(reply.text)
    while lines[0].startswith(":"):  # keep-alives, if the first token took a while
        lines.pop(0)
    assert not any(line.startswith(":") for line in lines)  # none after message_start
    events = list(zip(lines[::2], lines[1::2], strict=True))
    for event, data in events:
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == event[7:]
    names = [event[7:] for event, _ in events if event != "event: ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "data: [DONE]" not in reply.text


async def test_message_start_tells_the_prompt_as_the_whole_reply_does(
        sdk: SDK, gw: RunningGateway) -> None:
    """message_start's usage is the prompt's, before any text: input_tokens the uncached
    part, cache_read_input_tokens the part the neuron's KV cache held, as the whole reply
    for the same request says (its prefix cached the same way: asked once before both),
    as message_delta says at the end, and together count_tokens' count."""
    client = sdk()
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 4, "messages": HELLO,
                            "system": "Be brief."}
    counted = await client.messages.count_tokens(model=MODEL, messages=HELLO,
                                                 system="Be brief.")
    await create(client, **body)  # from here on the prompt is in the KV cache
    whole = (await create(client, **body)).usage
    started: list[anthropic.types.Usage] = []
    async with client.messages.stream(extra_body=GREEDY, **body) as stream:
        async for event in stream:
            if event.type == "message_start":
                started.append(event.message.usage)
        final = (await stream.get_final_message()).usage
    assert len(started) == 1 and started[0].output_tokens == 0
    usage = started[0]
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (
        whole.input_tokens, whole.cache_read_input_tokens)
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (
        final.input_tokens, final.cache_read_input_tokens)
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == counted.input_tokens
    assert usage.input_tokens >= 1 and (usage.cache_read_input_tokens or 0) > 0


async def test_max_tokens_reads_max_tokens(sdk: SDK, gw: RunningGateway) -> None:
    message = await create(sdk(), max_tokens=5)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens <= 5


async def test_a_stop_sequence_is_cut_and_reported(sdk: SDK, gw: RunningGateway) -> None:
    client = sdk()
    free = text_of(await create(client, max_tokens=40))
    words = re.findall(r"[A-Za-z]{4,}", free)
    assert len(words) >= 3, free
    stop = words[2]  # greedy decoding writes the same text again, up to this word
    head = free[:free.index(stop)]

    whole = await create(client, max_tokens=40, stop_sequences=[stop, "NEVER-SEEN"])
    assert (whole.stop_reason, whole.stop_sequence) == ("stop_sequence", stop)
    assert text_of(whole) == head and stop not in text_of(whole)

    async with client.messages.stream(model=MODEL, max_tokens=40, messages=HELLO,
                                      extra_body=GREEDY, stop_sequences=[stop]) as stream:
        final = await stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    assert text_of(final) == head


async def test_system_as_a_string_and_as_blocks(sdk: SDK, gw: RunningGateway) -> None:
    client = sdk()
    as_string = await create(client, system="You are terse.\n\nAnswer in French.")
    blocks = [{"type": "text", "text": "You are terse."},
              {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}]
    as_blocks = await create(client, system=blocks)
    # The blocks join into the same one leading system message: the same prompt.
    assert as_string.usage.input_tokens + as_string.usage.cache_read_input_tokens == \
        as_blocks.usage.input_tokens + as_blocks.usage.cache_read_input_tokens
    assert text_of(as_string) == text_of(as_blocks)
    bare = await create(client)
    assert bare.usage.input_tokens + bare.usage.cache_read_input_tokens < \
        as_string.usage.input_tokens + as_string.usage.cache_read_input_tokens


async def test_claude_codes_extra_fields_and_headers_are_accepted(gw: RunningGateway) -> None:
    body = {"model": ALIASES[0], "max_tokens": 4, "messages": HELLO,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; "
                        "cch=a5145;", "cache_control": {"type": "ephemeral", "scope": "s"}}],
            "context_management": {"edits": []}, "output_config": {"effort": "low"},
            "service_tier": "auto", "metadata": {"user_id": "u"},
            "thinking": {"type": "adaptive"}, "tools": []}
    headers = {"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
               "anthropic-version": "2023-06-01", "x-api-key": "k",
               "user-agent": "claude-cli/2.1.0 (external, cli)"}
    reply = await gw.client.post("/v1/messages?beta=true", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["type"] == "message"
    assert reply.headers["request-id"] and reply.headers["content-type"] == "application/json"


# --- count_tokens --------------------------------------------------------------------------

async def test_count_tokens_is_the_neurons_count_of_the_same_prompt(sdk: SDK,
        gw: RunningGateway, neuron: NeuronProcess) -> None:
    reset(neuron)  # nothing holds the model: counting loads it the usual way
    client = sdk()
    body: dict[str, Any] = {"model": ALIASES[0], "messages": HELLO, "system": "Be brief."}
    counted = await client.messages.count_tokens(**body)
    assert counted.input_tokens > 0

    # What the neuron itself counts for the translated conversation.
    tokenize = to_tokenize(decode_count_tokens_request(json.dumps(body).encode()), model=MODEL)
    async with httpx.AsyncClient(base_url=neuron.url, timeout=60) as direct:
        reply = await direct.post("/tokenize", content=msgspec.json.encode(tokenize))
    assert reply.status_code == 200, reply.text
    assert counted.input_tokens == reply.json()["count"]

    # ...and what /v1/messages reports as the prompt for the same body (§11 item 61).
    message = await create(client, **body)
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0) \
        + (usage.cache_creation_input_tokens or 0)

    longer = await client.messages.count_tokens(
        model=MODEL, system="Be brief.",
        messages=[*HELLO, {"role": "assistant", "content": "Once"},
                  {"role": "user", "content": "Go on."}])
    assert longer.input_tokens > counted.input_tokens


async def test_count_tokens_with_beta_query_and_raw_http(gw: RunningGateway) -> None:
    plain = await gw.client.post("/v1/messages/count_tokens",
                                 json={"model": MODEL, "messages": HELLO})
    beta = await gw.client.post("/v1/messages/count_tokens?beta=true",
                                json={"model": MODEL, "messages": HELLO})
    assert plain.status_code == beta.status_code == 200
    assert plain.json() == beta.json() and plain.json()["input_tokens"] > 0
    unknown = await gw.client.post("/v1/messages/count_tokens",
                                   json={"model": "claude-opus-9", "messages": HELLO})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"


# --- errors --------------------------------------------------------------------------------

async def test_unknown_model_is_404_not_found_naming_it(sdk: SDK, gw: RunningGateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await create(sdk(), model="claude-opus-4-1-20250805")
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "claude-opus-4-1-20250805" in body["error"]["message"]


@pytest.mark.parametrize("body", [
    b"{not json",
    json.dumps({"model": MODEL, "messages": HELLO}).encode(),  # no max_tokens
    json.dumps({"model": MODEL, "max_tokens": 5}).encode(),  # no messages
    json.dumps({"max_tokens": 5, "messages": HELLO}).encode(),  # no model
    json.dumps({"model": MODEL, "max_tokens": "many", "messages": HELLO}).encode(),
], ids=["malformed", "no-max-tokens", "no-messages", "no-model", "wrong-type"])
async def test_bad_bodies_are_400_invalid_request(gw: RunningGateway, body: bytes) -> None:
    reply = await gw.client.post("/v1/messages", content=body,
                                 headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["type"] == "error" and "detail" not in reply.json()
    assert reply.json()["error"]["type"] == "invalid_request_error"


async def test_bad_bodies_raise_bad_request_in_the_sdk(sdk: SDK, gw: RunningGateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk().messages.create(model=MODEL, max_tokens=0, messages=HELLO)
    assert "max_tokens" in str(caught.value)


async def test_a_too_long_prompt_speaks_claude_codes_words(sdk: SDK, gw: RunningGateway) -> None:
    long = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 600}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await create(sdk(), messages=long)
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 2048 maximum",
                        body["error"]["message"]), body


async def test_unknown_anthropic_route_is_404_in_the_anthropic_envelope(
        gw: RunningGateway) -> None:
    reply = await gw.client.post("/v1/messages/nonexistent", json={})
    assert reply.status_code == 404
    assert reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == "not_found_error"


# --- auth and version headers --------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer k", "anthropic-version": "2026-10-21"},  # SDK 2.x
    {"x-api-key": "k", "anthropic-version": "2023-06-01"},  # SDK 1.x, Claude Code
    {"X-Api-Key": "k", "Anthropic-Version": "2023-06-01", "Anthropic-Beta": "x"},  # Zed
    {},  # curl
], ids=["bearer", "x-api-key", "capitalised", "none"])
async def test_every_auth_form_and_version_is_accepted(gw: RunningGateway,
                                                       headers: dict[str, str]) -> None:
    for path in ("/v1/messages", "/v1/messages?beta=true"):
        reply = await gw.client.post(path, headers=headers, json={
            "model": MODEL, "max_tokens": 2, "messages": HELLO})
        assert reply.status_code == 200, (path, reply.text)
        assert reply.json()["type"] == "message"


async def test_the_sdk_with_x_api_key_or_an_auth_token(sdk: SDK, gw: RunningGateway) -> None:
    with_key = sdk(api_key=None, default_headers={"x-api-key": "k"})
    with_token = sdk(api_key=None, auth_token="t")
    for client in (with_key, with_token):
        assert (await create(client, max_tokens=2)).type == "message"


# --- /v1/models in both shapes -------------------------------------------------------------

async def test_models_in_the_anthropic_shape(sdk: SDK, gw: RunningGateway) -> None:
    for client in (sdk(), sdk(api_key=None, default_headers={"x-api-key": "k"})):
        listed = [m async for m in client.models.list()]  # ends: has_more is false
        assert [m.id for m in listed] == [MODEL, *ALIASES]
        assert all(m.type == "model" and m.display_name for m in listed)
        assert listed[0].created_at.year == 1970
        one = await client.models.retrieve(ALIASES[0])
        assert one.id == ALIASES[0] and MODEL in one.display_name
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.models.retrieve("claude-unknown")
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["error"]["type"] == "not_found_error"

    page = (await gw.client.get("/v1/models?limit=1",
                                headers={"anthropic-version": "2023-06-01"})).json()
    assert page == {"data": [page["data"][0]], "has_more": True, "first_id": MODEL,
                    "last_id": MODEL}
    rest = (await gw.client.get(f"/v1/models?after_id={MODEL}",
                                headers={"x-api-key": "k"})).json()
    assert [m["id"] for m in rest["data"]] == ALIASES and rest["has_more"] is False
    assert (rest["first_id"], rest["last_id"]) == (ALIASES[0], ALIASES[1])


async def test_models_without_anthropic_headers_are_the_openai_shape(
        gw: RunningGateway) -> None:
    for headers in ({}, {"authorization": "Bearer k"}):
        listed = (await gw.client.get("/v1/models", headers=headers)).json()
        assert listed["object"] == "list" and listed["data"][0]["object"] == "model"
        assert listed["data"][0]["id"] == MODEL and "has_more" not in listed
