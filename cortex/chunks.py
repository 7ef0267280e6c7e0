"""The neuron's OpenAI stream, read tolerantly: one `data:` payload at a time (for the
dialects that translate it: Anthropic, Responses).

Not cortex's ChatCompletionChunk: llama-cpp-python sends explicit nulls (`"content":
null`, `"tool_calls": null`, `"name": null`) that the canonical types reject, and the
reasoning, cache and error fields the translation needs are not in them. Raw dicts
would leave the state machine untyped.
"""

from __future__ import annotations

import msgspec

from cortex.errors import UpstreamError

__all__ = ["BackendChunk", "BackendError", "BackendUsage", "ToolCallDelta", "decode_chunk"]


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    stop_cause: str | None = None  # cortex's, with `length`: "max_tokens" or "context"


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None


class BackendUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None


class BackendError(msgspec.Struct):
    message: str = "the backend failed"
    type: str | None = None
    code: str | int | None = None


class BackendChunk(msgspec.Struct):
    """One `data:` payload of an OpenAI-style stream: a chunk, or an error frame."""

    choices: list[_Choice] | None = None
    usage: BackendUsage | None = None
    error: BackendError | str | None = None


_chunk_decoder = msgspec.json.Decoder(BackendChunk)


def decode_chunk(data: bytes) -> BackendChunk | None:
    """An SSE `data:` payload; None for `[DONE]`. Raises UpstreamError when malformed."""
    if data.strip() == b"[DONE]":
        return None
    try:
        return _chunk_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(f"the backend sent a malformed stream chunk: {exc}") from None
