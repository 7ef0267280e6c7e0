"""Records handed to observer hooks (request_finished, fleet_event)."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["FleetEvent", "RequestRecord"]


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


class FleetEvent(msgspec.Struct, kw_only=True):
    kind: Literal["loaded", "unloaded", "evicted", "load_failed", "node_up", "node_down"]
    node: str
    model: str | None = None
    reason: str | None = None
    seconds: float | None = None
