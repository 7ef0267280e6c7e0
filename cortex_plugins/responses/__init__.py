"""The OpenAI Responses dialect: `POST /v1/responses`, and where state is kept,
`GET`/`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`.

A request is decoded (`types`) and translated (`request`) into the canonical chat
request, with the conversation behind `previous_response_id` (from this replica's
`ResponseStore`) before its input, then forwarded like any other, so routing,
loading, retries and disconnects are the gateway's. The neuron's answer comes back
through the request's ResponsesExchange: a whole ChatCompletion becomes a Response
(`reply`), a stream is fed to a StreamTranslator (`stream`), which also writes the
`response.created` sent while a model loads and the `response.failed` of a stream
that fails. A finished response is kept unless the client said `store: false`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cortex import (
    Call,
    ChatCompletion,
    CortexError,
    Dialect,
    Exchange,
    GatewayAPI,
    InvalidRequest,
    Operation,
    SSEReader,
    UnsupportedFeature,
    UpstreamError,
    decode_body,
    hookimpl,
    prefix_hashes,
)
from cortex.dialect import decode_chunk

from .errors import error_response, upstream_response
from .reply import Draft, from_openai
from .request import ToolSet, check_supported, input_items, to_openai
from .store import ResponseStore
from .stream import StreamTranslator, encode_sse
from .types import InputItem, ResponseObject, ResponsesRequest, StreamEvent

__all__ = ["ResponsesDialect", "ResponsesExchange"]

_encode = msgspec.json.Encoder().encode
_request = msgspec.json.Decoder(ResponsesRequest)
_completion = msgspec.json.Decoder(ChatCompletion)
_KEEPALIVE = b": keep-alive\n\n"
Keep = Callable[[ResponseObject], None]


class ResponsesExchange(Exchange):
    """One `POST /v1/responses` answer: its Draft, the translator of its stream, and
    what keeps the finished response (None with `store: false`)."""

    def __init__(self, draft: Draft, keep: Keep | None = None) -> None:
        self.draft = draft
        self.translator = StreamTranslator(draft)
        self._keep = keep

    def _kept(self, response: ResponseObject | None) -> None:
        if response is not None and self._keep is not None:
            self._keep(response)
            self._keep = None

    def reply(self, body: bytes) -> Response:
        try:
            response = from_openai(self.draft, _decoded(body))
        except CortexError as exc:
            return error_response(exc)
        self._kept(response)
        return Response(_encode(response), media_type="application/json")

    async def relay(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Neuron SSE in, Responses events out; the response is kept once it finished."""
        translator = self.translator
        reader = SSEReader()
        try:
            async for chunk in chunks:
                for data in reader.feed(chunk):
                    backend = decode_chunk(data)
                    yield _frames(translator.finish() if backend is None
                                  else translator.feed(backend))
                    if translator.closed:
                        self._kept(translator.result)
                        return
            yield _frames(translator.finish())  # no [DONE]: finish() says it failed
        except CortexError as exc:
            yield _frames(translator.error(exc))
        self._kept(translator.result)

    def keepalive(self) -> bytes:
        """`response.created` and `.in_progress` at once, then `.in_progress` again,
        while the model loads or prefills (StreamTranslator.waiting says why)."""
        return _frames(self.translator.waiting()) or _KEEPALIVE

    def stream_error(self, exc: CortexError) -> bytes:
        return _frames(self.translator.error(exc))


class _Page(msgspec.Struct, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    order: str = "desc"
    after: str | None = None
    before: str | None = None


def _page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """One page of a list, as OpenAI pages (`limit`, `order`, `after`, `before`)."""
    try:
        query = msgspec.convert(dict(request.query_params), _Page, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid query: {exc}") from None
    if query.order not in ("asc", "desc"):
        raise InvalidRequest("order must be `asc` or `desc`", param="order")
    if query.order == "desc":
        items = items[::-1]
    ids = [item.get("id") for item in items]
    if query.after in ids:
        rest = items[ids.index(query.after) + 1:]
        page = rest[:query.limit]
    elif query.before in ids:
        rest = items[:ids.index(query.before)]
        page = rest[-query.limit:]
    else:
        rest = items
        page = rest[:query.limit]
    return {"object": "list", "data": page, "has_more": len(rest) > len(page),
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None}


class ResponsesDialect(Dialect):
    name = "responses"
    prefixes = ("/v1/responses",)

    class Options(Dialect.Options, forbid_unknown_fields=True, kw_only=True):
        # Responses kept for previous_response_id and GET (0: none), and their bytes.
        store_size: Annotated[int, msgspec.Meta(ge=0)] = 1000
        store_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 2**20

    options: Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.store = ResponseStore(lambda: (self.options.store_size, self.options.store_bytes))

    def routes(self, gateway: GatewayAPI) -> Sequence[BaseRoute]:
        store = self.store

        async def create(request: Request) -> Response:
            req = decode_body(await request.body(), _request)
            check_supported(req)
            tools = ToolSet(req.tools)
            items = input_items(req)
            history = store.history(req.previous_response_id) \
                if req.previous_response_id is not None else []
            canonical = to_openai(req, model=req.model, history=history, items=items,
                                  tools=tools)
            draft = Draft(req, tools)
            keep = _keeper(store, items) if draft.store else None
            rendered = [msgspec.Raw(_encode(m)) for m in canonical.messages]
            call = Call(path="/v1/chat/completions", model=req.model, body=_encode(canonical),
                        stream=req.stream, prefixes=prefix_hashes(rendered),
                        max_tokens=canonical.max_tokens, exchange=ResponsesExchange(draft, keep))
            return await gateway.forward(call, request, self)

        async def retrieve(request: Request) -> Response:
            if request.query_params.get("stream", "false").lower() != "false":
                raise UnsupportedFeature("replaying a kept response as a stream is not "
                                         "served by this gateway", param="stream")
            return Response(store.response(request.path_params["id"]),
                            media_type="application/json")

        async def delete(request: Request) -> Response:
            response_id = request.path_params["id"]
            store.delete(response_id)
            return JSONResponse({"id": response_id, "object": "response", "deleted": True})

        async def listed_inputs(request: Request) -> Response:
            return JSONResponse(_page(store.inputs(request.path_params["id"]), request))

        return [
            Route("/v1/responses", create, methods=["POST"]),
            Route("/v1/responses/{id}", retrieve, methods=["GET"]),
            Route("/v1/responses/{id}", delete, methods=["DELETE"]),
            Route("/v1/responses/{id}/input_items", listed_inputs, methods=["GET"]),
        ]

    def openapi(self) -> Sequence[Operation]:
        return [
            Operation(method="post", path="/v1/responses", body=ResponsesRequest,
                      summary="OpenAI Responses, streamed or whole"),
            Operation(method="get", path="/v1/responses/{id}",
                      summary="A response this gateway replica produced and kept"),
            Operation(method="get", path="/v1/responses/{id}/input_items",
                      summary="The input items of a kept response"),
        ]

    # --- errors ----------------------------------------------------------------------------

    def error_response(self, exc: CortexError) -> Response:
        return error_response(exc)

    def upstream_error(self, status: int, body: bytes, exc: CortexError) -> Response:
        return upstream_response(status, body, exc)


def _keeper(store: ResponseStore, items: list[InputItem]) -> Keep:
    return lambda response: store.put(response, items)


def _frames(events: Iterable[StreamEvent]) -> bytes:
    return b"".join(encode_sse(event) for event in events)


def _decoded(body: bytes) -> ChatCompletion:
    try:
        return _completion.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(f"the neuron's answer could not be read: {exc}") from None


@hookimpl
def register_dialects() -> Iterable[type[Dialect]]:
    return [ResponsesDialect]
