"""The Ollama dialect: Ollama's `/api/*` on the gateway's own port, so Ollama clients
(the `ollama` libraries, Open WebUI, editor plugins, Codex `--oss`) work with
`OLLAMA_HOST=http://host:31313`.

Inference (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`) is decoded
(`types`), checked and translated (`request`) into the canonical OpenAI request and
forwarded like any other; the answer comes back through the request's Exchange
(`exchange`, `reply`) as Ollama's objects, streamed as NDJSON. Before that, a model
that is not loaded is loaded through the gateway (as Ollama does), so the final `done`
object can say how long the load took. `keep_alive` maps onto the fleet: 0 unloads the
model once the answer is sent, a negative one keeps it loaded, a duration sets its
idle TTL in this gateway. `/api/pull` makes a model ready and streams the load's
progress; the catalogue answers `/api/tags`, `/api/ps` and `/api/show` (`models`), and
`/` says "Ollama is running", which the `ollama` CLI asks (`HEAD /`) before any command.
What Ollama can do to its model store (delete, create, copy, push, blobs) has no
meaning over a fleet's profiles: 501 with a sentence that says so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import msgspec
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from cortex import (
    Call,
    CatalogueEntry,
    CortexError,
    Dialect,
    Exchange,
    GatewayAPI,
    Operation,
    decode_body,
    hookimpl,
    prefix_hashes,
)

from .errors import NotSupported, error_line, error_response, in_ollamas_words
from .exchange import EmbedExchange, OllamaExchange, json_response, ndjson
from .models import digest, running, show, tag
from .reply import Reply, created_at
from .request import (
    FOREVER,
    chat_request,
    embed_inputs,
    embed_request,
    generate_request,
    keep_alive_seconds,
)
from .types import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ModelRequest,
    Options,
    PullRequest,
)

__all__ = ["OllamaDialect"]

_encode = msgspec.json.Encoder().encode
_NDJSON = "application/x-ndjson"
_STORE = ("/api/delete", "/api/create", "/api/copy", "/api/push")


class OllamaDialect(Dialect):
    name = "ollama"
    prefixes = ("/api/",)
    stream_media_type = _NDJSON

    class Options(Dialect.Options, forbid_unknown_fields=True, kw_only=True):
        # What /api/version says: clients gate features on it (Codex --oss needs 0.13.4+).
        version: str = "0.13.5"

    options: Options

    def routes(self, gateway: GatewayAPI) -> Sequence[BaseRoute]:
        api = _Handlers(self, gateway)
        store = [Route(path, api.store, methods=["POST", "DELETE"]) for path in _STORE]
        return [
            Route("/", api.running),  # GET and HEAD
            Route("/api/version", api.version),
            Route("/api/tags", api.tags),
            Route("/api/ps", api.ps),
            Route("/api/show", api.show, methods=["POST"]),
            Route("/api/chat", api.chat, methods=["POST"]),
            Route("/api/generate", api.generate, methods=["POST"]),
            Route("/api/embed", api.embed, methods=["POST"]),
            Route("/api/embeddings", api.embeddings, methods=["POST"]),
            Route("/api/pull", api.pull, methods=["POST"]),
            *store,
            Route("/api/blobs/{digest}", api.store, methods=["HEAD", "POST"]),
        ]

    def openapi(self) -> Sequence[Operation]:
        return [
            Operation(method="post", path="/api/chat", body=ChatRequest,
                      summary="Ollama chat, NDJSON-streamed or whole"),
            Operation(method="post", path="/api/generate", body=GenerateRequest,
                      summary="Ollama completion of a prompt"),
            Operation(method="post", path="/api/embed", body=EmbedRequest,
                      summary="Ollama embeddings"),
            Operation(method="post", path="/api/embeddings", body=EmbeddingsRequest,
                      summary="Ollama embeddings (legacy: one prompt)"),
            Operation(method="post", path="/api/show", body=ModelRequest,
                      summary="One model of the catalogue, in Ollama's shape"),
            Operation(method="post", path="/api/pull", body=PullRequest,
                      summary="Load a model, streaming the load's progress"),
            Operation(method="get", path="/api/tags", summary="The catalogue"),
            Operation(method="get", path="/api/ps", summary="The models loaded now"),
            Operation(method="get", path="/api/version", summary="Ollama API version"),
            Operation(method="get", path="/", summary="\"Ollama is running\" (the ollama "
                      "CLI's heartbeat, HEAD /)"),
        ]

    def error_response(self, exc: CortexError) -> Response:
        return error_response(exc)

    def upstream_error(self, status: int, body: bytes, exc: CortexError) -> Response:
        response = error_response(in_ollamas_words(body, exc))
        response.status_code = status
        return response

    def exchange(self) -> Exchange:
        return _ErrorLines()


class _ErrorLines(Exchange):
    """What ends a stream the gateway cuts while draining: an `error` line."""

    def stream_error(self, exc: CortexError) -> bytes:
        return error_line(exc)


class _Handlers:
    """The routes' handlers, over the gateway and the dialect's live options."""

    def __init__(self, dialect: OllamaDialect, gateway: GatewayAPI) -> None:
        self.dialect = dialect
        self.gateway = gateway

    # --- the catalogue ----------------------------------------------------------------------

    def entry(self, name: str, request: Request) -> tuple[str, CatalogueEntry]:
        """The model a client names, and its entry (one the request's key may use);
        `name:latest` is `name` if that is all there is (Ollama's default tag)."""
        try:
            return name, self.gateway.catalogue_entry(name, request)
        except CortexError as exc:
            bare = name.removesuffix(":latest")
            if exc.status != 404 or bare == name:
                raise
            return bare, self.gateway.catalogue_entry(bare, request)

    async def running(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return json_response({"version": self.dialect.options.version})

    async def tags(self, request: Request) -> Response:
        return json_response({"models": [item for entry in self.gateway.catalogue(request)
                                         for item in tag(entry)]})

    async def ps(self, request: Request) -> Response:
        return json_response({"models": [running(entry)
                                         for entry in self.gateway.catalogue(request)
                                         if entry.loaded_on]})

    async def show(self, request: Request) -> Response:
        req = decode_body(await request.body(), ModelRequest)
        return json_response(show(self.entry(req.target, request)[1]))

    async def store(self, request: Request) -> Response:
        raise NotSupported(f"{request.url.path} is not supported by this gateway: its models "
                           "are the fleet's profiles (models.toml), not a store a client "
                           "changes; /api/pull loads one")

    # --- loads and keep-alive -----------------------------------------------------------------

    async def ready(self, name: str, entry: CatalogueEntry, request: Request) -> float:
        """Load the model first if it is not loaded anywhere; the seconds that took (0
        when it was loaded). Asked of the gateway either way, which checks the key."""
        started = time.monotonic()
        async for _ in self.gateway.load(name, request):
            pass
        return 0.0 if entry.loaded_on else time.monotonic() - started

    def keep(self, name: str, seconds: float | None, request: Request) -> None:
        """A keep_alive other than 0: the model's idle TTL from now on."""
        if seconds is not None and seconds != 0:
            self.gateway.set_ttl(name, None if seconds == FOREVER else seconds, request)

    def unload_after(self, response: Response, name: str, seconds: float | None,
                     request: Request) -> Response:
        """keep_alive 0: unload once the answer is sent (Ollama's "unload after")."""
        if seconds == 0 and response.status_code < 400:
            response.background = BackgroundTask(self._unload, name, request)
        return response

    async def _unload(self, name: str, request: Request) -> None:
        with contextlib.suppress(CortexError):  # pinned, or gone already
            await self.gateway.unload(name, request)

    async def no_input(self, kind: str, model: str, name: str, entry: CatalogueEntry,
                       seconds: float | None, request: Request) -> Response:
        """No messages or prompt: Ollama's way to load a model, or, with keep_alive 0,
        to unload it."""
        if seconds == 0:
            await self.gateway.unload(name, request)
            reason = "unload"
        else:
            await self.ready(name, entry, request)
            self.keep(name, seconds, request)
            reason = "load"
        body: dict[str, Any] = {"model": model, "created_at": created_at()}
        if kind == "chat":
            body["message"] = {"role": "assistant", "content": ""}
        else:
            body["response"] = ""
        return json_response({**body, "done": True, "done_reason": reason})

    # --- inference --------------------------------------------------------------------------

    def checked(self, model: str, options: Options | None, keep_alive: Any,
                request: Request) -> tuple[str, CatalogueEntry, float | None]:
        seconds = keep_alive_seconds(keep_alive)
        name, entry = self.entry(model, request)
        if options is not None:
            self.gateway.check_stops(options.stop, "options.stop")
        return name, entry, seconds

    async def chat(self, request: Request) -> Response:
        started = time.monotonic()
        req = decode_body(await request.body(), ChatRequest)
        name, entry, seconds = self.checked(req.model, req.options, req.keep_alive,
                                              request)
        canonical = chat_request(req, model=name)
        if not req.messages:
            return await self.no_input("chat", req.model, name, entry, seconds, request)
        return await self.infer("chat", req.model, name, entry, seconds, canonical,
                                started, request, thinking=req.think is not False)

    async def generate(self, request: Request) -> Response:
        started = time.monotonic()
        req = decode_body(await request.body(), GenerateRequest)
        name, entry, seconds = self.checked(req.model, req.options, req.keep_alive,
                                              request)
        canonical = generate_request(req, model=name)
        if not req.prompt:
            return await self.no_input("generate", req.model, name, entry, seconds, request)
        return await self.infer("generate", req.model, name, entry, seconds, canonical,
                                started, request, thinking=req.think is not False)

    async def infer(self, kind: str, model: str, name: str, entry: CatalogueEntry,
                    seconds: float | None, canonical: Any, started: float,
                    request: Request, *, thinking: bool) -> Response:
        """`thinking`: show a thinking model's reasoning (Ollama's default; `think:
        false` hides it)."""
        load_seconds = await self.ready(name, entry, request)
        self.keep(name, seconds, request)
        chat = hasattr(canonical, "messages")
        prefixes = prefix_hashes([msgspec.Raw(_encode(m)) for m in canonical.messages]) \
            if chat else ()
        answer = Reply("chat" if kind == "chat" else "generate", model, started=started,
                       load_seconds=load_seconds, thinking=thinking)
        call = Call(path="/v1/chat/completions" if chat else "/v1/completions", model=name,
                    body=_encode(canonical), stream=canonical.stream, prefixes=prefixes,
                    max_tokens=canonical.max_tokens, exchange=OllamaExchange(answer))
        response = await self.gateway.forward(call, request, self.dialect)
        return self.unload_after(response, name, seconds, request)

    async def embed(self, request: Request) -> Response:
        started = time.monotonic()
        req = decode_body(await request.body(), EmbedRequest)
        name, entry, seconds = self.checked(req.model, req.options, req.keep_alive,
                                              request)
        inputs = embed_inputs(req)
        if not inputs:
            await self.no_input("embed", req.model, name, entry, seconds, request)
            return json_response({"model": req.model, "embeddings": []})
        return await self.embedding(name, entry, seconds, started, request,
                                    embed_request(inputs, model=name, truncate=req.truncate),
                                    EmbedExchange(req.model, started=started,
                                                  load_seconds=0.0,
                                                  dimensions=req.dimensions))

    async def embeddings(self, request: Request) -> Response:
        """The legacy route: one prompt, never truncated (as Ollama's)."""
        started = time.monotonic()
        req = decode_body(await request.body(), EmbeddingsRequest)
        name, entry, seconds = self.checked(req.model, req.options, req.keep_alive,
                                              request)
        if not req.prompt:
            await self.no_input("embed", req.model, name, entry, seconds, request)
            return json_response({"embedding": []})
        return await self.embedding(name, entry, seconds, started, request,
                                    embed_request(req.prompt, model=name),
                                    EmbedExchange(req.model, started=started,
                                                  load_seconds=0.0, legacy=True))

    async def embedding(self, name: str, entry: CatalogueEntry, seconds: float | None,
                        started: float, request: Request, canonical: Any,
                        exchange: EmbedExchange) -> Response:
        exchange.load_seconds = await self.ready(name, entry, request)
        self.keep(name, seconds, request)
        call = Call(path="/v1/embeddings", model=name, body=_encode(canonical),
                    exchange=exchange)
        response = await self.gateway.forward(call, request, self.dialect)
        return self.unload_after(response, name, seconds, request)

    # --- pull -------------------------------------------------------------------------------

    async def pull(self, request: Request) -> Response:
        req = decode_body(await request.body(), PullRequest)
        name, entry = self.entry(req.target, request)
        progress = self.gateway.load(name, request)
        if not req.stream:
            async for _ in progress:
                pass
            return json_response({"status": "success"})
        return StreamingResponse(self._pulling(name, entry.id, progress), media_type=_NDJSON)

    async def _pulling(self, name: str, model_id: str,
                       progress: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        """The load's progress as Ollama's pull status lines: `total` and `completed`
        are the copy's bytes and the part of them the neuron has loaded."""
        yield ndjson([{"status": f"loading {name}"}])
        try:
            async for step in progress:
                if step.state == "ready":
                    break
                yield ndjson([{"status": f"loading {name}", "digest": f"sha256:{digest(model_id)}",
                               "total": step.bytes,
                               "completed": int(step.fraction * step.bytes)}])
        except CortexError as exc:
            yield error_line(exc)
            return
        yield ndjson([{"status": "success"}])


@hookimpl
def register_dialects() -> Iterable[type[Dialect]]:
    return [OllamaDialect]
