"""Errors as Ollama sends them: `{"error": "..."}` with the status, and one such line to
end an NDJSON stream that failed after it began."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from cortex import CortexError

__all__ = ["NotSupported", "error_line", "error_response"]

_encode = msgspec.json.Encoder().encode


class NotSupported(CortexError):
    """A route of Ollama's that has no meaning here (models are the fleet's profiles)."""

    status = 501


def error_line(exc: CortexError) -> bytes:
    return _encode({"error": exc.message}) + b"\n"


def error_response(exc: CortexError) -> Response:
    return Response(_encode({"error": exc.message}), status_code=exc.status,
                    media_type="application/json", headers=exc.headers())
