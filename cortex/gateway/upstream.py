"""One attempt on one neuron: send the request, read its first bytes, say how it failed.

How a failure is classified decides where the request may go next (the proxy's retry
loop): a connection never made, or the neuron's own retryable answer (503 draining or
unloading, 404 for a model it no longer holds) may go to another node; any other answer
(a 4xx above all) goes to the client as it is, since another node would say the same;
and a connection that broke after the request was sent is `Dropped`, a neuron that may
have died holding it, which the proxy checks before the request goes anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
import msgspec

from cortex.errors import CortexError, Unreachable
from cortex.gateway.client import Severed, refused, upstream_error

if TYPE_CHECKING:
    from cortex.dialect import Call
    from cortex.gateway.fleet import Fleet

__all__ = ["READ_ERRORS", "Answer", "Dropped", "Opened", "Retry", "first_bytes"]

#: What reading a neuron's answer raises when the connection fails.
READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
_TIMED_OUT = (asyncio.TimeoutError, aiohttp.ServerTimeoutError)
_MODEL_GONE = b'"model_not_found"'


def _seconds(header: str | None) -> float:
    """A Retry-After in seconds (1 when absent or not a number of seconds)."""
    try:
        return max(1.0, float(header)) if header else 1.0
    except ValueError:
        return 1.0


class Answer(Exception):
    """The neuron answered with an error that another node would repeat (4xx, 500)."""

    def __init__(self, status: int, body: bytes, error: CortexError) -> None:
        super().__init__(error.message)
        self.status, self.body, self.error = status, body, error


class Retry(Exception):
    """A neuron error that another node (or a fresh load) may not repeat.

    `avoid` is False when the node itself is fine but no longer holds the model (it
    answered 404 after a restart or an unload the view had not seen): the next attempt
    may load it there again.
    """

    def __init__(self, error: CortexError, *, avoid: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.avoid = avoid


class Dropped(Exception):
    """The request was sent and the connection broke before its first byte.

    `died` is True when the gateway already knows the neuron died (another request on it
    found so); otherwise the proxy asks the neuron whether it is still the process that
    took the request."""

    def __init__(self, error: CortexError, *, died: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.died = died


class Opened:
    """An upstream answer whose first bytes (or whole body) have been read."""

    def __init__(self, node: str, response: aiohttp.ClientResponse, first: bytes,
                 hold: contextlib.ExitStack, retries: int) -> None:
        self.node, self.response, self.first = node, response, first
        self.hold, self.retries = hold, retries
        self.opened_at = time.monotonic()

    def close(self) -> None:
        self.response.close()
        self.hold.close()


async def _refusal(fleet: Fleet, node: str, model: str,
                   response: aiohttp.ClientResponse) -> Exception:
    """What a neuron's error answer means for the retry loop."""
    raw = await response.read()
    error = upstream_error(response.status, raw)
    if response.status == 503 and error.retry_after is None:
        # Passed on as is when no other node can take the retry.
        error.retry_after = _seconds(response.headers.get("retry-after"))
    if response.status == 401:  # our secret, not the client's key: a 502
        error = refused(node, response.status, raw)
        fleet.report_failure(node, error)
        return Answer(error.status, msgspec.json.encode(error.openai_envelope()), error)
    if response.status == 404 and _MODEL_GONE in raw:
        fleet.drop_model(node, model)
        fleet.poke(node)
        return Retry(error, avoid=False)
    if response.status == 503:
        fleet.poke(node)
        return Retry(error)
    if response.status == 502:  # a proxy in front of the neuron saw it fail
        return Dropped(error)
    return Answer(response.status, raw, error)


class _Watch:
    """Cancels the task waiting for a neuron's first bytes when the fleet marks the node
    down, so a request to a node that stopped answering fails now, not after
    request_timeout."""

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.lost: tuple[CortexError, bool] | None = None

    def __call__(self, error: CortexError, died: bool) -> None:
        # The task itself marking the node down (its own failure counted last) is
        # already leaving with that failure: a cancel would hit its next attempt.
        if self.lost is None and asyncio.current_task() is not self.task:
            self.lost = (error, died)
            self.task.cancel()

    def failure(self, node: str) -> Exception | None:
        """What the cancellation it caused means (None: someone else cancelled too)."""
        if self.lost is None or self.task.uncancel() > 0:
            return None
        error, died = self.lost
        if died:
            return Dropped(Unreachable(f"neuron `{node}` died before its first byte: "
                                       f"{error.message}"), died=True)
        # A stopped host, a lost link: not blamed on a request (a request that wedges
        # llama.cpp stops its thread, not the neuron's polls), so it may go elsewhere.
        return Unreachable(f"neuron `{node}` stopped answering before its first byte: "
                           f"{error.message}")


def _stream_watch(node: str, response: aiohttp.ClientResponse
                  ) -> Callable[[CortexError, bool], None]:
    """Ends a stream under way when its node goes down: its next read raises."""
    def lost(error: CortexError, died: bool) -> None:
        response.content.set_exception(Unreachable(
            f"neuron `{node}` {'died' if died else 'stopped answering'} mid-stream: "
            f"{error.message}"))
    return lost


async def first_bytes(fleet: Fleet, node: str, model: str,
                      sending: Awaitable[aiohttp.ClientResponse], call: Call,
                      hold: contextlib.ExitStack, attempt: int) -> Opened:
    """Await the neuron's answer and read its first bytes (all of it when not streaming);
    from then on, a stream ends with an error if the node goes down."""
    watch = _Watch()
    unwatch = fleet.watch(node, watch)
    try:
        response = await _first_bytes(fleet, node, model, sending, call)
    except asyncio.CancelledError:
        failure = watch.failure(node)
        if failure is None:
            raise
        raise failure from None
    finally:
        unwatch()
    hold.callback(fleet.watch(node, _stream_watch(node, response[0])))
    return Opened(node, response[0], response[1], hold, attempt)


async def _first_bytes(fleet: Fleet, node: str, model: str,
                       sending: Awaitable[aiohttp.ClientResponse], call: Call
                       ) -> tuple[aiohttp.ClientResponse, bytes]:
    try:
        response = await sending
    except Severed as exc:
        raise Dropped(exc) from None
    except Unreachable as exc:
        fleet.report_failure(node, exc)
        raise
    try:
        if response.status != 200:
            raise await _refusal(fleet, node, model, response)
        first = await response.content.readany() if call.stream else await response.read()
        if call.stream and not first:
            raise Dropped(Unreachable(f"neuron `{node}` closed the stream before its "
                                      "first byte"))
    except _TIMED_OUT as exc:
        response.close()
        error = Unreachable(f"neuron `{node}` sent nothing within request_timeout: "
                            f"{str(exc) or type(exc).__name__}")
        fleet.report_failure(node, error)
        raise error from None
    except READ_ERRORS as exc:
        response.close()
        raise Dropped(Unreachable(f"neuron `{node}` failed before its first byte: "
                                  f"{str(exc) or type(exc).__name__}")) from None
    except BaseException:
        response.close()
        raise
    return response, first
