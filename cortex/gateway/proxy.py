"""Proxy: one inference request from admission to the last byte.

Bytes from the neuron reach the client as they arrive, never re-encoded by the
gateway itself (a dialect may translate them). Until the first byte has been read,
any failure is retried on another node; after it, the stream ends with an error
frame in the client's dialect. A client that goes away cancels everything upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from cortex.disconnects import cancelled_status, unless_disconnected
from cortex.errors import CortexError, Unavailable, Unreachable
from cortex.gateway.auth import client_of
from cortex.gateway.client import refused, upstream_error
from cortex.gateway.limits import clamp_max_tokens
from cortex.records import RequestRecord
from cortex.types import Usage

if TYPE_CHECKING:
    from cortex.config import ModelProfile
    from cortex.dialect import Call, Dialect
    from cortex.gateway.app import Gateway

__all__ = ["Proxy"]

log = logging.getLogger("cortex.gateway.proxy")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_RETRY_STATUSES = {404, 502, 503}
_READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
#: Neuron routes that take no slot, so no turn (Anthropic's count_tokens).
_UNGATED = frozenset({"/tokenize"})


class _UsageView(msgspec.Struct):
    usage: Usage | None = None


_usage_decoder = msgspec.json.Decoder(_UsageView)


def _usage(data: bytes) -> Usage | None:
    try:
        return _usage_decoder.decode(data).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _stream_usage(chunk: bytes) -> Usage | None:
    """Usage from the SSE frames of one chunk, if one carries it (the last ones do)."""
    found = None
    for frame in chunk.split(b"\n\n"):
        if frame.startswith(b"data: {") and b'"usage":{' in frame:
            found = _usage(frame[6:]) or found
    return found


def _seconds(header: str | None) -> float:
    """A Retry-After in seconds (1 when absent or not a number of seconds)."""
    try:
        return max(1.0, float(header)) if header else 1.0
    except ValueError:
        return 1.0


def _rename(body: bytes, model: str) -> bytes:
    """Swap an alias for the profile id the neuron knows (only when an alias was used)."""
    decoded = msgspec.json.decode(body)
    decoded["model"] = model
    return msgspec.json.encode(decoded)


class _Answer(Exception):
    """The neuron answered with an error that another node would repeat (4xx, 500)."""

    def __init__(self, status: int, body: bytes, error: CortexError) -> None:
        super().__init__(error.message)
        self.status, self.body, self.error = status, body, error


class _Opened:
    """An upstream answer whose first bytes (or whole body) have been read."""

    def __init__(self, node: str, response: aiohttp.ClientResponse, first: bytes,
                 hold: contextlib.ExitStack, retries: int) -> None:
        self.node, self.response, self.first = node, response, first
        self.hold, self.retries = hold, retries
        self.opened_at = time.monotonic()

    def close(self) -> None:
        self.response.close()
        self.hold.close()


class _Relay(StreamingResponse):
    """A StreamingResponse that always runs `on_close`, even if its body never started."""

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Callable[[], None],
                 media_type: str, headers: dict[str, str]) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class _Tally:
    """What request_finished will report about one request."""

    def __init__(self, call: Call, dialect: Dialect, request_id: str,
                 state: dict[str, object]) -> None:
        self.started = time.monotonic()
        self.state = state  # the request's ASGI state: says whether a cancel was a cut
        self.record = RequestRecord(request_id=request_id, model=call.model, node=None,
                                    dialect=dialect.name, status=200, stream=call.stream)

    def opened(self, opened: _Opened) -> None:
        self.record.node = opened.node
        self.record.retries = opened.retries
        if self.record.stream:  # a whole answer's first byte is its last: no TTFT
            self.record.ttft_seconds = opened.opened_at - self.started

    def usage(self, usage: Usage | None) -> None:
        if usage is not None:
            self.record.prompt_tokens = usage.prompt_tokens
            self.record.completion_tokens = usage.completion_tokens


class Proxy:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def _finish(self, tally: _Tally, status: int | None = None) -> None:
        if status is not None:
            tally.record.status = status
        tally.record.duration_seconds = time.monotonic() - tally.started
        try:
            self.gateway.hook.request_finished(record=tally.record)
        except Exception:
            log.exception("a request_finished observer failed")

    async def forward(self, call: Call, request: Request, dialect: Dialect) -> Response:
        gateway = self.gateway
        tally = _Tally(call, dialect, getattr(request.state, "request_id", ""),
                       request.scope.setdefault("state", {}))
        try:
            profile, _ = gateway.resolve(call.model)
            tally.record.model = profile.id
            gateway.admit(profile)
            body = call.body if call.model == profile.id else _rename(call.body, profile.id)
            body = clamp_max_tokens(body, profile.max_tokens)
        except CortexError as exc:
            self._finish(tally, exc.status)
            return dialect.error_response(exc)
        attempt = self._taking_turns(call, body, profile, tally)
        if not call.stream:
            return await self._whole(request, call, dialect, attempt, tally)

        task = asyncio.ensure_future(attempt)
        await asyncio.wait({task}, timeout=gateway.settings.keepalive_interval)
        if task.done() and (task.cancelled() or task.exception() is not None):
            return self._failure(task, dialect, tally)
        state: dict[str, _Opened] = {}

        def on_close() -> None:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                task.result().close()
            for opened in state.values():
                opened.close()

        return _Relay(self._stream(task, call, dialect, tally, state), on_close=on_close,
                      media_type=dialect.stream_media_type, headers=_SSE_HEADERS)

    def _failure(self, task: asyncio.Future[_Opened], dialect: Dialect,
                 tally: _Tally) -> Response:
        exc = task.exception() if not task.cancelled() else Unavailable("request cancelled")
        if isinstance(exc, _Answer):
            self._finish(tally, exc.status)
            return dialect.upstream_error(exc.status, exc.body, exc.error)
        if isinstance(exc, CortexError):
            self._finish(tally, exc.status)
            return dialect.error_response(exc)
        assert exc is not None
        raise exc

    async def _whole(self, request: Request, call: Call, dialect: Dialect,
                     attempt: Awaitable[_Opened], tally: _Tally) -> Response:
        try:
            opened = await unless_disconnected(request, attempt)
        except _Answer as answer:
            self._finish(tally, answer.status)
            return dialect.upstream_error(answer.status, answer.body, answer.error)
        except CortexError as exc:
            self._finish(tally, exc.status)
            return dialect.error_response(exc)
        except asyncio.CancelledError:
            self._finish(tally, cancelled_status(tally.state))
            raise
        try:
            tally.opened(opened)
            tally.usage(_usage(opened.first))
            return dialect.reply(call, opened.first)
        finally:
            opened.close()
            self._finish(tally)

    async def _stream(self, task: asyncio.Future[_Opened], call: Call, dialect: Dialect,
                      tally: _Tally, state: dict[str, _Opened]) -> AsyncIterator[bytes]:
        status = 200
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.gateway.settings.keepalive_interval)
                if not task.done():
                    yield dialect.keepalive(call)
            try:
                opened = state["opened"] = task.result()
            except _Answer as answer:
                status = answer.status
                yield dialect.stream_error(answer.error, call)
                return
            except CortexError as exc:
                status = exc.status
                yield dialect.stream_error(exc, call)
                return
            tally.opened(opened)
            try:
                async for chunk in dialect.relay(call, self._chunks(opened, tally)):
                    yield chunk
            except CortexError as exc:
                status = exc.status
                log.warning("stream of %s from %s failed: %s", call.model, opened.node,
                            exc.message)
                yield dialect.stream_error(exc, call)
        except asyncio.CancelledError:
            status = cancelled_status(tally.state)
            raise
        finally:
            self._finish(tally, status)

    async def _chunks(self, opened: _Opened, tally: _Tally) -> AsyncIterator[bytes]:
        # Peek for usage before yielding: a client that leaves after the last chunk
        # closes this generator at its yield. A frame may begin in the previous chunk.
        previous = opened.first
        if b'"usage"' in previous:
            tally.usage(_stream_usage(previous))
        yield previous
        try:
            async for chunk in opened.response.content.iter_any():
                if b'"usage"' in chunk:
                    tally.usage(_stream_usage(previous + chunk))
                previous = chunk
                yield chunk
        except _READ_ERRORS as exc:
            error = Unreachable(f"neuron `{opened.node}` failed mid-stream: "
                                f"{str(exc) or type(exc).__name__}")
            self.gateway.fleet.report_failure(opened.node, error)
            raise error from None

    async def _taking_turns(self, call: Call, body: bytes, profile: ModelProfile,
                            tally: _Tally) -> _Opened:
        """`_open`, after this client's turn on a busy model (cortex.gateway.fairshare); the turn
        ends with the answer. Nothing is awaited for it while nobody waits."""
        if call.path in _UNGATED:
            return await self._open(call, body, profile.id, tally)
        fair, client = self.gateway.fair, client_of(tally.state)
        ticket = fair.enter(profile.id, client)
        if ticket is None:
            self.gateway.spill_if_queued(profile, fair.ahead(profile.id))
            ticket = await fair.wait(profile.id, client)
        try:
            opened = await self._open(call, body, profile.id, tally)
        except BaseException:
            ticket.release()
            raise
        opened.hold.callback(ticket.release)
        return opened

    async def _open(self, call: Call, body: bytes, model: str, tally: _Tally) -> _Opened:
        """Place the request and read the neuron's first bytes (its whole answer when not
        streaming), retrying on another node while nothing has reached the client."""
        gateway = self.gateway
        settings = gateway.settings
        deadline = tally.started + settings.load_timeout
        prefix_node = gateway.prefixes.lookup(model, call.prefixes) if call.prefixes else None
        exclude: set[str] = set()
        last: CortexError | None = None
        for attempt in range(settings.retries + 1):
            tally.record.retries = attempt
            profile, loadable = gateway.resolve(model)
            try:
                with gateway.waiting(model):
                    node = await gateway.place(profile, loadable=loadable,
                                               prefix_node=prefix_node,
                                               exclude=frozenset(exclude), deadline=deadline)
            except CortexError as exc:
                if last is None:
                    raise
                # No other node for the retry: the client learns what actually failed,
                # not that placement found nothing once the failed node was set aside.
                log.info("%s: no node for a retry (%s)", model, exc.message)
                raise last from exc
            tally.record.queue_seconds = time.monotonic() - tally.started
            hold = contextlib.ExitStack()
            try:
                client = hold.enter_context(gateway.fleet.using(node, model))
                opened = await self._read_first(
                    node, model, client.open(call.path, body,
                                             request_id=tally.record.request_id),
                    call, hold, attempt)
            except (Unreachable, _Retry) as exc:
                hold.close()
                error = exc.error if isinstance(exc, _Retry) else exc
                log.info("%s on %s failed before the first byte (%s); trying again",
                         model, node, error.message)
                if not isinstance(exc, _Retry) or exc.avoid:
                    exclude.add(node)
                last = error
                continue
            except BaseException:
                hold.close()
                raise
            gateway.fleet.report_success(node)
            if call.prefixes:
                gateway.prefixes.record(model, call.prefixes, node)
            return opened
        assert last is not None
        raise last

    async def _read_first(self, node: str, model: str,
                          sending: Awaitable[aiohttp.ClientResponse],
                          call: Call, hold: contextlib.ExitStack, attempt: int) -> _Opened:
        fleet = self.gateway.fleet
        try:
            response = await sending
        except Unreachable as exc:
            fleet.report_failure(node, exc)
            raise
        try:
            if response.status != 200:
                raw = await response.read()
                error = upstream_error(response.status, raw)
                if response.status == 503 and error.retry_after is None:
                    # Passed on as is when no other node can take the retry.
                    error.retry_after = _seconds(response.headers.get("retry-after"))
                if response.status == 401:  # our secret, not the client's key: a 502
                    error = refused(node, response.status, raw)
                    fleet.report_failure(node, error)
                    raise _Answer(error.status, msgspec.json.encode(error.openai_envelope()),
                                  error)
                if response.status in _RETRY_STATUSES:
                    if response.status == 404:
                        fleet.drop_model(node, model)
                    fleet.poke(node)
                    raise _Retry(error, avoid=response.status != 404)
                raise _Answer(response.status, raw, error)
            first = await response.content.readany() if call.stream else await response.read()
            if call.stream and not first:
                raise Unreachable(f"neuron `{node}` closed the stream before its first byte")
        except _READ_ERRORS as exc:
            response.close()
            error = Unreachable(f"neuron `{node}` failed before its first byte: "
                                f"{str(exc) or type(exc).__name__}")
            fleet.report_failure(node, error)
            raise error from None
        except BaseException:
            response.close()
            raise
        return _Opened(node, response, first, hold, attempt)


class _Retry(Exception):
    """A neuron error that another node (or a fresh load) may not repeat.

    `avoid` is False when the node itself is fine but no longer holds the model (it
    answered 404 after a restart or an unload the view had not seen): the next attempt
    may load it there again.
    """

    def __init__(self, error: CortexError, *, avoid: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.avoid = avoid
