"""Errors as Ollama sends them: `{"error": "..."}` with the status, and one such line to
end an NDJSON stream that failed after it began."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from cortex import CortexError, InvalidRequest

__all__ = ["NotSupported", "error_line", "error_response", "in_ollamas_words"]

_encode = msgspec.json.Encoder().encode


class _Detail(msgspec.Struct):
    code: str | None = None
    param: str | None = None


class _Envelope(msgspec.Struct):
    error: _Detail | None = None


_envelope = msgspec.json.Decoder(_Envelope)


class NotSupported(CortexError):
    """A route of Ollama's that has no meaning here (models are the fleet's profiles)."""

    status = 501


def in_ollamas_words(body: bytes, exc: CortexError) -> CortexError:
    """A neuron's error (its OpenAI envelope `body`, rebuilt as `exc`) in Ollama's words
    where a client may show them: an embedding input over the context (`truncate:
    false`, or the legacy /api/embeddings, which never truncates)."""
    try:
        detail = _envelope.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return exc
    if detail is not None and detail.code == "context_length_exceeded" \
            and detail.param == "input":
        return InvalidRequest(f"the input length exceeds the context length ({exc.message})")
    return exc


def error_line(exc: CortexError) -> bytes:
    return _encode({"error": exc.message}) + b"\n"


def error_response(exc: CortexError) -> Response:
    return Response(_encode({"error": exc.message}), status_code=exc.status,
                    media_type="application/json", headers=exc.headers())
