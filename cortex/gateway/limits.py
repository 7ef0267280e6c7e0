"""Input limits: what the gateway refuses before any dialect decodes a body.

Each refusal is cheap, uses the envelope of the dialect that owns the path, and touches
nothing but its own request. A body is counted as it streams in, so one over
`max_body_bytes` costs at most that much memory (a Content-Length over it is refused
before a byte is read), and one that stops arriving for `body_timeout` seconds gets 408
and its connection closed, so stalled clients cannot hold connections (and file
descriptors) for ever. A complete body must be UTF-8 (RFC 8259) and nest no deeper than
MAX_JSON_DEPTH: msgspec and every JSON parser after it recurse, and a deep enough body
would otherwise end as a RecursionError, a 500, here or on a neuron. A `tools` array over
`max_tools_bytes` is refused as too large. A request head (line and headers) over
`max_header_bytes` gets 431 from HeadLimit: hypercorn's own bound (set to the same in
cortex.gateway.server) only looks at heads still incomplete after each 64 KiB read, so it let
through any head that ended within the read that crossed it, up to about twice the
limit; it still bounds what a head can make the server buffer. `for_profile` caps a
request's token budget at its profile's `max_tokens` (and names the profile, not an
alias), re-encoding the body only when it must.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from cortex.errors import (
    CortexError,
    HeadersTooLarge,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
)

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from cortex.config import GatewaySection
    from cortex.dialect import Call

__all__ = ["MAX_JSON_DEPTH", "BodyLimits", "HeadLimit", "check_body", "for_profile",
           "head_bytes", "json_too_deep"]

#: Deepest JSON nesting accepted; real requests (tool schemas included) stay under 30.
MAX_JSON_DEPTH = 128

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_RUNS = re.compile(rb"[\[{]+|[\]}]+")
_OPENERS = frozenset(b"[{")
# Each round costs a pass over what is left and thins the runs a body of many shallow
# peaks would leave: four balance the two costs (under a second for the worst 16 MiB).
_PEEL_ROUNDS = 4
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_THREAD_ABOVE = 2**20


class _ToolsView(msgspec.Struct):
    tools: msgspec.Raw = msgspec.Raw()


_tools_view = msgspec.json.Decoder(_ToolsView)


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether brackets outside strings nest deeper than `limit`, in time linear in the
    body and without recursing (a scan must not fail the way it guards against).

    Strings are cut out and all but brackets dropped. A few rounds remove the innermost
    (empty) pairs, each lowering the depth by one, and leave few enough runs of openers
    and closers that a running count over the runs is cheap. An unbalanced body is not
    JSON, but a parser descends through its openers before it notices, so they count."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    peeled = 0
    while peeled < _PEEL_ROUNDS and brackets:
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            break
        brackets, peeled = shorter, peeled + 1
    steps = [len(run) if run[0] in _OPENERS else -len(run) for run in _RUNS.findall(brackets)]
    return peeled + max(itertools.accumulate(steps), default=0) > limit


def check_body(body: bytes, *, max_tools_bytes: int) -> None:
    """Raise the error a complete body earns (InvalidRequest, PayloadTooLarge), if any."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the body is not valid UTF-8 (byte {exc.start})") from None
    if json_too_deep(body):
        raise InvalidRequest(f"the body's JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if b'"tools"' in body:
        try:
            tools = _tools_view.decode(body).tools
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not an object with a `tools` array: the dialect answers
        if len(tools) > max_tools_bytes:
            raise PayloadTooLarge(f"the tools are {len(tools)} bytes of JSON; this gateway "
                                  f"takes at most {max_tools_bytes} (max_tools_bytes)",
                                  param="tools")


def for_profile(call: Call, model: str, cap: int | None) -> bytes:
    """The body a neuron gets for `call`: naming `model` (the profile id, where the client
    used an alias) and with `max_tokens`/`max_completion_tokens` lowered to the profile's
    `cap` where above it, so every harness honours the cap the way llama.cpp's engine
    does. Both in one decode and encode, and only when one applies: the dialect's view
    read the budgets, so a body that needs neither is passed on as it came."""
    over = {key: cap for key, value in (("max_tokens", call.max_tokens),
                                        ("max_completion_tokens", call.max_completion_tokens))
            if cap is not None and value is not None and value > cap}
    if call.model == model and not over:
        return call.body
    decoded = msgspec.json.decode(call.body)
    decoded["model"] = model
    decoded.update(over)
    return msgspec.json.encode(decoded)


def head_bytes(scope: Scope) -> int:
    """The bytes of the request line and headers as HTTP/1.1 writes them
    (`METHOD target HTTP/1.1`, `name: value` lines, the blank line)."""
    target = len(scope.get("raw_path") or scope.get("path", "").encode())
    query = scope.get("query_string", b"")
    if query:
        target += 1 + len(query)
    return (len(scope.get("method", "")) + target + 12
            + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 2)


class HeadLimit:
    """ASGI middleware: 431 for a request head over `max_header_bytes`, in the dialect of
    the path (`settings` and `respond` as for BodyLimits)."""

    def __init__(self, app: ASGIApp, *, settings: Callable[[], GatewaySection],
                 respond: Callable[[str, CortexError], Response]) -> None:
        self.app = app
        self.settings = settings
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = self.settings().max_header_bytes
            size = head_bytes(scope)
            if size > limit:
                error = HeadersTooLarge(f"the request line and headers are {size} bytes; this "
                                        f"gateway takes at most {limit} (max_header_bytes)")
                await self.respond(scope.get("path", ""), error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimits:
    """ASGI middleware: read a request's body under the limits, then replay it to the app.
    `settings` is called per request, so a reload changes the limits; `respond` renders
    an error in the dialect that owns the path."""

    def __init__(self, app: ASGIApp, *, settings: Callable[[], GatewaySection],
                 respond: Callable[[str, CortexError], Response]) -> None:
        self.app = app
        self.settings = settings
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        settings = self.settings()
        limit = settings.max_body_bytes
        path = scope.get("path", "")
        too_large = PayloadTooLarge(f"the body is over {limit} bytes (max_body_bytes)")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self.respond(path, too_large)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout(settings.body_timeout):
                    message = await receive()
            except TimeoutError:
                stalled = RequestTimeout(f"no byte of the body for {settings.body_timeout:g} "
                                         "seconds (body_timeout)")
                await self.respond(path, stalled)(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return  # the client left before sending it all: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self.respond(path, too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            if len(body) > _THREAD_ABOVE:  # a big body's scan must not stall other requests
                await asyncio.to_thread(check_body, body,
                                        max_tools_bytes=settings.max_tools_bytes)
            else:
                check_body(body, max_tools_bytes=settings.max_tools_bytes)
        except CortexError as exc:
            await self.respond(path, exc)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
