"""The Anthropic dialect: `/v1/messages`, `/v1/messages/count_tokens` and the Anthropic
shape of `/v1/models` (api-conformance §3, §4).

A request is decoded (`types`) and translated (`request`) into the canonical OpenAI
request, then forwarded like any other, so routing, loading, retries and disconnects
are the gateway's. The neuron's answer comes back through the request's Exchange
(MessagesExchange): a whole ChatCompletion is translated with `from_openai`, a stream
is parsed as SSE and fed to the request's StreamTranslator, which also writes the pings
sent while a model loads or prefills and the error event of a stream that fails. Its
message_start waits for the neuron's prompt counts (asked with `prompt_usage`), so
the keep-alives before it are SSE comments, which the SDKs skip.
Routes match on the path only, so Claude Code's `?beta=true` needs nothing. Auth
headers are not read here: every form (Bearer, `x-api-key`) and any
`anthropic-version`, or none, is accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from cortex import (
    Call,
    CatalogueEntry,
    ChatCompletion,
    CortexError,
    Dialect,
    Exchange,
    GatewayAPI,
    Operation,
    SSEReader,
    TokenizeResponse,
    UpstreamError,
    hookimpl,
    loading_comment,
    prefix_hashes,
)
from cortex.dialect import decode_chunk

from .errors import anthropic_error, anthropic_error_type, anthropic_status
from .reply import assemble, from_openai
from .request import to_openai, to_tokenize
from .stream import StreamTranslator, encode_sse
from .types import (
    CountTokensRequest,
    CountTokensResponse,
    Message,
    MessagesRequest,
    StreamEvent,
    decode_count_tokens_request,
    decode_messages_request,
)

__all__ = ["AnthropicDialect", "AnthropicExchange", "CountTokensExchange", "MessagesExchange"]

_encode = msgspec.json.Encoder().encode
_completion = msgspec.json.Decoder(ChatCompletion)
_tokenized = msgspec.json.Decoder(TokenizeResponse)
# The headers only an Anthropic client sends (SDK 1.x: x-api-key; 2.x: Bearer, but
# always anthropic-version); their absence means an OpenAI client (§4, strategy a).
_ANTHROPIC_HEADERS = (b"anthropic-version", b"x-api-key")
_EPOCH = "1970-01-01T00:00:00Z"  # the catalogue has no creation times (OpenAI says 0)


class AnthropicExchange(Exchange):
    """An answer in the Anthropic shape that needs no translator: count_tokens, and the
    error event of a stream the gateway cuts while draining."""

    def stream_error(self, exc: CortexError) -> bytes:
        _, event = anthropic_error(exc)
        return encode_sse(event)


class CountTokensExchange(AnthropicExchange):
    """count_tokens: `/tokenize` on a neuron holding the model, answered as a count."""

    def reply(self, body: bytes) -> Response:
        try:
            count = _decoded(_tokenized, body).count
            if count <= 0:  # Claude Code trusts a 0 and never compacts (§5.8)
                raise UpstreamError("the neuron could not count the prompt's tokens")
        except CortexError as exc:
            return _error_response(exc)
        return _json(CountTokensResponse(input_tokens=count))


class MessagesExchange(AnthropicExchange):
    """A `/v1/messages` answer: the client's request and the translator of its stream
    (also used for the pings before the stream begins)."""

    def __init__(self, request: MessagesRequest, translator: StreamTranslator, *,
                 backend_stream: bool) -> None:
        self.request = request
        self.translator = translator
        self.backend_stream = backend_stream  # the neuron streams even for a whole reply

    def reply(self, body: bytes) -> Response:
        try:
            return _json(self._message(body))
        except CortexError as exc:
            return _error_response(exc)

    def _message(self, body: bytes) -> Message:
        translator = self.translator
        if self.backend_stream:  # stop sequences: the neuron streamed, we matched them
            events: list[StreamEvent] = []
            reader = SSEReader()
            for data in [*reader.feed(body), *reader.feed(b"\n\n")]:
                events += _translate(translator, data)
                if translator.stopped or translator.closed:
                    break
            events += translator.finish()
            return assemble(events)
        return from_openai(_decoded(_completion, body), model=self.request.model,
                           stop_sequences=self.request.stop_sequences or ())

    async def relay(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Neuron SSE in, Anthropic events out. A matched stop sequence ends the stream
        here; returning makes the proxy close the upstream, which ends generation."""
        translator = self.translator
        reader = SSEReader()
        try:
            async for chunk in chunks:
                for data in reader.feed(chunk):
                    yield _frames(_translate(translator, data))
                    if translator.stopped or translator.closed:
                        yield _frames(translator.finish())
                        return
            yield _frames(translator.finish())  # no [DONE]: finish() says it failed
        except CortexError as exc:
            yield _frames(translator.error(exc))

    def keepalive(self) -> bytes:
        """While the model loads or prefills: an SSE comment until message_start (which
        waits for the prompt's counts; Anthropic allows no event before it), `ping`
        events after it (§3.3)."""
        return _frames(self.translator.ping()) if self.translator.started \
            else super().keepalive()

    def stream_error(self, exc: CortexError) -> bytes:
        return _frames(self.translator.error(exc))

    def loading(self, model: str, node: str, progress: float) -> bytes:
        """The progress comment the OpenAI dialect sends, which the SDKs skip (and a
        `ping` event after it, once message_start is out)."""
        return loading_comment(model, node, progress) + _frames(self.translator.ping())


class _AnthropicRoute(Route):
    """Matches only requests carrying an Anthropic header, so the same path answers each
    SDK in its own shape; anything else falls through to the OpenAI route after it."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        headers = {name for name, _ in scope.get("headers", ())}
        if scope.get("type") == "http" and not any(h in headers for h in _ANTHROPIC_HEADERS):
            return Match.NONE, {}
        return super().matches(scope)


def _model_info(model_id: str, entry: CatalogueEntry) -> dict[str, Any]:
    name = model_id if model_id == entry.id else f"{model_id} ({entry.id})"
    info: dict[str, Any] = {"type": "model", "id": model_id, "display_name": name,
                            "created_at": _EPOCH}
    if entry.n_ctx:
        info["max_input_tokens"] = entry.n_ctx
    return info


def _page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """One page of the list; `has_more` is always present (the SDK loops without it)."""
    query = request.query_params
    try:
        limit = max(1, min(1000, int(query.get("limit", "20"))))
    except ValueError:
        limit = 20
    ids = [item["id"] for item in items]
    if (before := query.get("before_id")) in ids:
        items = items[:ids.index(before)]
        page, more = items[-limit:], len(items) > limit
    else:
        if (after := query.get("after_id")) in ids:
            items = items[ids.index(after) + 1:]
        page, more = items[:limit], len(items) > limit
    return {"data": page, "has_more": more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None}


class AnthropicDialect(Dialect):
    name = "anthropic"
    prefixes = ("/v1/messages",)

    class Options(Dialect.Options, forbid_unknown_fields=True, kw_only=True):
        # Match stop sequences in the gateway, so a hit reads `stop_sequence` (§6.3).
        match_stops: bool = True

    options: Options

    def routes(self, gateway: GatewayAPI) -> Sequence[BaseRoute]:
        async def messages(request: Request) -> Response:
            req = decode_messages_request(await request.body())
            gateway.check_stops(req.stop_sequences, "stop_sequences")
            match_stops = self.options.match_stops  # [dialects.anthropic], as of now
            canonical = to_openai(req, model=req.model, match_stops=match_stops)
            rendered = [msgspec.Raw(_encode(m)) for m in canonical.messages]
            translator = StreamTranslator.for_request(req, match_stops=match_stops)
            call = Call(path="/v1/chat/completions", model=req.model, body=_encode(canonical),
                        stream=req.stream, prefixes=prefix_hashes(rendered),
                        max_tokens=canonical.max_tokens,
                        exchange=MessagesExchange(req, translator,
                                                  backend_stream=canonical.stream))
            return await gateway.forward(call, request, self)

        async def count_tokens(request: Request) -> Response:
            req = decode_count_tokens_request(await request.body())
            tokenize = to_tokenize(req, model=req.model)
            return await gateway.forward(
                Call(path="/tokenize", model=req.model, body=_encode(tokenize),
                     exchange=CountTokensExchange()),
                request, self)

        async def models(request: Request) -> Response:
            items = [_model_info(name, entry) for entry in gateway.catalogue(request)
                     for name in (entry.id, *entry.aliases)]
            return JSONResponse(_page(items, request))

        async def model(request: Request) -> Response:
            name = request.path_params["model"]
            try:
                return JSONResponse(_model_info(name, gateway.catalogue_entry(name, request)))
            except CortexError as exc:  # the path alone would pick the OpenAI envelope
                return self.error_response(exc)

        return [
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            _AnthropicRoute("/v1/models", models),
            _AnthropicRoute("/v1/models/{model:path}", model),
        ]

    def openapi(self) -> Sequence[Operation]:
        return [
            Operation(method="post", path="/v1/messages", body=MessagesRequest,
                      summary="Anthropic Messages, streamed or whole"),
            Operation(method="post", path="/v1/messages/count_tokens", body=CountTokensRequest,
                      summary="Tokens the prompt of a Messages request would take"),
        ]

    # --- errors ----------------------------------------------------------------------------

    def error_response(self, exc: CortexError) -> Response:
        return _error_response(exc)

    def upstream_error(self, status: int, body: bytes, exc: CortexError) -> Response:
        """The neuron's own status is kept (a 500 stays 500, as on OpenAI routes); the
        message is rewritten where Claude Code needs its own words (context overflow)."""
        _, event = anthropic_error(exc)
        code = anthropic_status(status)
        event.error.type = anthropic_error_type(code)
        return Response(_encode(event), status_code=code, media_type="application/json",
                        headers=exc.headers())

    def exchange(self) -> Exchange:
        return AnthropicExchange()


def _error_response(exc: CortexError) -> Response:
    status, body = anthropic_error(exc)
    return Response(_encode(body), status_code=status, media_type="application/json",
                    headers=exc.headers())


def _translate(translator: StreamTranslator, data: bytes) -> list[StreamEvent]:
    chunk = decode_chunk(data)
    return translator.finish() if chunk is None else translator.feed(chunk)


def _frames(events: Iterable[StreamEvent]) -> bytes:
    return b"".join(encode_sse(event) for event in events)


def _json(payload: object) -> Response:
    return Response(_encode(payload), media_type="application/json")


def _decoded(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(f"the neuron's answer could not be read: {exc}") from None


@hookimpl(tryfirst=True)
def register_dialects() -> Iterable[type[Dialect]]:
    """First, so its header-matched `/v1/models` routes come before the OpenAI ones."""
    return [AnthropicDialect]
