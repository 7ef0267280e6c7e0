"""One Ollama answer: the Exchanges the gateway asks to encode a neuron's reply, its
stream (NDJSON, one object a line) and its errors."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
from starlette.responses import Response

from cortex import CortexError, Exchange, SSEReader, UpstreamError

from .errors import error_line, error_response
from .reply import Reply

__all__ = ["EmbedExchange", "OllamaExchange", "json_response", "ndjson"]

_encode = msgspec.json.Encoder().encode
_NS = 1_000_000_000


def ndjson(lines: Iterable[Any]) -> bytes:
    return b"".join(_encode(line) + b"\n" for line in lines)


def json_response(payload: object) -> Response:
    return Response(_encode(payload), media_type="application/json")


class OllamaExchange(Exchange):
    """An `/api/chat` or `/api/generate` answer, whole or streamed, through its Reply."""

    def __init__(self, answer: Reply) -> None:
        self.answer = answer

    def reply(self, body: bytes) -> Response:
        try:
            return json_response(self.answer.whole(body))
        except CortexError as exc:
            return error_response(exc)

    async def relay(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        answer = self.answer
        reader = SSEReader()
        try:
            async for chunk in chunks:
                for data in reader.feed(chunk):
                    lines = answer.feed(data)
                    if lines:
                        yield ndjson(lines)
                    if answer.done:
                        return
            yield ndjson(answer.finish())
        except CortexError as exc:
            yield error_line(exc)

    def keepalive(self) -> bytes:
        """A line with no text: NDJSON has no comments, and a blank line is not JSON."""
        return ndjson([self.answer.empty()])

    def stream_error(self, exc: CortexError) -> bytes:
        return error_line(exc)


class _Embedding(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int = 0


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]
    usage: _EmbeddingUsage | None = None


_embeddings = msgspec.json.Decoder(_Embeddings)


def _shortened(vector: list[float], dimensions: int | None) -> list[float]:
    """Ollama's `dimensions`: a longer vector's first N components, renormalised; a
    shorter one as it is."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [x / norm for x in head]


class EmbedExchange(Exchange):
    """`/api/embed` (every input's vector) or the legacy `/api/embeddings` (one)."""

    def __init__(self, model: str, *, started: float, load_seconds: float,
                 legacy: bool = False, dimensions: int | None = None) -> None:
        self.model, self.started = model, started
        self.load_seconds, self.legacy = load_seconds, legacy
        self.dimensions = dimensions

    def reply(self, body: bytes) -> Response:
        try:
            answer = _embeddings.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return error_response(UpstreamError(f"the neuron's answer could not be read: "
                                                f"{exc}"))
        vectors = [_shortened(item.embedding, self.dimensions)
                   for item in sorted(answer.data, key=lambda d: d.index)]
        if self.legacy:
            return json_response({"embedding": vectors[0] if vectors else []})
        return json_response({
            "model": self.model, "embeddings": vectors,
            "total_duration": int((time.monotonic() - self.started) * _NS),
            "load_duration": int(self.load_seconds * _NS),
            "prompt_eval_count": answer.usage.prompt_tokens if answer.usage else 0})

    def stream_error(self, exc: CortexError) -> bytes:
        return error_line(exc)
