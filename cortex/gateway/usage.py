"""Token counts read off a neuron's answer, whole or streamed, for the request record.

The proxy passes the bytes through untouched; it only peeks for `usage`, which every
answer kind carries in its own shape (embeddings have no completion tokens).
"""

from __future__ import annotations

import msgspec

__all__ = ["Counts", "stream_usage", "usage_of"]


class Counts(msgspec.Struct):
    """Usage as any answer carries it: embeddings have no completion tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class _UsageView(msgspec.Struct):
    usage: Counts | None = None


_usage_decoder = msgspec.json.Decoder(_UsageView)


def usage_of(data: bytes) -> Counts | None:
    try:
        return _usage_decoder.decode(data).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def stream_usage(chunk: bytes) -> Counts | None:
    """Usage from the SSE frames of one chunk, if one carries it (the last ones do)."""
    found = None
    for frame in chunk.split(b"\n\n"):
        if frame.startswith(b"data: {") and b'"usage":{' in frame:
            found = usage_of(frame[6:]) or found
    return found
