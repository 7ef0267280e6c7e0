"""Proxy: one inference request from admission to the last byte.

Bytes from the neuron reach the client as they arrive, never re-encoded by the
gateway itself (a dialect may translate them). Until the first byte has been read, a
failure that nothing could have caused but the node (no connection, the neuron's own
503) is retried on another node; a request the neuron died holding is not, beyond
`poison_retries`, and is remembered (cortex.gateway.quarantine). After the first byte, the
stream ends with an error frame in the client's dialect. A client that goes away
cancels everything upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from cortex.disconnects import cancelled_status, unless_disconnected
from cortex.errors import (
    CortexError,
    NeuronDied,
    Unavailable,
    Unreachable,
    UnsupportedFeature,
)
from cortex.gateway.auth import client_of
from cortex.gateway.limits import for_profile
from cortex.gateway.quarantine import fingerprint
from cortex.gateway.requestlog import RECORDED
from cortex.gateway.upstream import READ_ERRORS, Answer, Dropped, Opened, Retry, first_bytes
from cortex.gateway.usage import Counts, stream_usage, usage_of
from cortex.records import RequestRecord

if TYPE_CHECKING:
    from cortex.config import ModelProfile
    from cortex.dialect import Call, Dialect
    from cortex.gateway.fairshare import FairShare
    from cortex.gateway.fleet import Fleet
    from cortex.gateway.loader import LoadJob
    from cortex.gateway.placement import Placer
    from cortex.gateway.quarantine import Quarantine
    from cortex.gateway.state import LiveConfig
    from cortex.gateway.traffic import Traffic

__all__ = ["Proxy"]

log = logging.getLogger("cortex.gateway.proxy")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
#: Neuron routes that take no slot, so no turn (Anthropic's count_tokens).
_UNGATED = frozenset({"/tokenize"})


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

    def __init__(self, call: Call, dialect: Dialect, request: Request) -> None:
        self.started = time.monotonic()
        # The request's ASGI state: says whether a cancel was a cut, and tells the
        # request log (cortex.gateway.requestlog) that this request has its record.
        scope = request.scope
        self.state: dict[str, object] = scope.setdefault("state", {})
        self.state[RECORDED] = True
        # From the scope itself: Request.url parses a whole URL just to give the path back.
        self.record = RequestRecord(
            request_id=str(self.state.get("request_id", "")), model=call.model, node=None,
            dialect=dialect.name, status=200, stream=call.stream, method=scope["method"],
            path=scope["path"])
        self.record.kind = "tokenize" if call.path in _UNGATED else "inference"
        # The load this request waits for, once it waits for one (a stream shows it).
        self.load: LoadJob | None = None
        self.loading = asyncio.Event()

    def waits_for(self, job: LoadJob) -> None:
        self.load = job
        self.loading.set()

    def opened(self, opened: Opened) -> None:
        self.record.node = opened.node
        self.record.retries = opened.retries
        if self.record.stream:  # a whole answer's first byte is its last: no TTFT
            self.record.ttft_seconds = opened.opened_at - self.started

    def usage(self, usage: Counts | None) -> None:
        if usage is not None:
            self.record.prompt_tokens = usage.prompt_tokens
            self.record.completion_tokens = usage.completion_tokens


class Proxy:
    """Sends requests where `placer` says, over `fleet`'s clients; `hook` is told of each
    finished one (request_finished), `traffic` of a stream's tokens as they pass."""

    def __init__(self, placer: Placer, fleet: Fleet, *, live: LiveConfig, fair: FairShare,
                 quarantine: Quarantine, hook: Any, traffic: Traffic) -> None:
        self._placer = placer
        self._fleet = fleet
        self._live = live
        self._fair = fair
        self._quarantine = quarantine
        self._hook = hook
        self._traffic = traffic

    def _finish(self, tally: _Tally, status: int | None = None,
                reason: str | None = None) -> None:
        if status is not None:
            tally.record.status = status
        if status is not None and status >= 400:
            tally.record.reason = reason or (
                "the client went away" if status == 499 else "cut at drain_timeout")
        tally.record.duration_seconds = time.monotonic() - tally.started
        try:
            self._hook.request_finished(record=tally.record)
        except Exception:
            log.exception("a request_finished observer failed")

    def _refused(self, tally: _Tally, response: Response, reason: str) -> Response:
        """Record a request answered with an error as the client sees it (Anthropic's
        529 for a 503), and answer it."""
        self._finish(tally, response.status_code, reason)
        return response

    async def forward(self, call: Call, request: Request, dialect: Dialect) -> Response:
        placer = self._placer
        tally = _Tally(call, dialect, request)
        try:
            profile, loadable = placer.resolve(call.model)
            tally.record.model = profile.id
            if call.path == "/v1/embeddings" and loadable and not profile.embeddings:
                # Its neuron would refuse too, but only after a cold load that may evict
                # another model just to say so.
                raise UnsupportedFeature(f"model `{profile.id}` does not serve embeddings "
                                         "(its profile does not set embeddings = true)",
                                         param="model")
            placer.admit(profile)
            body = for_profile(call, profile.id, profile.max_tokens)
            key = None
            if self._quarantine:  # hash only while some request is remembered
                key = fingerprint(profile.id, call.path, body)
                self._quarantine.check(key)
        except CortexError as exc:
            return self._refused(tally, dialect.error_response(exc), exc.message)
        attempt = self._taking_turns(call, body, profile, tally, key)
        if not call.stream:
            return await self._whole(request, call, dialect, attempt, tally)

        task = asyncio.ensure_future(attempt)
        # Errors found before a load starts (or within one interval) are plain HTTP
        # errors; a cold load answers at once, so the client sees the wait begin.
        load = asyncio.ensure_future(tally.loading.wait())
        try:
            await asyncio.wait({task, load}, timeout=self._live.settings.keepalive_interval,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            load.cancel()
        if task.done() and (task.cancelled() or task.exception() is not None):
            return self._failure(task, dialect, tally)
        state: dict[str, Opened] = {}

        def on_close() -> None:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                task.result().close()
            for opened in state.values():
                opened.close()

        return _Relay(self._stream(task, call, dialect, tally, state), on_close=on_close,
                      media_type=dialect.stream_media_type, headers=_SSE_HEADERS)

    def _failure(self, task: asyncio.Future[Opened], dialect: Dialect,
                 tally: _Tally) -> Response:
        exc = task.exception() if not task.cancelled() else Unavailable("request cancelled")
        if isinstance(exc, Answer):
            return self._refused(tally, dialect.upstream_error(exc.status, exc.body,
                                                               exc.error), exc.error.message)
        if isinstance(exc, CortexError):
            return self._refused(tally, dialect.error_response(exc), exc.message)
        assert exc is not None
        raise exc

    async def _whole(self, request: Request, call: Call, dialect: Dialect,
                     attempt: Awaitable[Opened], tally: _Tally) -> Response:
        try:
            opened = await unless_disconnected(request, attempt)
        except Answer as answer:
            return self._refused(tally, dialect.upstream_error(
                answer.status, answer.body, answer.error), answer.error.message)
        except CortexError as exc:
            return self._refused(tally, dialect.error_response(exc), exc.message)
        except asyncio.CancelledError:
            self._finish(tally, cancelled_status(tally.state))
            raise
        try:
            tally.opened(opened)
            tally.usage(usage_of(opened.first))
            return call.exchange.reply(opened.first)
        finally:
            opened.close()
            self._finish(tally)

    async def _stream(self, task: asyncio.Future[Opened], call: Call, dialect: Dialect,
                      tally: _Tally, state: dict[str, Opened]) -> AsyncIterator[bytes]:
        status, reason = 200, None
        try:
            async for frame in self._waiting(task, call, tally):
                yield frame
            try:
                opened = state["opened"] = task.result()
            except Answer as answer:
                status, reason = answer.status, answer.error.message
                yield call.exchange.stream_error(answer.error)
                return
            except CortexError as exc:
                status, reason = exc.status, exc.message
                yield call.exchange.stream_error(exc)
                return
            tally.opened(opened)
            try:
                async for chunk in call.exchange.relay(self._chunks(opened, tally)):
                    yield chunk
            except CortexError as exc:
                status, reason = exc.status, exc.message
                log.warning("stream of %s from %s failed: %s", call.model, opened.node,
                            exc.message)
                yield call.exchange.stream_error(exc)
        except asyncio.CancelledError:
            status = cancelled_status(tally.state)
            raise
        finally:
            self._finish(tally, status, reason)

    async def _waiting(self, task: asyncio.Future[Opened], call: Call,
                       tally: _Tally) -> AsyncIterator[bytes]:
        """What a stream sends until its first bytes: a frame at once, then the load's
        progress as it moves (Exchange.loading), else a keep-alive each interval."""
        shown: float | None = None
        quiet = True  # nothing sent for an interval (or ever): say something now
        while not task.done():
            job = tally.load
            if job is not None and job.progress != shown and not job.future.done():
                shown = job.progress
                yield call.exchange.loading(job.model, job.node, job.progress)
            elif quiet:
                yield call.exchange.keepalive()
            event = job.moved if job is not None else tally.loading
            change: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
            try:
                done, _ = await asyncio.wait([task, change],
                                             timeout=self._live.settings.keepalive_interval,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                change.cancel()
            quiet = not done

    async def _chunks(self, opened: Opened, tally: _Tally) -> AsyncIterator[bytes]:
        # Peek for usage before yielding: a client that leaves after the last chunk
        # closes this generator at its yield. A frame may begin in the previous chunk.
        # Each data frame is about one token: counted as it passes (cortex.gateway.traffic).
        previous = opened.first
        flow = self._traffic.flow(tally.record)
        flow.add(previous.count(b"data: {"))
        if b'"usage"' in previous:
            tally.usage(stream_usage(previous))
        yield previous
        try:
            async for chunk in opened.response.content.iter_any():
                flow.add(chunk.count(b"data: {"))
                if b'"usage"' in chunk:
                    tally.usage(stream_usage(previous + chunk))
                previous = chunk
                yield chunk
        except READ_ERRORS as exc:
            error = Unreachable(f"neuron `{opened.node}` failed mid-stream: "
                                f"{str(exc) or type(exc).__name__}")
            self._fleet.report_failure(opened.node, error)
            raise error from None

    async def _taking_turns(self, call: Call, body: bytes, profile: ModelProfile,
                            tally: _Tally, key: bytes | None) -> Opened:
        """`_open`, after this client's turn on a busy model (cortex.gateway.fairshare); the turn
        ends with the answer. Nothing is awaited for it while nobody waits."""
        if call.path in _UNGATED:
            return await self._open(call, body, profile.id, tally, key)
        fair, client = self._fair, client_of(tally.state)
        ticket = fair.enter(profile.id, client)
        if ticket is None:
            self._placer.spill_if_queued(profile, fair.ahead(profile.id))
            ticket = await fair.wait(profile.id, client)
        try:
            opened = await self._open(call, body, profile.id, tally, key)
        except BaseException:
            ticket.release()
            raise
        opened.hold.callback(ticket.release)
        return opened

    async def _open(self, call: Call, body: bytes, model: str, tally: _Tally,
                    key: bytes | None) -> Opened:
        """Place the request and read the neuron's first bytes (its whole answer when not
        streaming), retrying on another node while nothing has reached the client and
        the failure allows it. `key` is the request's fingerprint, if already known."""
        placer, fleet = self._placer, self._fleet
        settings = self._live.settings
        deadline = tally.started + settings.load_timeout
        # Every replica sends a conversation where the same hash of its start says.
        conversation = call.prefixes[0] if call.prefixes else None
        exclude: set[str] = set()
        last: CortexError | None = None
        deaths = 0  # neurons that died holding it in this request (with poison_ttl = 0 too)
        for attempt in range(settings.retries + 1):
            tally.record.retries = attempt
            profile, loadable = placer.resolve(model)
            try:
                with placer.waiting(model):
                    node = await placer.place(profile, loadable=loadable,
                                              conversation=conversation,
                                              exclude=frozenset(exclude), deadline=deadline,
                                              on_load=tally.waits_for)
            except CortexError as exc:
                if last is None:
                    raise
                # No other node for the retry: the client learns what actually failed,
                # not that placement found nothing once the failed node was set aside.
                log.info("%s: no node for a retry (%s)", model, exc.message)
                raise last from exc
            tally.record.queue_seconds = time.monotonic() - tally.started
            hold = contextlib.ExitStack()
            sent = time.monotonic()
            try:
                client = hold.enter_context(fleet.using(node, model))
                opened = await first_bytes(
                    fleet, node, model,
                    client.open(call.path, body, request_id=tally.record.request_id),
                    call, hold, attempt)
            except Dropped as exc:
                hold.close()
                exclude.add(node)
                if not exc.died and await fleet.survived(node, sent):
                    log.info("%s on %s: the connection broke before the first byte, the "
                             "neuron lives (%s); trying again", model, node, exc.error.message)
                    last = exc.error
                    continue
                key = key or fingerprint(model, call.path, body)
                deaths = max(deaths + 1, self._quarantine.record(key, node))
                again = self._quarantine.allows(deaths)
                last = _died(model, node, exc.error, again=again)
                if not again:
                    raise last from None
                continue
            except (Unreachable, Retry) as exc:
                hold.close()
                error = exc.error if isinstance(exc, Retry) else exc
                log.info("%s on %s failed before the first byte (%s); trying again",
                         model, node, error.message)
                if not isinstance(exc, Retry) or exc.avoid:
                    exclude.add(node)
                last = error
                continue
            except BaseException:
                hold.close()
                raise
            fleet.report_success(node)
            return opened
        assert last is not None
        raise last


def _died(model: str, node: str, cause: CortexError, *, again: bool) -> NeuronDied:
    """The error for a request a neuron died holding; logged, since it points at a bug."""
    then = ("trying another node ([gateway] poison_retries)" if again else
            "not sent to another node, since a request that kills a neuron would kill "
            "the next too ([gateway] poison_retries)")
    log.warning("%s: neuron %s died holding a request before its first byte (%s); %s",
                model, node, cause.message, then)
    return NeuronDied(f"neuron `{node}` died while it held this request, before its first "
                      f"byte ({cause.message}); {then}")
