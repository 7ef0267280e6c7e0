"""Errors on Anthropic routes (api-conformance §3.5, §6.7): status, `error.type`, and
context overflow in the words Claude Code acts on."""

from __future__ import annotations

import re

from cortex import CortexError, InvalidRequest, Timeout, Unavailable, UpstreamError

from .types import ErrorDetail, ErrorEvent

__all__ = ["anthropic_error", "anthropic_error_type", "anthropic_status", "from_error_event"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                402: "billing_error", 403: "permission_error", 404: "not_found_error",
                413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                504: "timeout_error", 529: "overloaded_error"}
_BY_TYPE: dict[str, type[CortexError]] = {
    "invalid_request_error": InvalidRequest, "overloaded_error": Unavailable,
    "timeout_error": Timeout}
# Ours (cortex.errors.ContextLengthExceeded) and llama-cpp-python's overflow wording.
_OUR_OVERFLOW = re.compile(
    r"prompt is too long: (\d+) tokens > (\d+) maximum(?: \(with max_tokens (\d+)\))?")
_LLAMA_OVERFLOW = re.compile(
    r"maximum context length is (\d+) tokens.*?\((\d+) in the messages, (\d+) in the completion",
    re.S)


def anthropic_status(status: int) -> int:
    """The HTTP status on Anthropic routes: 503 (busy) is 529, a 422 is a 400."""
    return {503: 529, 422: 400}.get(status, status)


def anthropic_error_type(status: int) -> str:
    """`error.type` for an Anthropic-route status: unlisted 4xx are invalid_request_error."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def _message(exc: CortexError) -> str:
    """Context overflow in the words Claude Code acts on (compaction, smaller max_tokens)."""
    if found := _OUR_OVERFLOW.search(exc.message):
        prompt, limit, extra = found.group(1, 2, 3)
    elif found := _LLAMA_OVERFLOW.search(exc.message):
        limit, prompt, extra = found.group(1, 2, 3)
    else:
        return exc.message
    if extra is None or int(prompt) >= int(limit):
        return f"prompt is too long: {prompt} tokens > {limit} maximum"
    return (f"input length and `max_tokens` exceed context limit: {prompt} + {extra} > {limit}, "
            "decrease input length or `max_tokens` and try again")


def anthropic_error(exc: CortexError) -> tuple[int, ErrorEvent]:
    """The status and body for `exc` on an Anthropic route (also the stream's error event)."""
    status = anthropic_status(exc.status)
    return status, ErrorEvent(error=ErrorDetail(type=anthropic_error_type(status),
                                                message=_message(exc)))


def from_error_event(event: ErrorEvent) -> CortexError:
    return _BY_TYPE.get(event.error.type, UpstreamError)(event.error.message)
