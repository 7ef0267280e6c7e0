"""Streamed reply: the neuron's chunks → Anthropic events (api-conformance §6.5).

One StreamTranslator per request. Stop sequences are matched here by default
(`match_stops`), because a neuron strips a stop string and reports `stop` exactly as
for EOS, so only the gateway can say which one fired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from cortex import CortexError, StopMatcher, sse_frame
from cortex import Usage as OpenAIUsage
from cortex.dialect import BackendChunk, BackendError, BackendUsage, ToolCallDelta

from .errors import anthropic_error
from .reply import ToolIds, anthropic_usage, backend_usage, is_object, new_message_id, stop_reason
from .types import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    ErrorDetail,
    ErrorEvent,
    InputJSONDelta,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessagesRequest,
    MessageStartEvent,
    MessageStopEvent,
    PingEvent,
    ResponseBlock,
    SignatureDelta,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    Usage,
)

__all__ = ["StreamTranslator", "encode_sse"]


class _ToolState:
    __slots__ = ("args", "block", "id", "index", "name")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.name = ""
        self.args = ""
        self.block: int | None = None  # its content-block index once started


class _OpenBlock:
    __slots__ = ("index", "kind", "tool")

    def __init__(self, kind: Literal["text", "thinking", "tool_use"], index: int,
                 tool: _ToolState | None) -> None:
        self.kind = kind
        self.index = index
        self.tool = tool


class StreamTranslator:
    """Backend chunks in, Anthropic events out, for one streamed reply (§6.5).

    Call `feed()` per backend chunk, `ping()` while waiting (cold load, long prefill),
    then `finish()` at the backend's end, or as soon as `stopped` turns true (after
    closing the upstream, which ends generation), or `error()` when it fails. Each
    returns the events to send, in order. The first event is always one message_start,
    held until the backend tells the prompt's counts (the neuron's `prompt_usage` chunk)
    or sends output, a finish or its end, so its `input_tokens` is the prompt's; until
    then `started` is false and `ping()` returns nothing (Anthropic allows no event
    before message_start). Block indices run 0, 1, 2 … and a block is stopped before
    the next starts; after message_stop or an error every call returns [].

    Tool calls are keyed on their `index` alone, taking `id` and `name` from their first
    appearance (llama-cpp-python repeats them in every chunk, §7.2). The open call's
    argument bytes stream as they come; a call that begins while the open one's
    arguments are not yet a complete JSON object waits (buffered) and follows whole,
    so interleaved parallel calls still give non-interleaved blocks. Text after a
    tool call is held and sent as a last text block. Whitespace never opens a text
    block, and reasoning becomes a thinking block only before any text or tool call.
    """

    def __init__(self, *, model: str, message_id: str | None = None,
                 stop_sequences: Sequence[str] = (), input_tokens: int | None = None,
                 thinking: bool = False) -> None:
        self._model = model
        self._id = message_id or new_message_id()
        self._ids = ToolIds(self._id)
        self._scan = StopMatcher(stop_sequences)
        self._input_tokens = input_tokens
        self._thinking = thinking
        self._started = False
        self._closed = False
        self._next = 0
        self._open: _OpenBlock | None = None
        self._tools: dict[int, _ToolState] = {}
        self._tool_started = False
        self._content_started = False
        self._whitespace = ""
        self._late: list[str] = []
        self._finish: str | None = None
        self._cause: str | None = None  # the neuron's `stop_cause` of a `length` finish
        self._stop_sequence: str | None = None
        self._usage: BackendUsage | None = None  # the reply's, on or after its finish
        self._prompt: BackendUsage | None = None  # the prompt's, sent before any output
        self._pieces = 0  # chunks that carried output: the token count when none is reported

    @classmethod
    def for_request(cls, request: MessagesRequest, *, match_stops: bool = True,
                    input_tokens: int | None = None,
                    message_id: str | None = None) -> StreamTranslator:
        """A translator set up as `to_openai(request, match_stops=…)` expects.

        Reasoning is shown only when the client asked for thinking (§6.6).
        """
        thinking = request.thinking is not None and request.thinking.type != "disabled"
        return cls(model=request.model, message_id=message_id, input_tokens=input_tokens,
                   stop_sequences=(request.stop_sequences or ()) if match_stops else (),
                   thinking=thinking)

    @property
    def message_id(self) -> str:
        return self._id

    @property
    def started(self) -> bool:
        """message_start was emitted: events may follow (a ping, not an SSE comment)."""
        return self._started

    @property
    def stopped(self) -> bool:
        """A stop sequence matched: read no more, close the upstream, call `finish()`."""
        return self._stop_sequence is not None

    @property
    def closed(self) -> bool:
        """message_stop or an error was emitted; nothing more will be."""
        return self._closed

    # --- the public steps ------------------------------------------------------------------

    def start(self) -> list[StreamEvent]:
        """message_start, once, now: its usage is the prompt's as the backend told it
        (reported as message_delta's is), else the counted prompt, else 0."""
        if self._started or self._closed:
            return []
        self._started = True
        told = self._prompt or self._usage
        usage = backend_usage(told, 0) if told is not None else \
            Usage(input_tokens=self._input_tokens or 0, output_tokens=0)
        return [MessageStartEvent(message=Message(
            id=self._id, model=self._model, content=[], stop_reason=None, stop_sequence=None,
            usage=usage))]

    def ping(self) -> list[StreamEvent]:
        """A keep-alive for intermediaries (Claude Code's idle watchdog ignores pings);
        none before message_start, where the dialect sends an SSE comment instead."""
        return [PingEvent()] if self._started and not self._closed else []

    def feed(self, chunk: BackendChunk) -> list[StreamEvent]:
        if self._closed:
            return []
        if chunk.error is not None:
            return self._backend_error(chunk.error)
        if chunk.usage is not None:
            if self._started or chunk.choices:
                self._usage = chunk.usage
            else:  # before any output: the prompt's counts (prompt_usage), not the reply's
                self._prompt = chunk.usage
        if not (self._started or self._prompt is not None or _output(chunk)):
            return []  # message_start waits (a role chunk, an empty delta)
        events = self.start()
        if self.stopped or not chunk.choices:
            return events
        choice = next((c for c in chunk.choices if c.index == 0), chunk.choices[0])
        delta = choice.delta
        if delta is not None:  # nulls and [] read as absent (LiteLLM#29286)
            if reasoning := delta.reasoning_content or delta.reasoning:
                self._pieces += 1
                events += self._reasoning(reasoning)
            if delta.content:
                self._pieces += 1
                events += self._text(delta.content)
            for position, call in enumerate(delta.tool_calls or ()):
                if self.stopped:
                    break
                events += self._tool_delta(call, position)
        if choice.finish_reason and not self.stopped:
            self._finish, self._cause = choice.finish_reason, choice.stop_cause
        return events

    def finish(self, usage: OpenAIUsage | None = None) -> list[StreamEvent]:
        """Close every block, then message_delta and message_stop.

        `usage` (counted by the gateway) beats the backend's usage chunk, which beats
        counting output chunks. A backend that ended without a finish_reason failed: that
        gives an error event, never a normal-looking end (§2.3).
        """
        if self._closed:
            return []
        if self._finish is None and not self.stopped:
            return self._fail("api_error", "the backend stream ended before it finished")
        events = self.start()
        if not self.stopped:
            events += self._emit_text(self._scan.flush())
        named = sorted((t for t in self._tools.values() if t.name), key=lambda t: t.index)
        if self._finish != "length":  # a cut reply may hold truncated arguments
            for tool in named:
                if tool.args.strip() and not is_object(tool.args):
                    return events + self._fail("api_error", f"the backend's arguments for tool "
                                                            f"`{tool.name}` are not a JSON object")
        for tool in named:
            if tool.block is None:
                events += self._start_tool(tool)
        late = "".join(self._late)
        if late.strip():
            events += self._open_block("text")
            events.append(self._delta(TextDelta(text=late)))
        events += self._close_open()
        self._closed = True
        return [*events,
                MessageDeltaEvent(
                    delta=MessageDelta(stop_reason=stop_reason(
                        self._finish, tool_use=self._tool_started,
                        stop_sequence=self._stop_sequence, stop_cause=self._cause),
                        stop_sequence=self._stop_sequence),
                    usage=self._final_usage(usage)),
                MessageStopEvent()]

    def error(self, exc: BaseException) -> list[StreamEvent]:
        """The error event for a failure after the response began; the stream ends there."""
        if self._closed:
            return []
        if isinstance(exc, CortexError):
            _, body = anthropic_error(exc)
            return self._fail(body.error.type, body.error.message)
        return self._fail("api_error", str(exc) or type(exc).__name__)

    # --- blocks ----------------------------------------------------------------------------

    def _delta(self, delta: TextDelta | InputJSONDelta | ThinkingDelta | SignatureDelta
               ) -> ContentBlockDeltaEvent:
        assert self._open is not None
        return ContentBlockDeltaEvent(index=self._open.index, delta=delta)

    def _open_block(self, kind: Literal["text", "thinking", "tool_use"],
                    tool: _ToolState | None = None) -> list[StreamEvent]:
        events = self._close_open()
        block: ResponseBlock
        if tool is not None:
            block = ToolUseBlock(id=self._ids.assign(tool.id), name=tool.name, input={})
            tool.block = self._next
        elif kind == "thinking":
            block = ThinkingBlock(thinking="", signature="")
        else:
            block = TextBlock(text="")
        self._open = _OpenBlock(kind, self._next, tool)
        self._content_started |= kind != "thinking"
        events.append(ContentBlockStartEvent(index=self._next, content_block=block))
        self._next += 1
        return events

    def _close_open(self) -> list[StreamEvent]:
        if self._open is None:
            return []
        events: list[StreamEvent] = []
        if self._open.kind == "thinking":
            # Claude Code renders thinking only once it has a signature, even an empty one.
            events.append(self._delta(SignatureDelta(signature="")))
        elif self._open.tool is not None and not self._open.tool.args.strip():
            events.append(self._delta(InputJSONDelta(partial_json="{}")))
        events.append(ContentBlockStopEvent(index=self._open.index))
        self._open = None
        return events

    def _reasoning(self, text: str) -> list[StreamEvent]:
        if not self._thinking or self._content_started:
            return []  # unasked for, or late: never thinking after text or a tool call
        events: list[StreamEvent] = []
        if self._open is None:
            events += self._open_block("thinking")
        events.append(self._delta(ThinkingDelta(thinking=text)))
        return events

    def _text(self, text: str) -> list[StreamEvent]:
        safe, hit = self._scan.feed(text)
        events = self._emit_text(safe)
        if hit is not None:
            self._stop_sequence = hit
        return events

    def _emit_text(self, text: str) -> list[StreamEvent]:
        if not text:
            return []
        if self._tool_started:
            self._late.append(text)
            return []
        if self._open is not None and self._open.kind == "text":
            return [self._delta(TextDelta(text=text))]
        pending = self._whitespace + text
        if not pending.strip():  # a text block must hold more than whitespace (§3.2)
            self._whitespace = pending
            return []
        self._whitespace = ""
        events = self._open_block("text")
        events.append(self._delta(TextDelta(text=pending)))
        return events

    def _tool_delta(self, call: ToolCallDelta, position: int) -> list[StreamEvent]:
        key = call.index if call.index is not None else position
        tool = self._tools.get(key)
        if tool is None:
            tool = self._tools[key] = _ToolState(key)
        if call.id and tool.id is None:
            tool.id = call.id
        args = ""
        if call.function is not None:
            if call.function.name and not tool.name:
                tool.name = call.function.name
            args = call.function.arguments or ""
        events: list[StreamEvent] = []
        if args:
            self._pieces += 1
            tool.args += args
            if self._open is not None and self._open.tool is tool:
                events.append(self._delta(InputJSONDelta(partial_json=args)))
        return events + self._advance()

    def _advance(self) -> list[StreamEvent]:
        """Start waiting tool calls while nothing unfinished holds the stage."""
        events: list[StreamEvent] = []
        while True:
            waiting = [t for t in self._tools.values() if t.block is None and t.name]
            if not waiting:
                return events
            current = self._open.tool if self._open is not None else None
            if current is not None and not is_object(current.args):
                return events
            events += self._start_tool(min(waiting, key=lambda t: t.index))

    def _start_tool(self, tool: _ToolState) -> list[StreamEvent]:
        events = self._emit_text(self._scan.flush())  # text before a call ends there
        self._whitespace = ""
        events += self._open_block("tool_use", tool)
        self._tool_started = True
        if tool.args:  # bytes bundled with the first chunk count too (LiteLLM#25561)
            events.append(self._delta(InputJSONDelta(partial_json=tool.args)))
        return events

    # --- endings ---------------------------------------------------------------------------

    def _fail(self, kind: str, message: str) -> list[StreamEvent]:
        self._closed = True
        return [ErrorEvent(error=ErrorDetail(type=kind, message=message))]

    def _backend_error(self, error: BackendError | str) -> list[StreamEvent]:
        if isinstance(error, str):
            return self._fail("api_error", error)
        overloaded = error.code == "unavailable" or error.type == "overloaded_error"
        return self._fail("overloaded_error" if overloaded else "api_error", error.message)

    def _final_usage(self, given: OpenAIUsage | None) -> MessageDeltaUsage:
        if given is not None:
            usage = anthropic_usage(given.prompt_tokens, given.completion_tokens)
        elif self._usage is not None:
            usage = backend_usage(self._usage, self._usage.completion_tokens or 0)
        elif self._prompt is not None:  # cut at a stop sequence: the prompt's counts still
            usage = backend_usage(self._prompt, self._pieces)
        else:
            return MessageDeltaUsage(output_tokens=self._pieces)
        return MessageDeltaUsage(
            output_tokens=usage.output_tokens, input_tokens=usage.input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens)


def _output(chunk: BackendChunk) -> bool:
    """The chunk carries output or a finish (not a role chunk's empty delta)."""
    return any(choice.finish_reason or (choice.delta is not None and (
        choice.delta.content or choice.delta.reasoning_content or choice.delta.reasoning
        or choice.delta.tool_calls)) for choice in chunk.choices or ())


def encode_sse(event: StreamEvent) -> bytes:
    """`event: <type>\\ndata: <json>\\n\\n`: the SDKs dispatch on the event name (§1.4)."""
    return sse_frame(event, event=str(event.__struct_config__.tag))
