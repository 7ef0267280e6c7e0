"""Streamed reply: the neuron's chunks → Responses events.

One StreamTranslator per request. Every stream begins `response.created`,
`response.in_progress` (sent at once while a model loads, `response.in_progress`
again every keepalive_interval until it answers), then one output item at a time:
a message (`output_item.added`,
`content_part.added`, `output_text.delta`…, `output_text.done`, `content_part.done`,
`output_item.done`) or a function call (`output_item.added`,
`function_call_arguments.delta`…, `.done`, `output_item.done`), and ends
`response.completed` (or `response.incomplete`) with usage, or `error` then
`response.failed`. Every event carries the next `sequence_number`.
"""

from __future__ import annotations

import msgspec

from cortex import CortexError, sse_frame
from cortex.dialect import BackendChunk, BackendError, BackendUsage, ToolCallDelta

from .errors import error_code
from .reply import CallIds, ContextFilled, Draft, response_usage
from .request import new_id
from .types import (
    ArgumentsDelta,
    ArgumentsDone,
    ContentPartAdded,
    ContentPartDone,
    ErrorEvent,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputMessage,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseObject,
    StreamEvent,
)

__all__ = ["StreamTranslator", "encode_sse"]


def _is_object(raw: str) -> bool:
    try:
        return isinstance(msgspec.json.decode(raw), dict)
    except msgspec.DecodeError:
        return False


class _Call:
    __slots__ = ("args", "call_id", "index", "item_id", "name", "output_index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.call_id: str | None = None
        self.name = ""
        self.args = ""
        self.item_id = new_id("fc")
        self.output_index: int | None = None  # once its item was added


class _Message:
    __slots__ = ("item_id", "output_index", "text")

    def __init__(self, output_index: int) -> None:
        self.item_id = new_id("msg")
        self.output_index = output_index
        self.text = ""


class StreamTranslator:
    """Backend chunks in, Responses events out, for one streamed reply.

    `start()` when the response begins (or while waiting: it is sent once), `feed()`
    per backend chunk, `finish()` at the backend's end, or `error()` when it fails;
    each returns the events to send, in order. After the last event every call
    returns []; `result` is then the final Response (None if it failed).

    Tool calls are keyed on their `index` (llama-cpp-python repeats `id` and `name`
    in every chunk). The open call's argument bytes stream as they come; a call that
    begins while the open one's arguments are not yet a complete JSON object waits
    and follows whole. Text while a call is open is held and sent after the calls.
    Whitespace never opens a message.
    """

    def __init__(self, draft: Draft) -> None:
        self._draft = draft
        self._seq = 0
        self._started = False
        self._closed = False
        self._output: list[OutputItem] = []
        self._open: _Message | _Call | None = None
        self._calls: dict[int, _Call] = {}
        self._ids = CallIds()
        self._whitespace = ""
        self._late: list[str] = []
        self._finish: str | None = None
        self._stop_cause: str | None = None
        self._usage: BackendUsage | None = None
        self.result: ResponseObject | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the public steps ------------------------------------------------------------------

    def start(self) -> list[StreamEvent]:
        if self._started or self._closed:
            return []
        self._started = True
        return self._numbered([ResponseCreated(response=self._draft.response()),
                               ResponseInProgress(response=self._draft.response())])

    def waiting(self) -> list[StreamEvent]:
        """While the model loads or prefills: the start, then `response.in_progress`
        again each time. Real events, because Codex's stream idle timeout (300 s by
        default) ignores SSE comments, and a 10,000-token prompt can take longer on a
        CPU; the SDKs take a repeated lifecycle event as a no-op."""
        if self._closed:
            return []
        if not self._started:
            return self.start()
        return self._numbered([ResponseInProgress(response=self._draft.response())])

    def feed(self, chunk: BackendChunk) -> list[StreamEvent]:
        if self._closed:
            return []
        if chunk.error is not None:
            return self.start() + self._backend_error(chunk.error)
        events = self.start()
        if chunk.usage is not None:
            self._usage = chunk.usage
        if not chunk.choices:
            return events
        choice = next((c for c in chunk.choices if c.index == 0), chunk.choices[0])
        delta = choice.delta
        out: list[StreamEvent] = []
        if delta is not None:  # nulls and [] read as absent
            if delta.content:
                out += self._text(delta.content)
            for position, call in enumerate(delta.tool_calls or ()):
                out += self._tool_delta(call, position)
        if choice.finish_reason:
            self._finish = choice.finish_reason
            self._stop_cause = choice.stop_cause
        return events + self._numbered(out)

    def finish(self) -> list[StreamEvent]:
        """Close every item, then `response.completed` (or `.incomplete`) with usage. A
        backend that ended without a finish_reason failed: that is `response.failed`."""
        if self._closed:
            return []
        events = self.start()
        if self._finish is None:
            return events + self._fail("server_error",
                                       "the backend stream ended before it finished")
        if self._finish == "length" and self._stop_cause == "context":
            return events + self.error(ContextFilled())
        incomplete = self._draft.incomplete(self._finish)
        out: list[StreamEvent] = []
        for call in sorted(self._calls.values(), key=lambda c: c.index):
            if call.output_index is None and call.name:
                out += self._start_call(call)
        late = "".join(self._late)
        if late.strip():
            out += self._open_message()
            out += self._message_text(late)
        out += self._close_open(incomplete)
        usage = self._usage
        details = usage.prompt_tokens_details if usage else None
        final = self._draft.response(
            "incomplete" if incomplete else "completed", self._output,
            usage=response_usage(usage.prompt_tokens or 0 if usage else 0,
                                 usage.completion_tokens or 0 if usage else 0,
                                 (details.cached_tokens or 0) if details else 0),
            incomplete=incomplete)
        out.append(ResponseIncomplete(response=final) if incomplete
                   else ResponseCompleted(response=final))
        self._closed = True
        self.result = final
        return events + self._numbered(out)

    def error(self, exc: BaseException) -> list[StreamEvent]:
        """`error` and `response.failed`, after `response.created` if it was not sent."""
        if self._closed:
            return []
        events = self.start()
        if isinstance(exc, CortexError):
            return events + self._fail(error_code(exc), exc.message, exc.param)
        return events + self._fail("server_error", str(exc) or type(exc).__name__)

    # --- items -----------------------------------------------------------------------------

    def _numbered(self, events: list[StreamEvent]) -> list[StreamEvent]:
        for event in events:
            event.sequence_number = self._seq
            self._seq += 1
        return events

    def _text(self, text: str) -> list[StreamEvent]:
        if isinstance(self._open, _Call) or (self._open is None and self._calls_started()):
            self._late.append(text)
            return []
        if isinstance(self._open, _Message):
            return self._message_text(text)
        pending = self._whitespace + text
        if not pending.strip():
            self._whitespace = pending
            return []
        self._whitespace = ""
        return self._open_message() + self._message_text(pending)

    def _calls_started(self) -> bool:
        return any(call.output_index is not None for call in self._calls.values())

    def _open_message(self) -> list[StreamEvent]:
        events = self._close_open()
        message = _Message(len(self._output))
        self._open = message
        self._output.append(OutputMessage(id=message.item_id, status="in_progress",
                                          content=[]))
        return [*events,
                OutputItemAdded(output_index=message.output_index,
                                item=OutputMessage(id=message.item_id, status="in_progress",
                                                   content=[])),
                ContentPartAdded(item_id=message.item_id, output_index=message.output_index,
                                 part=OutputText(text=""))]

    def _message_text(self, text: str) -> list[StreamEvent]:
        assert isinstance(self._open, _Message)
        self._open.text += text
        return [OutputTextDelta(item_id=self._open.item_id, output_index=self._open.output_index,
                                delta=text)]

    def _close_open(self, incomplete: bool = False) -> list[StreamEvent]:
        current, self._open = self._open, None
        status = "incomplete" if incomplete else "completed"
        if isinstance(current, _Message):
            part = OutputText(text=current.text)
            item = OutputMessage(id=current.item_id, status=status,  # type: ignore[arg-type]
                                 content=[part])
            self._output[current.output_index] = item
            where = {"item_id": current.item_id, "output_index": current.output_index}
            return [OutputTextDone(text=current.text, **where),  # type: ignore[arg-type]
                    ContentPartDone(part=part, **where),  # type: ignore[arg-type]
                    OutputItemDone(output_index=current.output_index, item=item)]
        if isinstance(current, _Call):
            assert current.output_index is not None and current.call_id is not None
            events: list[StreamEvent] = []
            if not current.args.strip():  # a call without arguments still sends an object
                current.args = "{}"
                events.append(ArgumentsDelta(item_id=current.item_id, delta="{}",
                                             output_index=current.output_index))
            call = self._draft.function_call(current.call_id, current.name, current.args,
                                             status, current.item_id)
            self._output[current.output_index] = call
            return [*events,
                    ArgumentsDone(item_id=current.item_id, output_index=current.output_index,
                                  name=call.name, arguments=current.args),
                    OutputItemDone(output_index=current.output_index, item=call)]
        return []

    def _tool_delta(self, delta: ToolCallDelta, position: int) -> list[StreamEvent]:
        key = delta.index if delta.index is not None else position
        call = self._calls.get(key)
        if call is None:
            limit = self._draft.max_calls
            if limit is not None and len(self._calls) >= limit:
                return []  # past parallel_tool_calls: false, or max_tool_calls
            call = self._calls[key] = _Call(key)
        if delta.id and call.call_id is None:
            call.call_id = delta.id
        args = ""
        if delta.function is not None:
            if delta.function.name and not call.name:
                call.name = delta.function.name
            args = delta.function.arguments or ""
        events: list[StreamEvent] = []
        if args:
            if call.output_index is not None and self._open is not call:
                raise _Interleaved(call.name)
            call.args += args
            if self._open is call and call.output_index is not None:
                events.append(ArgumentsDelta(item_id=call.item_id, delta=args,
                                             output_index=call.output_index))
        return events + self._advance()

    def _advance(self) -> list[StreamEvent]:
        """Start waiting calls while nothing unfinished holds the stage."""
        events: list[StreamEvent] = []
        while True:
            waiting = [c for c in self._calls.values() if c.output_index is None and c.name]
            if not waiting:
                return events
            if isinstance(self._open, _Call) and not _is_object(self._open.args):
                return events
            events += self._start_call(min(waiting, key=lambda c: c.index))

    def _start_call(self, call: _Call) -> list[StreamEvent]:
        events = self._close_open()
        self._whitespace = ""
        call.call_id = self._ids.assign(call.call_id)
        call.output_index = len(self._output)
        item = self._draft.function_call(call.call_id, call.name, "", "in_progress",
                                         call.item_id)
        self._output.append(item)
        self._open = call
        events.append(OutputItemAdded(output_index=call.output_index, item=item))
        if call.args:  # bytes bundled with the first chunk count too
            events.append(ArgumentsDelta(item_id=call.item_id, delta=call.args,
                                         output_index=call.output_index))
        return events

    # --- endings ---------------------------------------------------------------------------

    def _fail(self, code: str, message: str, param: str | None = None) -> list[StreamEvent]:
        self._closed = True
        failed = self._draft.response("failed", self._output,
                                      error=ResponseError(code=code, message=message))
        return self._numbered([ErrorEvent(code=code, message=message, param=param),
                               ResponseFailed(response=failed)])

    def _backend_error(self, error: BackendError | str) -> list[StreamEvent]:
        if isinstance(error, str):
            return self._fail("server_error", error)
        code = error.code if isinstance(error.code, str) else error.type or "server_error"
        return self._fail(code, error.message)


class _Interleaved(CortexError):
    """Arguments for a call that was already closed: the backend interleaved two calls."""

    status = 502
    code = "upstream_error"

    def __init__(self, name: str) -> None:
        super().__init__(f"the backend went back to the arguments of tool `{name}` after "
                         "another call began")


def encode_sse(event: StreamEvent) -> bytes:
    """`event: <type>` and its data: the SDKs dispatch on `data.type`, proxies on the name."""
    return sse_frame(event, event=str(event.__struct_config__.tag))
