"""The neuron's OpenAI answers as Ollama's: `/api/chat` and `/api/generate` objects, one
NDJSON line per streamed piece, and the final `done` object with Ollama's statistics.

A `Reply` is made per request and fed the neuron's stream (chat or text completion
chunks) payload by payload. Text goes out as it comes; tool calls are gathered from
their deltas and sent whole in one line before the last, as Ollama sends them (with
arguments as an object). The counts are the neuron's usage; the durations, in
nanoseconds, are what this gateway measured: the load it waited for, the prefill up to
the first token, and the generation after it. A whole (non-streamed) answer only shows
its end, so its generation time is all of it after the load.

A thinking model's reasoning (the neuron's `reasoning_content`, or `reasoning`) is
Ollama's `thinking`, beside `content` (chat) or `response` (generate), in lines of its
own while streamed; with `think: false` it is left out, and a model that does not
reason has none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from cortex import UpstreamError

__all__ = ["Reply", "created_at"]

Kind = Literal["chat", "generate"]
_NS = 1_000_000_000


def created_at(now: Callable[[], float] = time.time) -> str:
    """RFC 3339 in UTC, as Ollama's `created_at`."""
    return datetime.fromtimestamp(now(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _CallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # another server's name for it
    tool_calls: list[_CallDelta] | None = None

    def thought(self) -> str:
        return self.reasoning_content or self.reasoning or ""


class _Choice(msgspec.Struct):
    delta: _Message | None = None
    message: _Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Error(msgspec.Struct):
    message: str = "the neuron failed"


class _Answer(msgspec.Struct):
    """A chunk or a whole answer, chat or text completion, or an error frame."""

    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: _Error | str | None = None


_answer = msgspec.json.Decoder(_Answer)


def _decode(data: bytes) -> _Answer:
    try:
        return _answer.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(f"the neuron's answer could not be read: {exc}") from None


def _arguments(name: str, text: str) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as Ollama's object."""
    try:
        value = msgspec.json.decode(text or "{}")
    except msgspec.DecodeError:
        raise UpstreamError(f"the model called `{name}` with arguments that are not "
                            "JSON") from None
    if not isinstance(value, dict):
        raise UpstreamError(f"the model called `{name}` with arguments that are not a "
                            "JSON object")
    return value


class Reply:
    """One answer in Ollama's shape: `model` is the name the client asked for,
    `started` when the request arrived (time.monotonic), `load_seconds` the load it
    waited for before it was sent on, `thinking` whether reasoning is shown."""

    def __init__(self, kind: Kind, model: str, *, started: float,
                 load_seconds: float = 0.0, thinking: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.kind, self.model, self.thinking = kind, model, thinking
        self.started, self.load_seconds = started, load_seconds
        self._clock, self._wall = clock, wall
        self.sent = started + load_seconds
        self.first: float | None = None
        self.calls: dict[int, list[str]] = {}  # index: [name, arguments, id]
        self.finish_reason: str | None = None
        self.usage = _Usage()
        self.done = False

    # --- lines ----------------------------------------------------------------------------

    def _line(self, text: str, *, thought: str = "",
              tool_calls: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
        """One object; `thinking` only when there is some to show (as Ollama omits it)."""
        head = {"model": self.model, "created_at": created_at(self._wall)}
        thinking = {"thinking": thought} if thought and self.thinking else {}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text, **thinking}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {**head, "message": message, **extra}
        return {**head, "response": text, **thinking, **extra}

    def empty(self) -> dict[str, Any]:
        """A line with nothing in it: sent while the answer has not begun."""
        return self._line("", done=False)

    def _stats(self) -> dict[str, Any]:
        end = self._clock()
        first = self.first if self.first is not None else end
        return {"total_duration": int((end - self.started) * _NS),
                "load_duration": int(self.load_seconds * _NS),
                "prompt_eval_count": self.usage.prompt_tokens,
                "prompt_eval_duration": int(max(0.0, first - self.sent) * _NS),
                "eval_count": self.usage.completion_tokens,
                "eval_duration": int(max(0.0, end - first) * _NS)}

    def _reason(self) -> str:
        return "length" if self.finish_reason == "length" else "stop"

    def _tool_calls(self) -> list[dict[str, Any]]:
        """Each call with its id (as Ollama sends it), which a client may give back as
        the result's `tool_call_id`: two calls of one tool are then told apart."""
        return [{**({"id": call_id} if call_id else {}),
                 "function": {"index": index, "name": name,
                              "arguments": _arguments(name, arguments)}}
                for index, (name, arguments, call_id) in sorted(self.calls.items())]

    # --- a stream ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """One `data:` payload of the neuron's stream; the lines it makes."""
        if data.strip() == b"[DONE]":
            return self.finish()
        answer = _decode(data)
        if answer.error is not None:
            error = answer.error
            raise UpstreamError(error if isinstance(error, str) else error.message)
        if answer.usage is not None:
            self.usage = answer.usage
        lines: list[dict[str, Any]] = []
        for choice in answer.choices or ():
            text, thought = choice.text, ""
            if choice.delta is not None:
                text, thought = choice.delta.content, choice.delta.thought()
                for call in choice.delta.tool_calls or ():
                    self._gather(call)
            if text or thought:
                if self.first is None:
                    self.first = self._clock()
                if text or self.thinking:
                    lines.append(self._line(text or "", thought=thought, done=False))
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
                if self.first is None:
                    self.first = self._clock()
        return lines

    def _gather(self, call: _CallDelta) -> None:
        if self.first is None:
            self.first = self._clock()
        slot = self.calls.setdefault(call.index or 0, ["", "", ""])
        if call.id:
            slot[2] = call.id
        if call.function is not None:
            if call.function.name:
                slot[0] = call.function.name
            slot[1] += call.function.arguments or ""

    def finish(self) -> list[dict[str, Any]]:
        """The last lines: the tool calls (if any), then `done` with the statistics."""
        if self.done:
            return []
        if self.finish_reason is None:
            raise UpstreamError("the neuron's stream ended before the answer did")
        self.done = True
        lines = [self._line("", tool_calls=self._tool_calls(), done=False)] \
            if self.calls and self.kind == "chat" else []
        lines.append(self._line("", done=True, done_reason=self._reason(), **self._stats()))
        return lines

    # --- a whole answer ---------------------------------------------------------------------

    def whole(self, body: bytes) -> dict[str, Any]:
        """A whole chat or text completion as one Ollama object."""
        answer = _decode(body)
        if not answer.choices:
            raise UpstreamError("the neuron's answer has no choices")
        choice = answer.choices[0]
        self.usage = answer.usage or _Usage()
        self.finish_reason = choice.finish_reason or "stop"
        text, thought = choice.text or "", ""
        if choice.message is not None:
            text, thought = choice.message.content or "", choice.message.thought()
            for index, call in enumerate(choice.message.tool_calls or ()):
                self._gather(msgspec.structs.replace(call, index=index))
        self.first = self.sent  # only the end was seen: all of it counts as generation
        self.done = True
        calls = self._tool_calls() if self.kind == "chat" else None
        return self._line(text, thought=thought, tool_calls=calls, done=True,
                          done_reason=self._reason(), **self._stats())
