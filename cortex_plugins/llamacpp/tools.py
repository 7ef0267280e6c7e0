"""Tool calls out of generated text, for models whose chat template offers tools.

Models announce tool calls in a few textual conventions; we recognise the common ones
and turn them into OpenAI `tool_calls`:

- Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (repeatable)
- Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`
- Llama 3.x and others: the whole reply is `{"name": ..., "parameters"|"arguments": ...}`

While streaming, text is passed through until a marker appears; from then on the rest
is held and parsed when generation ends. Text that does not parse is returned as text,
except a reply cut off by its token budget (max_tokens or a full context): there the
calls that came complete stand and the last, unfinished one is dropped.

While text is held, `with_tool_calls` passes an empty delta at once and then every
HEARTBEAT_SECONDS: the neuron's response starts when the first token is out rather than
when held text is let go, and the gateway, which gives up on a neuron silent for
`request_timeout`, sees it alive (a base model that opens with `{` may write thousands of
tokens that are held to the end).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from cortex import Done, GenerationEvent, TextDelta, ToolCall, ToolCallFunction, ToolCalls

__all__ = ["HEARTBEAT_SECONDS", "ToolCallParser", "with_tool_calls"]

#: Most seconds between deltas while text is held (far below any request_timeout).
HEARTBEAT_SECONDS = 5.0

_MARKERS = ("<tool_call>", "[TOOL_CALLS]")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(</tool_call>|$)", re.S)
_json = json.JSONDecoder()


def _call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                    function=ToolCallFunction(name=obj["name"], arguments=arguments))


def _calls(objs: list[Any]) -> list[ToolCall] | None:
    calls = [_call(o) for o in objs]
    return None if not calls or any(c is None for c in calls) else [c for c in calls if c]


def _hermes(tail: str, truncated: bool) -> list[Any] | None:
    """The objects of `<tool_call>` blocks; a cut-off last block is left out."""
    objs = []
    for body, closed in _HERMES.findall(tail):
        try:
            objs.append(json.loads(body))
        except ValueError:
            if closed or not truncated:
                return None
    return objs


def _values(text: str, truncated: bool) -> list[Any] | None:
    """A JSON value (an array's elements); of a cut-off array, the complete elements."""
    text = text.strip()
    try:
        loaded = json.loads(text)
        return loaded if isinstance(loaded, list) else [loaded]
    except ValueError:
        if not (truncated and text.startswith("[")):
            return None
    objs: list[Any] = []
    at = 1
    while True:
        try:
            value, at = _json.raw_decode(text, len(text) - len(text[at:].lstrip(" \n\r\t,")))
        except ValueError:
            return objs
        objs.append(value)


def parse_tool_calls(text: str, *, truncated: bool = False) -> tuple[str, list[ToolCall]]:
    """Split a finished reply into leading text and tool calls (none if nothing parses).
    `truncated`: generation was cut off, so a last call may be unfinished."""
    for marker in _MARKERS:
        at = text.find(marker)
        if at < 0:
            continue
        head, tail = text[:at], text[at:]
        objs = _hermes(tail, truncated) if marker == "<tool_call>" else \
            _values(tail[len(marker):], truncated)
        calls = _calls(objs or [])
        return (head.rstrip(), calls) if calls else (text, [])
    if text.strip().startswith(("{", "[")):
        calls = _calls(_values(text, truncated) or [])
        if calls:
            return "", calls
    return text, []


class ToolCallParser:
    """Streaming filter: feed text pieces, get back text that is safe to show now."""

    def __init__(self) -> None:
        self._held = ""
        self._holding = False
        self._seen_text = False

    def feed(self, text: str) -> str:
        if self._holding:
            self._held += text
            return ""
        buffer = self._held + text
        for marker in _MARKERS:
            at = buffer.find(marker)
            if at >= 0:
                self._holding = True
                self._held = buffer[at:]
                return self._emit(buffer[:at])
        if not self._seen_text and buffer.lstrip()[:1] in ("{", "["):
            self._holding = True  # the whole reply may be one JSON tool call
            self._held = buffer
            return ""
        keep = max((k for m in _MARKERS for k in range(len(m) - 1, 0, -1)
                    if buffer.endswith(m[:k])), default=0)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return self._emit(buffer[: len(buffer) - keep])

    def _emit(self, text: str) -> str:
        if text.strip():
            self._seen_text = True
        return text

    def finish(self, *, truncated: bool = False) -> tuple[str, list[ToolCall]]:
        """Text still held, and the tool calls found in it (`truncated`: generation was
        cut off by its token budget)."""
        held, self._held = self._held, ""
        if not self._holding:
            return held, []
        return parse_tool_calls(held, truncated=truncated)


async def with_tool_calls(events: AsyncIterator[GenerationEvent], *,
                          heartbeat: float = HEARTBEAT_SECONDS,
                          clock: Callable[[], float] = time.monotonic
                          ) -> AsyncIterator[GenerationEvent]:
    """`events` with tool calls parsed out of their text (ToolCalls before Done), and an
    empty TextDelta while text is held: at once, then every `heartbeat` seconds."""
    parser = ToolCallParser()
    shown: float | None = None  # when a delta last went out
    async for event in events:
        if isinstance(event, TextDelta):
            now = clock()
            if text := parser.feed(event.text):
                shown = now
                yield TextDelta(text)
            elif shown is None or now - shown >= heartbeat:
                shown = now
                yield TextDelta("")
            continue
        if isinstance(event, Done):
            rest, calls = parser.finish(truncated=event.finish_reason == "length")
            if rest:
                yield TextDelta(rest)
            if calls:
                yield ToolCalls(calls)
        yield event
