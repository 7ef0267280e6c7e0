"""NeuronClient: the gateway's HTTP client for one neuron.

Each neuron gets its own aiohttp ClientSession, so each has its own keep-alive pool and
a slow or dead node cannot starve the connections of the others.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import aiohttp
import msgspec

from cortex.config import ModelProfile, NeuronEntry
from cortex.errors import CortexError, Unreachable, UpstreamError, from_openai_envelope
from cortex.types import (
    DrainRequest,
    EstimateRequest,
    LoadRequest,
    MemoryEstimate,
    ModelStatus,
    NodeStatus,
    PinRequest,
    UnloadRequest,
)

__all__ = ["NeuronClient", "Severed", "neuron_profile", "refused", "upstream_error"]

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
_CONNECTION_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
# Failures before the request left: no connection, or none in time. Anything else after
# the connection opened (a reset, a close) may have come after the neuron read it all.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_TIMED_OUT = (asyncio.TimeoutError, aiohttp.ServerTimeoutError)


class Severed(Unreachable):
    """The connection broke after the request was sent and before any answer: the neuron
    may have died holding it (the proxy checks before sending it anywhere else)."""


def neuron_profile(profile: ModelProfile) -> ModelProfile:
    """The profile as sent to a neuron, without gateway-only fields.

    A neuron treats a load of a different profile under the same id as a conflict, so
    fleet settings (aliases, pinning, priority, affinity, ttl, spill_after, max_copies)
    must not reach it: editing them in models.toml must not disturb a loaded model.
    """
    return profile.for_neuron()


def upstream_error(status: int, body: bytes) -> CortexError:
    """Rebuild a neuron's error answer from its OpenAI envelope."""
    try:
        decoded: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = None
    return from_openai_envelope(status, decoded)


def refused(node: str, status: int, body: bytes) -> UpstreamError:
    """A neuron refused the gateway itself (401: its shared secret). That is the
    operator's error, not the client's, so it reads as a 502 naming the fix."""
    said = upstream_error(status, body).message
    return UpstreamError(f"neuron `{node}` refused the gateway's credentials (HTTP {status}: "
                         f"{said}); set `secret` in its [[neurons]] entry to the neuron's "
                         "shared secret")


class NeuronClient:
    def __init__(self, entry: NeuronEntry, *, connect_timeout: float = 5.0,
                 request_timeout: float = 600.0) -> None:
        self.name = entry.name
        self.endpoint = entry.endpoint.rstrip("/")
        self._headers = {"content-type": "application/json"}
        if entry.secret:
            self._headers["authorization"] = f"Bearer {entry.secret}"
        self._inference = {**self._headers, "x-cortex-usage": "finish"}
        self._connect_timeout = connect_timeout
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout,
                                              sock_read=request_timeout or None)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True))
        return self._session

    def _unreachable(self, exc: BaseException) -> Unreachable:
        detail = str(exc) or type(exc).__name__
        return Unreachable(f"neuron `{self.name}` ({self.endpoint}) did not answer: {detail}")

    async def _call(self, method: str, path: str, payload: object, kind: type[T], *,
                    timeout: float | None = None) -> T:
        data = None if payload is None else _encode(payload)
        request_timeout = None if timeout is None else aiohttp.ClientTimeout(
            total=timeout, connect=self._connect_timeout)
        try:
            async with self.session.request(method, self.endpoint + path, data=data,
                                            headers=self._headers,
                                            timeout=request_timeout) as reply:
                body = await reply.read()
                status = reply.status
        except _CONNECTION_ERRORS as exc:
            raise self._unreachable(exc) from exc
        if status == 401:
            raise refused(self.name, status, body)
        if status >= 400:
            raise upstream_error(status, body)
        try:
            return msgspec.json.decode(body, type=kind)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"neuron `{self.name}` answered {path} with: {exc}") from None

    async def status(self, *, timeout: float | None = None) -> NodeStatus:
        return await self._call("GET", "/status", None, NodeStatus, timeout=timeout)

    async def drain(self, draining: bool) -> NodeStatus:
        return await self._call("POST", "/drain", DrainRequest(draining=draining), NodeStatus)

    async def estimate(self, profile: ModelProfile) -> MemoryEstimate:
        return await self._call("POST", "/models/estimate",
                                EstimateRequest(profile=neuron_profile(profile)), MemoryEstimate)

    async def load(self, profile: ModelProfile, *, wait: bool = True) -> ModelStatus:
        return await self._call("POST", "/models/load",
                                LoadRequest(profile=neuron_profile(profile), wait=wait),
                                ModelStatus)

    async def pin(self, model: str, pinned: bool) -> ModelStatus:
        return await self._call("POST", "/models/pin", PinRequest(model=model, pinned=pinned),
                                ModelStatus)

    async def unload(self, model: str, *, force: bool = False) -> ModelStatus:
        return await self._call("POST", "/models/unload", UnloadRequest(model=model, force=force),
                                ModelStatus)

    async def open(self, path: str, body: bytes, *,
                   request_id: str = "") -> aiohttp.ClientResponse:
        """Send an inference request; the caller reads the answer and must release it.
        `request_id` goes along as `x-request-id`, so the neuron's logs can name it.
        `x-cortex-usage: finish` keeps usage on a stream's finish chunk, where the proxy
        reads it, whether or not the client asked for usage (transitional: docs/neuron.md)."""
        headers = {**self._inference, "x-request-id": request_id} if request_id \
            else self._inference
        try:
            return await self.session.post(self.endpoint + path, data=body, headers=headers)
        except _NOT_SENT as exc:
            raise self._unreachable(exc) from exc
        except _TIMED_OUT as exc:  # request_timeout without an answer: a hang, not a death
            raise self._unreachable(exc) from exc
        except _CONNECTION_ERRORS as exc:
            detail = str(exc) or type(exc).__name__
            raise Severed(f"neuron `{self.name}` ({self.endpoint}) dropped the connection "
                          f"before answering: {detail}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
