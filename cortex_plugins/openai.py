"""The OpenAI dialect: a near pass-through, since neurons speak OpenAI already.

Only `model`, `stream`, the token budgets and the raw bytes of each chat message are
decoded (for routing, the profile's max_tokens cap and conversation affinity); bodies
and SSE chunks go through untouched unless the gateway must rename or cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cortex import (
    Call,
    CatalogueEntry,
    ChatCompletionRequest,
    CompletionRequest,
    CortexError,
    Dialect,
    EmbeddingRequest,
    GatewayAPI,
    Operation,
    decode_body,
    hookimpl,
    prefix_hashes,
)

__all__ = ["OpenAIDialect"]


class _RequestView(msgspec.Struct):
    model: str
    stream: bool = False


class _CompletionView(msgspec.Struct):
    model: str
    stream: bool = False
    stop: msgspec.Raw = msgspec.Raw()  # checked against the caps before it is decoded
    max_tokens: Any = None  # any type: a wrong one is the neuron's to refuse


class _ChatView(_CompletionView):
    messages: list[msgspec.Raw] = []
    max_completion_tokens: Any = None


_request_view = msgspec.json.Decoder(_RequestView)
_completion_view = msgspec.json.Decoder(_CompletionView)
_chat_view = msgspec.json.Decoder(_ChatView)


def _budget(value: Any) -> int | None:
    """A token budget the gateway may cap: an integer (bool is not one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model(entry: CatalogueEntry) -> dict[str, Any]:
    fleet = msgspec.to_builtins(entry)
    return {"id": entry.id, "object": "model", "created": 0, "owned_by": "cortex", **fleet}


class OpenAIDialect(Dialect):
    name = "openai"
    prefixes = ("/v1/",)

    def routes(self, gateway: GatewayAPI) -> Sequence[BaseRoute]:
        async def chat(request: Request) -> Response:
            body = await request.body()
            view = decode_body(body, _chat_view)
            gateway.check_stops(view.stop, "stop")
            return await gateway.forward(
                Call(path="/v1/chat/completions", model=view.model, body=body,
                     stream=view.stream, prefixes=prefix_hashes(view.messages),
                     max_tokens=_budget(view.max_tokens),
                     max_completion_tokens=_budget(view.max_completion_tokens)),
                request, self)

        async def completions(request: Request) -> Response:
            body = await request.body()
            view = decode_body(body, _completion_view)
            gateway.check_stops(view.stop, "stop")
            return await gateway.forward(
                Call(path="/v1/completions", model=view.model, body=body, stream=view.stream,
                     max_tokens=_budget(view.max_tokens)),
                request, self)

        async def embeddings(request: Request) -> Response:
            body = await request.body()
            view = decode_body(body, _request_view)
            return await gateway.forward(
                Call(path="/v1/embeddings", model=view.model, body=body), request, self)

        async def models(request: Request) -> Response:
            return JSONResponse({"object": "list",
                                 "data": [_model(e) for e in gateway.catalogue(request)]})

        async def model(request: Request) -> Response:
            entry = gateway.catalogue_entry(request.path_params["model"], request)
            return JSONResponse(_model(entry))

        return [
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model),
        ]

    def openapi(self) -> Sequence[Operation]:
        return [
            Operation(method="post", path="/v1/chat/completions", body=ChatCompletionRequest,
                      summary="Chat completion, streamed (`stream: true`) or whole"),
            Operation(method="post", path="/v1/completions", body=CompletionRequest,
                      summary="Text completion"),
            Operation(method="post", path="/v1/embeddings", body=EmbeddingRequest,
                      summary="Embeddings (profiles with `embeddings = true`)"),
            Operation(method="get", path="/v1/models", summary="The catalogue"),
            Operation(method="get", path="/v1/models/{id}",
                      summary="One catalogue entry, by id or alias"),
        ]

    def upstream_error(self, status: int, body: bytes, exc: CortexError) -> Response:
        """Neurons answer in this dialect's envelope already: pass it through verbatim."""
        if body.lstrip().startswith(b'{"error"'):
            return Response(body, status_code=status, media_type="application/json",
                            headers=exc.headers())
        return self.error_response(exc)


@hookimpl
def register_dialects() -> Iterable[type[Dialect]]:
    return [OpenAIDialect]
