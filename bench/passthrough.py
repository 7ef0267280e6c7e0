"""The framework floor: a bare Starlette + aiohttp pass-through, no cortex features.

It reads `{model, stream}` with msgspec (a gateway must know both to route), forwards
the raw body through one shared aiohttp session and passes the bytes back. Whatever
cortex costs beyond this on the same server is the price of its features (auth,
routing, metrics, retries); what this costs over nginx is the price of the stack.

    BENCH_UPSTREAM=http://127.0.0.1:13131 hypercorn bench.passthrough:app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


class _Head(msgspec.Struct):
    model: str = ""
    stream: bool = False


_decode_head = msgspec.json.Decoder(_Head).decode
_session: dict[str, aiohttp.ClientSession] = {}


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(os.environ["BENCH_UPSTREAM"], connector=connector,
                                     auto_decompress=False) as session:
        _session["upstream"] = session
        yield


async def _chat(request: Request) -> Response:
    body = await request.body()
    head = _decode_head(body)
    upstream = await _session["upstream"].post(
        "/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    if not head.stream:
        try:
            return Response(await upstream.read(), upstream.status,
                            media_type="application/json")
        finally:
            upstream.release()

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        finally:
            upstream.release()

    return StreamingResponse(relay(), upstream.status, media_type="text/event-stream")


app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])],
                lifespan=_lifespan)
