"""The request log's line for what never reached a model: a path no route serves, a
key refused, a body too large or not the dialect's JSON. Requests the proxy handled
have their own line (cortex_plugins.observers, from the RequestRecord); without this,
a client calling `/v1/chat/completion` or sending a wrong key left nothing behind.

One logfmt line on the `cortex.requests` logger for each request answered 4xx or 5xx
without a record, with the error's message as the client got it (`reason`). Answers
below 400 (the dashboard's polls, /health) are not logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cortex.records import log_value

__all__ = ["RECORDED", "RequestLog", "refusal_line"]

log = logging.getLogger("cortex.requests")

#: Set in a request's ASGI state once the proxy has made its RequestRecord.
RECORDED = "cortex.recorded"
#: Bytes of an error body read for its message (envelopes are small).
_BODY_LIMIT = 8192


def _reason(body: bytes) -> str | None:
    """The message of an OpenAI or Anthropic error envelope, if `body` is one."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) else None


def refusal_line(request_id: str, method: str, path: str, status: int,
                 reason: str | None) -> str:
    line = (f"request_id={log_value(request_id or '-')} method={log_value(method)} "
            f"path={log_value(path)} status={status}")
    return line + (f" reason={log_value(reason, 256)}" if reason else "")


class RequestLog:
    """ASGI middleware: a line for each refused request that has no RequestRecord."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        answer: dict[str, Any] = {"status": 0, "body": b""}

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body" and answer["status"] >= 400 \
                    and len(answer["body"]) < _BODY_LIMIT:
                answer["body"] += message.get("body", b"")[:_BODY_LIMIT]
            await send(message)

        try:
            await self.app(scope, receive, watching)
        finally:
            state = scope.get("state") or {}
            if answer["status"] >= 400 and not state.get(RECORDED):
                log.info(refusal_line(str(state.get("request_id", "")), scope["method"],
                                      scope["path"], answer["status"],
                                      _reason(answer["body"])))
