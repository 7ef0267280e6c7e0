"""The last requests this gateway finished, for the /ui dashboard's activity log.

    GET /admin/requests[?limit=N]    newest first: model, node, dialect, status, tokens,
                                     TTFT, duration (at most ACTIVITY_SIZE)

An observer of request_finished, like the metrics and traffic ones: it keeps the records
it is handed, in memory, so a restarted gateway starts with an empty log. The Prometheus
series (cortex.metrics) are the durable view; this is the "what just happened" one.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cortex.errors import InvalidRequest
from cortex.hookspecs import hookimpl
from cortex.records import RequestRecord

__all__ = ["ACTIVITY_PLUGIN", "ACTIVITY_SIZE", "Activity", "activity_routes"]

#: The name the gateway registers this observer under.
ACTIVITY_PLUGIN = "cortex.gateway.activity"
#: Records kept; the oldest goes when one more arrives.
ACTIVITY_SIZE = 200
#: Characters of a model name kept: an unknown one is whatever the client sent.
MAX_MODEL = 256


class Activity:
    """The last `size` finished requests, each with the wall-clock time it ended."""

    def __init__(self, size: int = ACTIVITY_SIZE) -> None:
        self._records: collections.deque[tuple[float, RequestRecord]] = \
            collections.deque(maxlen=size)

    @hookimpl
    def request_finished(self, record: RequestRecord) -> None:
        if len(record.model) > MAX_MODEL:  # a client's made-up name is not kept whole
            record = msgspec.structs.replace(record, model=record.model[:MAX_MODEL] + "...")
        self._records.append((time.time(), record))

    def describe(self, limit: int = ACTIVITY_SIZE) -> list[dict[str, Any]]:
        """Newest first; `finished_at` is epoch seconds."""
        out: list[dict[str, Any]] = []
        for finished_at, record in reversed(self._records):
            if len(out) >= limit:
                break
            out.append({"finished_at": round(finished_at, 3), **msgspec.to_builtins(record)})
        return out


def activity_routes(activity: Activity) -> list[BaseRoute]:
    async def requests(request: Request) -> Response:
        given = request.query_params.get("limit", str(ACTIVITY_SIZE))
        try:
            limit = int(given)
        except ValueError:
            limit = -1
        if not 1 <= limit <= ACTIVITY_SIZE:
            raise InvalidRequest(f"limit must be a whole number from 1 to {ACTIVITY_SIZE}",
                                 param="limit")
        return JSONResponse({"requests": activity.describe(limit)})

    return [Route("/admin/requests", requests)]
