"""Dialects: the API dialects this gateway serves, and which one answers for a path.

An error is answered in the envelope of the dialect whose path prefix is the longest
match (an Anthropic client gets Anthropic errors, unknown routes under its prefix
included), else in OpenAI's; the app's error handlers, its middleware and the drain
(cortex.gateway.server) all ask here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from starlette.responses import JSONResponse, Response

from cortex.dialect import Dialect
from cortex.errors import CortexError

__all__ = ["Dialects"]


class Dialects:
    def __init__(self, dialects: Iterable[Dialect]) -> None:
        self._dialects = list(dialects)

    def __iter__(self) -> Iterator[Dialect]:
        return iter(self._dialects)

    def dialect_for(self, path: str) -> Dialect | None:
        """The dialect with the longest path prefix matching `path`."""
        best: tuple[int, Dialect | None] = (-1, None)
        for dialect in self._dialects:
            for prefix in dialect.prefixes:
                if path.startswith(prefix) and len(prefix) > best[0]:
                    best = (len(prefix), dialect)
        return best[1]

    def error_response(self, path: str, exc: CortexError) -> Response:
        """`exc` answered in the envelope of `path`'s dialect (OpenAI's when none)."""
        dialect = self.dialect_for(path)
        if dialect is not None:
            return dialect.error_response(exc)
        return JSONResponse(exc.openai_envelope(), status_code=exc.status,
                            headers=exc.headers())

    def refusal(self, path: str, exc: CortexError) -> Response:
        """`exc` answered by a guard before the request's body is read. The connection
        closes after it, and says so: hypercorn closes a connection whose request body
        is still arriving, and a client that reused it would race that close (a POST
        then fails with "server disconnected")."""
        response = self.error_response(path, exc)
        response.headers["connection"] = "close"
        return response
