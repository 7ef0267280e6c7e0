"""Records handed to observer hooks (request_finished, fleet_event), and `log_value`,
the form any text a client sent takes in a log line."""

from __future__ import annotations

import json
import re
from typing import Literal

import msgspec

__all__ = ["MAX_LOGGED", "FleetEvent", "FleetEventKind", "RequestRecord", "log_value"]

#: Characters of client text a log line keeps (a model name may be megabytes of JSON).
MAX_LOGGED = 128
_BARE = re.compile(r"[A-Za-z0-9._:/@+\-]+")


def log_value(text: str, limit: int = MAX_LOGGED) -> str:
    """`text` as one logfmt value that cannot end the line or add a field: bare when it
    is plain (ids, model names), else quoted with every control, quote, backslash and
    non-ASCII character escaped (JSON's escapes; U+2028 and NEL split lines for some
    readers). Cut to `limit` characters, marked with `...`."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=True)


class RequestRecord(msgspec.Struct, kw_only=True):
    request_id: str
    model: str
    node: str | None
    dialect: str
    status: int
    stream: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_seconds: float | None = None
    duration_seconds: float = 0.0
    queue_seconds: float = 0.0
    retries: int = 0
    method: str = "POST"
    path: str = ""
    # Why a 4xx or 5xx: the error's message as the client got it (None for 2xx).
    reason: str | None = None
    # `tokenize`: a token count (Anthropic's count_tokens), not an inference request;
    # metrics and the traffic rates leave it out, the request log keeps it.
    kind: Literal["inference", "tokenize"] = "inference"


FleetEventKind = Literal["load_started", "load_progress", "loaded", "unloaded", "evicted",
                         "load_failed", "pinned", "unpinned", "node_up", "node_down",
                         "draining", "undrained"]


class FleetEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One change in the fleet, as GET /admin/events streams it (docs/gateway.md)."""

    kind: FleetEventKind
    node: str
    model: str | None = None
    reason: str | None = None
    seconds: float | None = None
    # load_started: the estimate (bytes) and the models evicted for it.
    bytes: int | None = None
    victims: tuple[str, ...] = ()
    # load_progress: the neuron's fraction loaded, 0 to 1.
    progress: float | None = None
