"""The neuron's HTTP API: model lifecycle and OpenAI-shaped inference (docs/neuron.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import cortex
from cortex import NeuronConfig, Plugins, build_plugin_manager, decode_body
from cortex.config import parse_bytes
from cortex.disconnects import unless_disconnected
from cortex.errors import (
    AuthenticationFailed,
    Conflict,
    CortexError,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from cortex.harness import Admitted, GenerationEvent
from cortex.records import log_value
from cortex.types import (
    ChatCompletionRequest,
    CompletionRequest,
    DrainRequest,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EstimateRequest,
    LoadRequest,
    NodeStatus,
    PinRequest,
    TokenizeRequest,
    TokenizeResponse,
    UnloadRequest,
)

from . import responses
from .checks import check_chat, check_completion, encode_embedding
from .hardware import Hardware
from .metrics import NeuronMetrics
from .registry import ModelRegistry
from .sources import SourceResolver

__all__ = ["create_app"]

log = logging.getLogger("cortex.neuron")
T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class MsgspecResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def error_response(exc: CortexError) -> JSONResponse:
    return JSONResponse(exc.openai_envelope(), status_code=exc.status, headers=exc.headers())


async def decode(request: Request, kind: type[T]) -> T:
    return decode_body(await request.body(), kind)


class _Neuron:
    """Request handlers; one instance per app, holding the registry and hardware."""

    def __init__(self, config: NeuronConfig, plugins: Plugins) -> None:
        self.config = config
        self.plugins = plugins
        self.started = time.monotonic()
        self.hardware = Hardware(config, plugins.hook)
        self.registry = ModelRegistry(
            plugins=plugins, resolver=SourceResolver(config),
            budget_bytes=self.hardware.budget_bytes,
            overhead_bytes=parse_bytes(config.overhead_bytes),
            harness_options=config.harness)
        self.metrics = NeuronMetrics(self.registry, self.hardware)
        # In memory on purpose: a restarted neuron (the point of draining it) takes work.
        self.draining = False

    # --- lifecycle ------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "node": self.config.node_name})

    async def status(self, request: Request) -> Response:
        gpus = await asyncio.to_thread(self.hardware.gpus)
        reserved = self.registry.reserved_bytes
        return MsgspecResponse(NodeStatus(
            node=self.config.node_name, version=cortex.__version__,
            cpu_only=self.hardware.cpu_only, gpus=gpus,
            budget_bytes=self.registry.budget_bytes, reserved_bytes=reserved,
            free_bytes=max(0, self.registry.budget_bytes - reserved),
            kept_bytes=self.registry.kept_bytes, models=self.registry.statuses(),
            uptime_seconds=time.monotonic() - self.started,
            draining=self.draining))

    async def drain(self, request: Request) -> Response:
        """Stop taking new requests and loads (every gateway sees it at its next poll, and
        a request that arrives before then gets a 503 it retries elsewhere); requests in
        flight finish. `{"draining": false}` undoes it."""
        raw = await request.body()
        body = await decode(request, DrainRequest) if raw.strip() else DrainRequest()
        if body.draining != self.draining:
            self.draining = body.draining
            log.info("%s", "draining: no new requests or loads" if body.draining
                     else "no longer draining")
        return await self.status(request)

    def _accepting(self) -> None:
        if self.draining:
            raise Unavailable(f"node `{self.config.node_name}` is draining: it takes no new "
                              "requests", retry_after=5)

    async def models(self, request: Request) -> Response:
        return MsgspecResponse({"models": self.registry.statuses()})

    async def openai_models(self, request: Request) -> Response:
        return MsgspecResponse({"object": "list", "data": [
            {"id": m.id, "object": "model", "created": 0, "owned_by": self.config.node_name}
            for m in self.registry.statuses() if m.state == "ready"]})

    async def load(self, request: Request) -> Response:
        self._accepting()
        body = await decode(request, LoadRequest)
        status = await self.registry.load(body.profile, wait=body.wait)
        return MsgspecResponse(status, status_code=200 if status.state == "ready" else 202)

    async def estimate(self, request: Request) -> Response:
        body = await decode(request, EstimateRequest)
        return MsgspecResponse(await self.registry.estimate(body.profile))

    async def pin(self, request: Request) -> Response:
        body = await decode(request, PinRequest)
        return MsgspecResponse(self.registry.pin(body.model, body.pinned))

    async def unload(self, request: Request) -> Response:
        body = await decode(request, UnloadRequest)
        if self.registry.status(body.model).pinned:
            # The pin is the fleet's one truth: no gateway replica, forced or not, may
            # unload it while another's pin stands (docs/gateway.md, Pins).
            raise Conflict(f"model `{body.model}` is pinned: unpin it first")
        return MsgspecResponse(await self.registry.unload(body.model, force=body.force))

    # --- inference ------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        body = await decode(request, ChatCompletionRequest)
        check_chat(body)
        return await self._generate(
            request, body.model, body.stream, body.stream_options,
            lambda engine: engine.chat(body), responses.chat_completion, responses.chat_stream)

    async def complete(self, request: Request) -> Response:
        body = await decode(request, CompletionRequest)
        check_completion(body)
        return await self._generate(
            request, body.model, body.stream, body.stream_options,
            lambda engine: engine.complete(body), responses.completion,
            responses.completion_stream)

    async def _generate(self, request: Request, model: str, stream: bool, stream_options: Any,
                        start: Callable[[Any], AsyncGenerator[GenerationEvent, None]],
                        whole: Callable[[str, AsyncIterator[GenerationEvent]], Awaitable[Any]],
                        streamed: Callable[..., AsyncIterator[bytes]]) -> Response:
        """Run one generation while holding the model, so an unload waits for it.

        The first event is awaited before the response starts: errors found up front
        (no chat template, prompt too long) become proper 4xx answers, not broken streams.
        """
        self._accepting()
        hold = self.registry.use(model)
        engine = await hold.__aenter__()
        events = start(engine)
        try:
            if not stream:
                result = await unless_disconnected(request, whole(model, events))
                return MsgspecResponse(result)
            first = await events.__anext__()
            admitted = None
            if isinstance(first, Admitted):  # the response waits for output (errors: 4xx)
                admitted, first = first, await events.__anext__()
        except BaseException:
            await events.aclose()
            await hold.__aexit__(None, None, None)
            raise
        if not stream:  # pragma: no cover - returned above
            raise AssertionError
        include_usage = bool(stream_options and stream_options.include_usage)
        if not (stream_options and stream_options.prompt_usage):
            admitted = None
        # Transitional, for gateways that read usage off the finish chunk (responses.py).
        finish_usage = request.headers.get("x-cortex-usage") == "finish"

        async def body() -> AsyncIterator[bytes]:
            try:
                async for frame in streamed(model, first, events, include_usage=include_usage,
                                            finish_usage=finish_usage, admitted=admitted):
                    yield frame
            finally:
                await events.aclose()
                await hold.__aexit__(None, None, None)

        return StreamingResponse(body(), media_type="text/event-stream", headers=_SSE_HEADERS)

    async def embeddings(self, request: Request) -> Response:
        self._accepting()
        body = await decode(request, EmbeddingRequest)
        inputs = body.input
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs or not all(isinstance(i, str) for i in inputs):
            raise InvalidRequest("input must be a string or a list of strings", param="input")
        if body.dimensions is not None and body.dimensions < 1:
            raise InvalidRequest("dimensions must be at least 1", param="dimensions")
        async with self.registry.use(body.model) as engine:
            # A client that leaves stops the work at the next input, not after all of them.
            texts = [str(i) for i in inputs]
            # Asked only when wanted, so an Engine written before `truncate` still serves.
            vectors, count = await unless_disconnected(
                request, engine.embed(texts, truncate=True) if body.truncate
                else engine.embed(texts))
        return MsgspecResponse(EmbeddingResponse(
            model=body.model, usage={"prompt_tokens": count, "total_tokens": count},
            data=[EmbeddingData(index=i, embedding=encode_embedding(
                v, dimensions=body.dimensions, encoding=body.encoding_format))
                for i, v in enumerate(vectors)]))

    async def tokenize(self, request: Request) -> Response:
        body = await decode(request, TokenizeRequest)
        if (body.text is None) == (body.messages is None):
            raise InvalidRequest("give exactly one of `text` or `messages`")
        async with self.registry.use(body.model) as engine:
            tokens = await engine.tokenize(body)
        return MsgspecResponse(TokenizeResponse(
            model=body.model, count=len(tokens), tokens=tokens if body.return_tokens else None))


class _EchoRequestId:
    """Answer with the caller's `x-request-id` (the gateway's id for the request), so one
    id names the request in the gateway's and the neuron's logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope["headers"]).get(b"x-request-id") if scope["type"] == "http" \
            else None
        if not given:
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", given[:128])]}
            await send(message)

        await self.app(scope, receive, tagged)


class _SecretGuard:
    """With a shared secret configured, every route but /health needs `Bearer <secret>`."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.secret = f"Bearer {secret}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.secret):
                await error_response(AuthenticationFailed(
                    "this neuron needs its shared secret (Authorization: Bearer ...)"))(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: NeuronConfig | None = None, plugins: Plugins | None = None) -> Starlette:
    """Build the neuron app; models in `config.preload` load when it starts."""
    config = config or NeuronConfig()
    plugins = plugins or Plugins(build_plugin_manager())
    plugins.validate()
    neuron = _Neuron(config, plugins)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for profile in config.preload:
            await neuron.registry.load(profile, wait=False)
        yield
        await neuron.registry.close()
        neuron.metrics.close()

    async def on_cortex_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CortexError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err = NotFound(f"no route {request.method} {request.url.path}") if exc.status_code == 404 \
            else InvalidRequest(f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(err.openai_envelope(), status_code=exc.status_code)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", log_value(request.url.path))
        return error_response(CortexError(f"internal error: {type(exc).__name__}"))

    n = neuron
    app = Starlette(
        routes=[
            Route("/health", n.health), Route("/status", n.status),
            Route("/models", n.models), Route("/models/load", n.load, methods=["POST"]),
            Route("/models/unload", n.unload, methods=["POST"]),
            Route("/models/estimate", n.estimate, methods=["POST"]),
            Route("/models/pin", n.pin, methods=["POST"]),
            Route("/drain", n.drain, methods=["POST"]),
            Route("/tokenize", n.tokenize, methods=["POST"]),
            Route("/v1/models", n.openai_models),
            Route("/v1/chat/completions", n.chat, methods=["POST"]),
            Route("/v1/completions", n.complete, methods=["POST"]),
            Route("/v1/embeddings", n.embeddings, methods=["POST"]),
            Route("/metrics", n.metrics.endpoint),
        ],
        exception_handlers={CortexError: on_cortex_error, HTTPException: on_http_error,
                            Exception: on_unexpected},
        lifespan=lifespan)
    app.state.neuron = neuron
    if config.secret:
        app.add_middleware(_SecretGuard, secret=config.secret)
    app.add_middleware(_EchoRequestId)
    return app
