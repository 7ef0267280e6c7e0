"""Dialect: one client API (OpenAI, Anthropic) mounted on the gateway.

A dialect owns its routes. Each inference handler decodes only what routing needs,
turns the body into a canonical (OpenAI chat-completions shaped) Call, and hands it
to the gateway's `forward`; the gateway routes, loads, retries and streams. The Call
carries the request's Exchange, made by the handler, which the gateway asks to encode
the reply, the stream's frames and its error in the dialect's own shape; what one
answer must remember (a stream translator) lives there. The Dialect itself answers the
errors that come before any Exchange. The defaults are pass-through, which is what an
OpenAI-shaped dialect needs.

The toolkit below is what every dialect needs and none should copy from another:
`decode_body` (a client's JSON, or a 400), `prefix_hashes` (conversation affinity) and
`SSEReader` (a neuron's stream, event by event).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, TypeVar

import msgspec
from starlette.responses import JSONResponse, Response

from cortex.chunks import BackendChunk, BackendError, BackendUsage, ToolCallDelta, decode_chunk
from cortex.errors import CortexError, InvalidRequest

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.routing import BaseRoute

__all__ = [
    "BackendChunk",
    "BackendError",
    "BackendUsage",
    "Call",
    "CatalogueEntry",
    "Dialect",
    "Exchange",
    "GatewayAPI",
    "LoadProgress",
    "Operation",
    "SSEReader",
    "ToolCallDelta",
    "decode_body",
    "decode_chunk",
    "loading_comment",
    "prefix_hashes",
    "sse_frame",
]

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
_LINE_END = re.compile(rb"\r\n|\r|\n")
_SYSTEM_ROLES = frozenset({"system", "developer"})


class _RoleView(msgspec.Struct):
    role: str = ""


_role_view = msgspec.json.Decoder(_RoleView)


def decode_body(body: bytes, into: msgspec.json.Decoder[T] | type[T]) -> T:
    """A client's JSON body as `into` (a Decoder, or a type): the one place where a body
    that is not JSON, or not of that shape, becomes a 400 with msgspec's JSON path."""
    try:
        if isinstance(into, msgspec.json.Decoder):
            return into.decode(body)
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None


def prefix_hashes(messages: Sequence[msgspec.Raw]) -> tuple[str, ...]:
    """Hashes of messages[:k] (each message's canonical OpenAI JSON), shortest first, from
    the first non-system message on (a system prompt alone is shared by too many
    conversations to say where one went). A Call's `prefixes`."""
    digest = hashlib.blake2b(digest_size=16)
    keys: list[str] = []
    started = False
    for raw in messages:
        data = bytes(raw)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        if not started:
            try:
                started = _role_view.decode(data).role not in _SYSTEM_ROLES
            except (msgspec.DecodeError, msgspec.ValidationError):
                started = True
        if started:
            keys.append(digest.copy().hexdigest())
    return tuple(keys)


class SSEReader:
    """An incremental server-sent-events parser: CRLF, CR or LF line ends (even split
    across chunks), comments, multi-line `data`. `feed` returns each complete event's
    data, so a translating dialect reads a neuron's stream event by event."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        events: list[bytes] = []
        while (end := _LINE_END.search(self._buffer)) is not None:
            if end.group() == b"\r" and end.end() == len(self._buffer):
                break  # maybe the first half of a CRLF
            line, self._buffer = self._buffer[:end.start()], self._buffer[end.end():]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                self._data.append(value.removeprefix(b" "))
        return events


def sse_frame(payload: object, *, event: str | None = None) -> bytes:
    """One server-sent event: `event:` (when given) and a single `data:` line."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + _encode(payload) + b"\n\n"


class CatalogueEntry(msgspec.Struct, kw_only=True):
    """One model in the catalogue (`/v1/models`): what a dialect lists for clients."""

    id: str
    state: Literal["ready", "loading", "available", "unservable"]
    loaded_on: list[str] = []
    loading_on: list[str] = []
    aliases: list[str] = []
    n_ctx: int = 0
    slots: int = 1
    pinned: bool = False
    priority: int = 0
    ttl: float | None = None
    neurons: list[str] = []
    configured: bool = True
    # A profile that serves embeddings; the memory one loaded copy takes (0: none loaded).
    embeddings: bool = False
    bytes: int = 0
    # Why no node can ever hold it (state `unservable`), node by node.
    reason: str | None = None


class LoadProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far a load asked through `GatewayAPI.load` has come, as the neuron reports it:
    `fraction` of the weights read, on `node`, for a copy of `bytes`."""

    model: str
    state: Literal["loading", "ready"]
    node: str | None = None
    fraction: float = 0.0
    bytes: int = 0


class Exchange:
    """One request's answer, in its dialect's shape: made by the dialect's handler for
    each request and carried by its Call, so state one answer needs (a stream's
    translator) lives here. These defaults pass a neuron's OpenAI bytes through."""

    def reply(self, body: bytes) -> Response:
        """A whole (non-streamed) neuron answer, re-encoded for the client if needed."""
        return Response(body, media_type="application/json")

    def relay(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A neuron's SSE stream, re-encoded for the client if needed."""
        return chunks

    def keepalive(self) -> bytes:
        """Sent while a stream waits for a model to load or prefill; clients ignore SSE
        comments."""
        return b": keep-alive\n\n"

    def stream_error(self, exc: CortexError) -> bytes:
        """The frame that ends a stream that failed after it started."""
        return sse_frame(exc.openai_envelope())

    def loading(self, model: str, node: str, progress: float) -> bytes:
        """Sent instead of a keep-alive while a stream waits for its model's load, each
        time the neuron's progress moves: an SSE comment clients ignore and people read."""
        return loading_comment(model, node, progress)


def loading_comment(model: str, node: str, progress: float) -> bytes:
    """`: loading MODEL on NODE 45%`, as an SSE comment (names cannot break the frame)."""
    text = f"loading {model} on {node} {round(progress * 100)}%"
    return b": " + text.replace("\r", " ").replace("\n", " ").encode() + b"\n\n"


class Call(msgspec.Struct, kw_only=True):
    """A canonical request: the neuron route and the OpenAI-shaped body to send there,
    and the Exchange that answers it."""

    path: str
    model: str
    body: bytes
    stream: bool = False
    # Hashes of the conversation's prefixes, shortest first (for KV-reuse routing).
    prefixes: tuple[str, ...] = ()
    # The body's token budgets as the dialect's view read them (None: absent, or not an
    # integer, which the neuron refuses), so the gateway can cap them at the profile's
    # max_tokens without parsing the body again.
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    exchange: Exchange = msgspec.field(default_factory=Exchange)


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """One route as `/openapi.json` describes it; `body` is the type its handler decodes
    (None: no body), so the document cannot drift from what is accepted."""

    method: Literal["get", "post"]
    path: str
    summary: str
    body: type[msgspec.Struct] | None = None


class GatewayAPI(Protocol):
    """What a dialect may ask of the gateway."""

    async def forward(self, call: Call, request: Request, dialect: Dialect) -> Response:
        """Route, load if needed, proxy and answer; errors come back through `dialect`."""
        ...

    def catalogue(self, request: Request | None = None) -> list[CatalogueEntry]:
        """Every model the fleet can serve now; with `request`, only those its key may
        use (a key's `models` allow-list)."""
        ...

    def catalogue_entry(self, model: str, request: Request | None = None) -> CatalogueEntry:
        """One catalogue entry by id or alias (with `request`: one its key may use);
        raises ModelNotFound."""
        ...

    def check_stops(self, stops: str | Sequence[str] | msgspec.Raw | None,
                    field: str) -> None:
        """Refuse (InvalidRequest naming `field`) a stop list over the gateway's caps
        (`max_stop_strings`, `max_stop_bytes`); raw JSON is checked before decoding."""
        ...

    def load(self, model: str, request: Request) -> AsyncIterator[LoadProgress]:
        """Make `model` ready on a node (a load that finishes even if the client leaves,
        as the admin API's), yielding its progress while it loads; the last is `ready`.
        Raises CortexError (unknown model, a key that may not use it, a failed load)."""
        ...

    async def unload(self, model: str, request: Request) -> list[str]:
        """Unload every copy of `model` now (requests in flight finish first); the nodes
        it left. A pinned model is a Conflict."""
        ...

    def set_ttl(self, model: str, ttl: float | None, request: Request) -> None:
        """Unload `model` after `ttl` idle seconds from now on (None: never), in place of
        its profile's `ttl`, in this gateway until it restarts (as a runtime pin)."""
        ...


class Dialect:
    """Base class; plugins subclass it and return it from their register hook."""

    name: ClassVar[str]
    # Path prefixes whose errors (unknown routes included) use this dialect's envelope.
    prefixes: ClassVar[tuple[str, ...]] = ()
    stream_media_type: ClassVar[str] = "text/event-stream"

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        """The plugin's own settings, from cortex.toml's `[dialects.NAME]`: validated at
        start and on reload, which sets them anew for the requests that follow."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def routes(self, gateway: GatewayAPI) -> Sequence[BaseRoute]:
        """The Starlette routes this dialect serves."""
        raise NotImplementedError

    def openapi(self) -> Sequence[Operation]:
        """The routes `/openapi.json` describes, tagged with this dialect's name."""
        return ()

    # --- errors ----------------------------------------------------------------------------

    def error_response(self, exc: CortexError) -> Response:
        """An error before any neuron answered (and on any path in `prefixes`)."""
        return JSONResponse(exc.openai_envelope(), status_code=exc.status,
                            headers=exc.headers())

    def upstream_error(self, status: int, body: bytes, exc: CortexError) -> Response:
        """A neuron answered with an error before the stream started (`exc` rebuilt from it)."""
        return self.error_response(exc)

    def exchange(self) -> Exchange:
        """An Exchange that knows no request: what ends a stream the gateway cuts while
        draining. A dialect whose Exchange differs (its error frame) returns its own."""
        return Exchange()
