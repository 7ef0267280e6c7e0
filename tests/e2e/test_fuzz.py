"""Fuzzing. schemathesis drives a real `cortex serve` (over a synthetic neuron) from the
gateway's own `/openapi.json`: valid and invalid bodies alike must get an answer that is
not a 5xx, in bounded time, and leave the gateway serving. hypothesis drives the
Anthropic translation layer with random valid and malformed inputs: it raises nothing
but its documented errors (InvalidRequest for a client's request, UpstreamError for a
neuron's answer), and every stream it writes keeps the event grammar. This builds on the
seeded stream fuzz in tests/plugins/test_anthropic_translate.py (its helpers and grammar check).
Bounded and derandomized by default; `CORTEX_FUZZ_FULL=1` runs many more random examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from cortex import (
    ChatCompletion,
    ChatCompletionRequest,
    Plugins,
    TokenizeRequest,
    build_plugin_manager,
)
from cortex.dialect import decode_chunk
from cortex.errors import CortexError, InvalidRequest, UpstreamError
from cortex.gateway.openapi import openapi_document
from cortex_plugins.anthropic.reply import assemble, from_openai
from cortex_plugins.anthropic.request import to_openai, to_tokenize
from cortex_plugins.anthropic.stream import StreamTranslator
from cortex_plugins.anthropic.types import (
    ToolUseBlock,
    decode_count_tokens_request,
    decode_messages_request,
)

from ..plugins.test_anthropic_translate import assert_well_formed, call, chunk
from ..serve_support import GatewayProcess, served, synthetic_neuron

FULL = os.environ.get("CORTEX_FUZZ_FULL") == "1"
EXAMPLES = 2000 if FULL else 250
MODELS = ["syn", "capped", "missing"]
#: The document as a gateway with the installed dialect plugins assembles it.
DOCUMENT = openapi_document([cls() for cls in Plugins(build_plugin_manager()).dialects.values()])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    neuron = synthetic_neuron(tmp)
    try:
        with served(tmp, [{"name": "n1", "endpoint": neuron.url}],
                    gateway={"max_body_bytes": 2**20, "request_timeout": 30.0}) as gw:
            yield gw
    finally:
        neuron.stop()


def _pin_models(doc: dict[str, Any]) -> dict[str, Any]:
    """Let `model` name served models most of the time, so bodies reach the neuron
    instead of all stopping at 404."""
    for schema in doc["components"]["schemas"].values():
        props = schema.get("properties", {})
        if "model" in props and "messages" in props | {"prompt": 0, "input": 0}:
            props["model"] = {"type": "string", "enum": MODELS}
    return doc


def test_the_document_comes_from_the_wire_types(gateway: GatewayProcess) -> None:
    doc = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
    assert doc == DOCUMENT
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/v1/messages"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/MessagesRequest"
    # msgspec's constraint on the wire type shows through (max_tokens >= 1).
    assert schemas["MessagesRequest"]["properties"]["max_tokens"]["minimum"] == 1
    assert set(doc["paths"]) >= {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                 "/v1/models", "/v1/models/{id}", "/v1/messages",
                                 "/v1/messages/count_tokens", "/health"}
    assert not any(path.startswith("/admin") for path in doc["paths"])


def test_schemathesis_finds_no_server_error(gateway: GatewayProcess) -> None:
    doc = _pin_models(httpx.get(f"{gateway.url}/openapi.json", timeout=10).json())
    schema = schemathesis.openapi.from_dict(doc)
    strategy = st.one_of(schema.as_strategy(GenerationMode.POSITIVE),
                         schema.as_strategy(GenerationMode.NEGATIVE))
    session = requests.Session()
    seen: set[int] = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not FULL,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=strategy)
    def run(case: Any) -> None:
        # A hang fails here (requests' timeout), a crash at the next call or below.
        response = case.call(base_url=gateway.url, session=session, timeout=60)
        seen.add(response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])

    try:
        run()
    finally:
        session.close()
    assert 200 in seen and any(400 <= s < 500 for s in seen), seen  # not vacuous
    assert gateway.proc.poll() is None
    assert httpx.get(f"{gateway.url}/health", timeout=10).json()["nodes_up"] == 1
    assert "unhandled error" not in gateway.log(), gateway.log()


# --- the translation layer ------------------------------------------------------------------

PROPERTY = settings(max_examples=1000 if FULL else 150, deadline=None, database=None,
                    derandomize=not FULL, suppress_health_check=list(HealthCheck))
_DOCUMENT = schemathesis.openapi.from_dict(DOCUMENT)


def _bodies(path: str) -> st.SearchStrategy[bytes]:
    """Request bodies from the OpenAPI document (so from the msgspec types): valid ones,
    schema-violating ones, and bytes that are not JSON at all."""
    operation = _DOCUMENT[path]["POST"]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))
    encoded = cases.map(lambda case: case.body).filter(
        lambda body: isinstance(body, (dict, list, str, int, float, bool, bytes)) or body is None
    ).map(lambda body: body if isinstance(body, bytes) else msgspec.json.encode(body))
    return st.one_of(encoded, st.binary(max_size=64))


@PROPERTY
@given(body=_bodies("/v1/messages"))
# Found by fuzzing: each was a TypeError (a 500) in the decoder's unknown-block path.
@example(body=b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", '
              b'"content": [{"type": []}]}]}')
@example(body=b'{"max_tokens": 1, "messages": true, "model": "", "system": false}')
def test_messages_requests_translate_or_are_invalid(body: bytes) -> None:
    try:
        request = decode_messages_request(body)
        canonical = to_openai(request, model=request.model,
                              match_stops=bool(request.stop_sequences))
    except InvalidRequest:
        return
    # What the gateway forwards is what a neuron accepts.
    sent = msgspec.json.decode(msgspec.json.encode(canonical), type=ChatCompletionRequest)
    assert sent.model == request.model
    assert sent.stream or not request.stream  # a streaming client is streamed to


@PROPERTY
@given(body=_bodies("/v1/messages/count_tokens"))
def test_count_tokens_requests_translate_or_are_invalid(body: bytes) -> None:
    try:
        request = decode_count_tokens_request(body)
        tokenize = to_tokenize(request, model=request.model)
    except InvalidRequest:
        return
    msgspec.json.decode(msgspec.json.encode(tokenize), type=TokenizeRequest)


_TEXT = st.text(max_size=12)
_ARGUMENTS = st.one_of(_TEXT, st.sampled_from(['{"a": 1}', "{}", '{"a": ', "[1]", "null",
                                               '{"a": 1} trailing', "```json\n{}\n```"]))


@st.composite
def _completions(draw: st.DrawFn) -> ChatCompletion:
    calls = draw(st.lists(st.fixed_dictionaries({
        "id": _TEXT, "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": _TEXT, "arguments": _ARGUMENTS})}),
        max_size=3))
    message: dict[str, Any] = {"role": "assistant", "content": draw(st.one_of(st.none(), _TEXT))}
    if calls:
        message["tool_calls"] = calls
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]))
    choices = draw(st.sampled_from([[], [{"index": 0, "message": message,
                                          "finish_reason": finish}]]))
    return msgspec.convert({"id": "c", "created": 1, "model": "m", "choices": choices,
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                      "total_tokens": 2}}, ChatCompletion)


@PROPERTY
@given(reply=_completions(), stops=st.lists(_TEXT.filter(bool), max_size=2))
def test_whole_replies_translate_or_are_upstream_errors(reply: ChatCompletion,
                                                        stops: list[str]) -> None:
    try:
        message = from_openai(reply, model="claude-local", stop_sequences=stops)
    except UpstreamError:
        return
    assert message.stop_reason in ("end_turn", "max_tokens", "stop_sequence", "tool_use",
                                   "refusal")
    for block in message.content:
        if isinstance(block, ToolUseBlock):
            assert isinstance(block.input, dict) and block.id


_GOOD_FRAMES = st.one_of(
    st.builds(lambda text: chunk(text), _TEXT),
    st.builds(lambda text: chunk(reasoning=text), _TEXT),
    st.builds(lambda index, id, name, args: chunk(tool_calls=[call(index, id=id, name=name,
                                                                   args=args)]),
              st.integers(0, 2), st.one_of(st.none(), st.sampled_from(["call_0", "c 1", "", "é"])),
              st.one_of(st.none(), _TEXT), st.one_of(st.none(), _ARGUMENTS)),
    st.builds(lambda reason: chunk(finish=reason),
              st.sampled_from(["stop", "length", "tool_calls", "content_filter", None])),
    st.just(b'{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}'),
    st.just(b"[DONE]"),
)
_BAD_FRAMES = st.one_of(
    st.binary(max_size=24),
    st.sampled_from([b"{}", b"null", b'{"choices": "x"}', b'{"choices": [{"delta": 1}]}',
                     b'{"choices": [{"index": 0, "delta": {"tool_calls": [{}]}}]}',
                     b'{"error": {"message": "boom", "type": "server_error"}}',
                     b'{"choices": [{"index": -1, "delta": {"content": "x"}}]}']),
)


@PROPERTY
@given(frames=st.lists(st.one_of(_GOOD_FRAMES, _GOOD_FRAMES, _BAD_FRAMES), max_size=16),
       stops=st.sampled_from([(), ("STOP",), ("a", "the")]), thinking=st.booleans())
def test_any_backend_stream_gives_a_well_formed_anthropic_stream(
        frames: list[bytes], stops: tuple[str, ...], thinking: bool) -> None:
    """Whatever a neuron sends, malformed frames included, the client sees the grammar:
    the dialect's relay feeds each frame and ends with the translator's error on failure."""
    translator = StreamTranslator(model="claude-local", stop_sequences=stops, thinking=thinking)
    events = translator.start()
    try:
        for frame in frames:
            decoded = decode_chunk(frame)
            events += translator.finish() if decoded is None else translator.feed(decoded)
            if translator.stopped or translator.closed:
                break
        events += translator.finish()
    except UpstreamError as exc:
        events += translator.error(exc)
    assert_well_formed(events)
    try:
        message = assemble(events)
    except CortexError:
        assert msgspec.to_builtins(events[-1])["type"] == "error"
    else:
        assert message.stop_reason is not None
