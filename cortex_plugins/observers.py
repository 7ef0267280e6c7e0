"""The default request log: one line per finished request, on the `cortex.requests` logger.

A plain module among the default plugins because it holds no state (metrics, which hold a
MeterProvider per app, are registered by the app instead); block
`cortex_plugins.observers` to silence it. The line is logfmt, and the record also rides
on the LogRecord as `cortex_request` (a dict) for JSON log handlers.
"""

from __future__ import annotations

import logging

import msgspec

from cortex import RequestRecord, hookimpl

__all__ = ["request_line"]

log = logging.getLogger("cortex.requests")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def request_line(record: RequestRecord) -> str:
    """The logfmt line for one request (values here never contain spaces or quotes,
    except model ids, which are quoted when they do)."""
    model = record.model if " " not in record.model and '"' not in record.model \
        else msgspec.json.encode(record.model).decode()
    return (f"request_id={record.request_id or '-'} model={model} "
            f"node={record.node or '-'} dialect={record.dialect} status={record.status} "
            f"stream={str(record.stream).lower()} tokens_in={record.prompt_tokens} "
            f"tokens_out={record.completion_tokens} ttft={_seconds(record.ttft_seconds)} "
            f"duration={record.duration_seconds:.3f} queue={record.queue_seconds:.3f} "
            f"retries={record.retries}")


@hookimpl
def request_finished(record: RequestRecord) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(request_line(record),
                 extra={"cortex_request": msgspec.structs.asdict(record)})
