"""The default request log: one line per finished request, on the `cortex.requests` logger.

A plain module among the default plugins because it holds no state (metrics, which hold a
MeterProvider per app, are registered by the app instead); block
`cortex_plugins.observers` to silence it. The line is logfmt, and the record also rides
on the LogRecord as `cortex_request` (a dict) for JSON log handlers. What a client sent
(the model it asked for, its `x-request-id`) is escaped and cut short
(cortex.records.log_value): it can neither start a line nor add a field.
"""

from __future__ import annotations

import logging

import msgspec

from cortex import MAX_LOGGED, RequestRecord, hookimpl, log_value

__all__ = ["request_line"]

log = logging.getLogger("cortex.requests")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def request_line(record: RequestRecord) -> str:
    """The logfmt line for one request, with the reason of a 4xx or 5xx; text from the
    client or a neuron is quoted and escaped where it is not plain (log_value)."""
    line = (f"request_id={log_value(record.request_id or '-')} method={record.method} "
            f"path={log_value(record.path or '-')} model={log_value(record.model)} "
            f"node={log_value(record.node or '-')} dialect={record.dialect} "
            f"status={record.status} "
            f"stream={str(record.stream).lower()} tokens_in={record.prompt_tokens} "
            f"tokens_out={record.completion_tokens} ttft={_seconds(record.ttft_seconds)} "
            f"duration={record.duration_seconds:.3f} queue={record.queue_seconds:.3f} "
            f"retries={record.retries}")
    return line + (f" reason={log_value(record.reason, 256)}" if record.reason else "")


@hookimpl
def request_finished(record: RequestRecord) -> None:
    if log.isEnabledFor(logging.INFO):
        fields = msgspec.structs.asdict(record)
        for key in ("request_id", "model", "path"):  # JSON handlers escape; the length is ours
            if len(fields[key]) > MAX_LOGGED:
                fields[key] = fields[key][:MAX_LOGGED] + "..."
        log.info(request_line(record), extra={"cortex_request": fields})
