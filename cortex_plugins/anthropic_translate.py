"""Anthropic Messages ⇄ OpenAI chat completions, without I/O (api-conformance §6).

The Anthropic dialect turns a client's MessagesRequest into the canonical request
with `to_openai`, then turns the neuron's answer back: a whole ChatCompletion with
`from_openai`, a stream with a `StreamTranslator` (one per request). Stop sequences
are matched here by default (`match_stops`), because a neuron strips a stop string
and reports `stop` exactly as for EOS, so only the gateway can say which one fired.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import msgspec

from cortex import sse_frame
from cortex.anthropic_types import (
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    Conversation,
    DocumentBlock,
    ErrorDetail,
    ErrorEvent,
    ImageBlock,
    InputJSONDelta,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessagesRequest,
    MessageStartEvent,
    MessageStopEvent,
    OutputConfig,
    PingEvent,
    ResponseBlock,
    SignatureDelta,
    StopReason,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolChoice,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
    Usage,
)
from cortex.anthropic_types import Tool as AnthropicTool
from cortex.errors import CortexError, InvalidRequest, Timeout, Unavailable, UpstreamError
from cortex.stops import StopMatcher
from cortex.types import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    StreamOptions,
    TokenizeRequest,
    Tool,
    ToolCall,
    ToolCallFunction,
    ToolFunction,
)
from cortex.types import Usage as OpenAIUsage

__all__ = [
    "BackendChunk",
    "StreamTranslator",
    "anthropic_error",
    "anthropic_error_type",
    "anthropic_status",
    "assemble",
    "decode_chunk",
    "encode_sse",
    "from_openai",
    "new_message_id",
    "stop_reason",
    "to_openai",
    "to_tokenize",
]

_encode = msgspec.json.Encoder().encode
# Claude Code stamps `cch=<hash>;` per request into system[0]; it would defeat KV reuse (§5.9).
_BILLING_STAMP = re.compile(r"^(x-anthropic-billing-header:[^\n]*?\bcch=)[0-9A-Za-z]+", re.M)
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def new_message_id() -> str:
    """`msg_` and 24 URL-safe characters, the shape clients and gateway tests check."""
    return "msg_" + secrets.token_urlsafe(18)


class _ToolIds:
    """Tool-use ids replayable to real Anthropic (`^[A-Za-z0-9_-]+$`), unique in one reply.

    Only the reply side is rewritten: the client echoes these ids in both `tool_use.id`
    and `tool_result.tool_use_id`, which `to_openai` passes on unchanged (symmetric).
    """

    def __init__(self, message_id: str) -> None:
        self._seed = _ID_UNSAFE.sub("_", message_id.removeprefix("msg_"))
        self._used: set[str] = set()

    def assign(self, backend_id: str | None) -> str:
        tool_id = _ID_UNSAFE.sub("_", backend_id or "")
        if not tool_id or tool_id in self._used:
            tool_id = f"toolu_{self._seed}_{len(self._used)}"
        self._used.add(tool_id)
        return tool_id


# --- request: Anthropic → OpenAI (§6.1) ----------------------------------------------------

def to_openai(request: MessagesRequest, *, model: str,
              match_stops: bool = True) -> ChatCompletionRequest:
    """The canonical request for `model` (the routed backend id).

    With `match_stops` the stop sequences stay here: the backend gets no `stop`, and
    streams whenever there are any, so a StreamTranslator can cut the text at the first
    hit and report it (the dialect then closes the upstream, which ends generation);
    a non-streaming client gets `assemble()` of those events. Without it they go to the
    backend as `stop`, and a hit reads `end_turn`, as with llama.cpp and LiteLLM.
    """
    stops = [s for s in request.stop_sequences or () if s]
    stream = request.stream or (match_stops and bool(stops))
    out = ChatCompletionRequest(
        model=model, messages=_messages(request), max_tokens=request.max_tokens,
        temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
        stop=stops if stops and not match_stops else None, stream=stream,
        stream_options=StreamOptions(include_usage=True) if stream else None,
        user=request.metadata.user_id if request.metadata else None,
        response_format=_response_format(request.output_config))
    tools = _tools(request.tools)
    if tools:  # tool_choice is left out with no tools (CliRelay#740)
        out.tools = tools
        out.tool_choice, out.parallel_tool_calls = _tool_choice(request.tool_choice, tools)
    return out


def to_tokenize(request: Conversation, *, model: str) -> TokenizeRequest:
    """What the neuron must tokenize to answer count_tokens: the prompt `to_openai` sends."""
    tools = None if isinstance(request.tool_choice, ToolChoiceNone) else _tools(request.tools)
    return TokenizeRequest(model=model, messages=_messages(request), tools=tools or None)


def _tools(tools: list[AnthropicTool] | None) -> list[Tool]:
    # Server tools (bash_…, web_search_…) have a versioned `type` and no schema: skip them.
    return [Tool(function=ToolFunction(
                name=tool.name, description=tool.description,
                parameters=tool.input_schema if tool.input_schema is not None
                else {"type": "object", "properties": {}}))
            for tool in tools or () if tool.type in (None, "custom")]


def _named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def _tool_choice(choice: ToolChoice | None, tools: list[Tool]
                 ) -> tuple[str | dict[str, Any], bool | None]:
    parallel = False if choice is not None and choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceNone):
        return "none", None
    if isinstance(choice, ToolChoiceTool):
        return _named(choice.name), parallel
    if isinstance(choice, ToolChoiceAny):
        # One tool: naming it is the same demand, and backends honour a name best (§2.1).
        return (_named(tools[0].function.name) if len(tools) == 1 else "required"), parallel
    # `auto`, or no choice with tools present: say it, some backends read absence as none.
    return "auto", parallel


def _response_format(config: OutputConfig | None) -> dict[str, Any] | None:
    fmt = config.format if config else None
    if fmt is None or fmt.type != "json_schema" or fmt.schema is None:
        return None
    return {"type": "json_schema",
            "json_schema": {"name": "structured_output", "schema": fmt.schema, "strict": True}}


def _unsupported(block: ContentBlock, where: str) -> InvalidRequest:
    """A 400 naming a block the backend cannot take in, rather than a reply that quietly
    ignored it (the model would answer as if it had seen it)."""
    kind = block.kind if isinstance(block, UnknownBlock) else str(block.__struct_config__.tag)
    return InvalidRequest(f"{where}: `{kind}` content blocks are not supported here; the "
                          "models read text (and text documents) only", param=where)


def _text_of(content: str | list[ContentBlock], where: str) -> str:
    if isinstance(content, str):
        return content
    for j, block in enumerate(content):
        if not isinstance(block, TextBlock):
            raise _unsupported(block, f"{where}[{j}]")
    return "\n\n".join(block.text for block in content if isinstance(block, TextBlock))


def _messages(request: Conversation) -> list[ChatMessage]:
    system = [] if request.system is None else [_text_of(request.system, "system")]
    out: list[ChatMessage] = []
    # A late system turn breaks strict-alternation templates (Gemma, Mistral): it becomes
    # a marked user turn, merged with its neighbours, and never parts tool results from
    # the call they answer.
    late: list[str] = []
    for i, message in enumerate(request.messages):
        where = f"messages[{i}].content"
        if message.role == "system":
            text = _text_of(message.content, where)
            if out:
                late.append(f"<system-reminder>\n{text}\n</system-reminder>")
            else:
                system.append(text)
        elif message.role == "assistant":
            out += _reminder(late) + _assistant(message.content)
        else:
            turn = _user(message.content, where)
            after_tools = sum(m.role == "tool" for m in turn)
            turn[after_tools:after_tools] = _reminder(late)
            out += turn
    out += _reminder(late)
    head = _BILLING_STAMP.sub(r"\1fffff", "\n\n".join(s for s in system if s))
    return _merged(([ChatMessage(role="system", content=head)] if head else []) + out)


def _reminder(late: list[str]) -> list[ChatMessage]:
    """The pending late system texts as one user message, emptying `late`."""
    if not late:
        return []
    message = ChatMessage(role="user", content="\n\n".join(late))
    late.clear()
    return [message]


def _part(block: ContentBlock, where: str) -> str | None:
    """A user-side block's text; None for blocks that carry nothing for the model
    (thinking or tool_use in a user turn). Images and unknown blocks are refused."""
    if isinstance(block, TextBlock):
        return block.text or None
    if isinstance(block, DocumentBlock):
        if block.source.type == "text" and block.source.data is not None:
            text = block.source.data
            return f"{block.title}\n\n{text}" if block.title else text
        # Placeholder, not silence: the model can tell the user it could not read the file.
        kind = block.source.media_type or block.source.type
        return f"[document omitted: {kind} documents are not supported]"
    if isinstance(block, ImageBlock | UnknownBlock):
        raise _unsupported(block, where)
    return None


def _tool_result(block: ToolResultBlock, where: str) -> str:
    """The tool message's text."""
    blocks = [TextBlock(text=block.content)] if isinstance(block.content, str) else block.content
    texts = [text for k, inner in enumerate(blocks)
             if (text := _part(inner, f"{where}.content[{k}]")) is not None]
    text = "\n\n".join(texts)
    if block.is_error:  # OpenAI has no error flag: say it where the model reads
        text = f"Error: {text}" if text else "Error"
    return text


def _user(content: str | list[ContentBlock], where: str) -> list[ChatMessage]:
    """Tool results first, as `tool` messages right after the calling turn, then the rest."""
    if isinstance(content, str):
        return [ChatMessage(role="user", content=content)]
    out: list[ChatMessage] = []
    texts: list[str] = []
    for j, block in enumerate(content):
        if isinstance(block, ToolResultBlock):
            out.append(ChatMessage(role="tool", tool_call_id=block.tool_use_id,
                                   content=_tool_result(block, f"{where}[{j}]")))
        elif (text := _part(block, f"{where}[{j}]")) is not None:
            texts.append(text)
    if texts:
        out.append(ChatMessage(role="user", content="\n\n".join(texts)))
    return out


def _assistant(content: str | list[ContentBlock]) -> list[ChatMessage]:
    if isinstance(content, str):
        return [ChatMessage(role="assistant", content=content)] if content else []
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            # msgspec keeps key order and spacing fixed, so a replayed turn renders the same bytes.
            calls.append(ToolCall(id=block.id, function=ToolCallFunction(
                name=block.name, arguments=_encode(block.input).decode())))
        elif isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)  # the signature is never checked
    text = "".join(texts)
    if not text and not calls:
        return []
    # Content "" rather than null beside tool calls: llama-cpp-python rejects null (§2.1).
    message = ChatMessage(role="assistant", content=text, tool_calls=calls or None)
    if reasoning:
        message.reasoning_content = "".join(reasoning)
    return [message]


def _as_parts(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


def _merged(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Adjacent user or assistant messages as one, as Anthropic itself combines them."""
    out: list[ChatMessage] = []
    for message in messages:
        last = out[-1] if out else None
        if last is None or last.role != message.role or message.role not in ("user", "assistant"):
            out.append(message)
        elif message.role == "user":
            if isinstance(last.content, str) and isinstance(message.content, str):
                last.content = f"{last.content}\n\n{message.content}"
            else:
                last.content = _as_parts(last.content) + _as_parts(message.content)
        else:
            last.content = (last.text() + message.text())
            last.tool_calls = (last.tool_calls or []) + (message.tool_calls or []) or None
            if message.reasoning_content:
                last.reasoning_content = (last.reasoning_content or "") + message.reasoning_content
    return out


# --- shared by both reply paths ------------------------------------------------------------

def stop_reason(finish_reason: str | None, *, tool_use: bool,
                stop_sequence: str | None) -> StopReason:
    """§6.3: `length` wins, then any tool call, then a matched stop sequence; else end_turn.

    `stop` (EOS), `content_filter`, and unknown or missing reasons all read `end_turn`,
    never null or a value outside the enum.
    """
    if finish_reason == "length":
        return "max_tokens"
    if tool_use:
        return "tool_use"
    if stop_sequence is not None:
        return "stop_sequence"
    return "end_turn"


def _usage(prompt: int, completion: int, cached: int = 0, written: int = 0) -> Usage:
    """§6.4: cached and cache-written prompt tokens are reported apart from input_tokens."""
    return Usage(input_tokens=max(0, prompt - cached - written), output_tokens=completion,
                 cache_creation_input_tokens=written, cache_read_input_tokens=cached)


def _arguments(raw: str) -> dict[str, Any] | None:
    """Tool arguments as an object, repaired where that is safe; None when they are not one."""
    text = raw.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    if not text:
        return {}  # a tool without parameters
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value, _ = json.JSONDecoder().raw_decode(text)  # trailing junk after the object
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _is_object(raw: str) -> bool:
    try:
        return isinstance(msgspec.json.decode(raw), dict)
    except msgspec.DecodeError:
        return False


# --- whole reply: OpenAI → Anthropic (§6.2) ------------------------------------------------

def from_openai(resp: ChatCompletion, *, model: str, stop_sequences: Sequence[str] = (),
                message_id: str | None = None) -> Message:
    """The Message for a whole backend answer; `model` is the id the client asked for.

    A stop sequence still in the text (the backend was not told it) cuts the text there,
    drops what followed, and is reported. Tool arguments that are not a JSON object even
    after repair fail the turn (UpstreamError) rather than become `{}`, which makes
    Claude Code loop on "Invalid tool parameters" (§6.2); a call cut off by `length` is
    dropped instead, since `max_tokens` already says why.
    """
    if not resp.choices:
        raise UpstreamError("the backend answered without a choice")
    choice = resp.choices[0]
    message_id = message_id or new_message_id()
    text = choice.message.content or ""
    calls = list(choice.message.tool_calls or ())
    finish = choice.finish_reason
    head, hit = StopMatcher(stop_sequences).feed(text)
    if hit is not None:
        text, calls, finish = head, [], None
    content: list[ResponseBlock] = [TextBlock(text=text)] if text.strip() else []
    ids = _ToolIds(message_id)
    for call in calls:
        args = _arguments(call.function.arguments)
        if args is None:
            if finish == "length":
                continue
            raise UpstreamError(f"the backend's arguments for tool `{call.function.name}` are "
                                f"not a JSON object: {call.function.arguments[:200]!r}")
        content.append(ToolUseBlock(id=ids.assign(call.id), name=call.function.name,
                                    input=args))
    tool_use = any(isinstance(block, ToolUseBlock) for block in content)
    return Message(id=message_id, model=model, content=content,
                   stop_reason=stop_reason(finish, tool_use=tool_use, stop_sequence=hit),
                   stop_sequence=hit,
                   usage=_usage(resp.usage.prompt_tokens, resp.usage.completion_tokens))


# --- the backend's stream, read tolerantly -------------------------------------------------
# Not cortex.types.ChatCompletionChunk: llama-cpp-python sends explicit nulls (`"content":
# null`, `"tool_calls": null`, `"name": null`) that the canonical types reject, and the
# reasoning, cache and error fields this translation needs are not in them. Raw dicts
# would leave the state machine untyped.

class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None


class _BackendUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None


class _BackendError(msgspec.Struct):
    message: str = "the backend failed"
    type: str | None = None
    code: str | int | None = None


class BackendChunk(msgspec.Struct):
    """One `data:` payload of an OpenAI-style stream: a chunk, or an error frame."""

    choices: list[_Choice] | None = None
    usage: _BackendUsage | None = None
    error: _BackendError | str | None = None


_chunk_decoder = msgspec.json.Decoder(BackendChunk)


def decode_chunk(data: bytes) -> BackendChunk | None:
    """An SSE `data:` payload; None for `[DONE]`. Raises UpstreamError when malformed."""
    if data.strip() == b"[DONE]":
        return None
    try:
        return _chunk_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(f"the backend sent a malformed stream chunk: {exc}") from None


# --- streamed reply: the §6.5 state machine ------------------------------------------------

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

    Call `start()` when the response begins, `ping()` while waiting (cold load, long
    prefill), `feed()` per backend chunk, then `finish()` at the backend's end, or as
    soon as `stopped` turns true (after closing the upstream, which ends generation),
    or `error()` when it fails. Each returns the events to send, in order. The first
    event is always one message_start; block indices run 0, 1, 2 … and a block is
    stopped before the next starts; after message_stop or an error every call returns [].

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
        self._ids = _ToolIds(self._id)
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
        self._stop_sequence: str | None = None
        self._usage: _BackendUsage | None = None
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
    def stopped(self) -> bool:
        """A stop sequence matched: read no more, close the upstream, call `finish()`."""
        return self._stop_sequence is not None

    @property
    def closed(self) -> bool:
        """message_stop or an error was emitted; nothing more will be."""
        return self._closed

    # --- the public steps ------------------------------------------------------------------

    def start(self) -> list[StreamEvent]:
        """message_start, once; input_tokens is the counted prompt or 0 until message_delta."""
        if self._started or self._closed:
            return []
        self._started = True
        return [MessageStartEvent(message=Message(
            id=self._id, model=self._model, content=[], stop_reason=None, stop_sequence=None,
            usage=Usage(input_tokens=self._input_tokens or 0, output_tokens=0)))]

    def ping(self) -> list[StreamEvent]:
        """A keep-alive for intermediaries (Claude Code's idle watchdog ignores pings)."""
        if self._closed:
            return []
        return [*self.start(), PingEvent()]

    def feed(self, chunk: BackendChunk) -> list[StreamEvent]:
        if self._closed:
            return []
        if chunk.error is not None:
            return self._backend_error(chunk.error)
        events = self.start()
        if chunk.usage is not None:
            self._usage = chunk.usage
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
            self._finish = choice.finish_reason
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
        if self._finish != "length":  # truncated arguments are expected with max_tokens
            for tool in named:
                if tool.args.strip() and not _is_object(tool.args):
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
                        stop_sequence=self._stop_sequence), stop_sequence=self._stop_sequence),
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

    def _tool_delta(self, call: _ToolCallDelta, position: int) -> list[StreamEvent]:
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
            if current is not None and not _is_object(current.args):
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

    def _backend_error(self, error: _BackendError | str) -> list[StreamEvent]:
        if isinstance(error, str):
            return self._fail("api_error", error)
        overloaded = error.code == "unavailable" or error.type == "overloaded_error"
        return self._fail("overloaded_error" if overloaded else "api_error", error.message)

    def _final_usage(self, given: OpenAIUsage | None) -> MessageDeltaUsage:
        if given is not None:
            usage = _usage(given.prompt_tokens, given.completion_tokens)
        elif self._usage is not None:
            details = self._usage.prompt_tokens_details
            usage = _usage(self._usage.prompt_tokens or 0, self._usage.completion_tokens or 0,
                           (details.cached_tokens or 0) if details else 0,
                           (details.cache_write_tokens or 0) if details else 0)
        else:
            return MessageDeltaUsage(output_tokens=self._pieces)
        return MessageDeltaUsage(
            output_tokens=usage.output_tokens, input_tokens=usage.input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens)


def assemble(events: Iterable[StreamEvent]) -> Message:
    """Fold a complete event stream into its Message, as the SDKs' accumulators do.

    This answers a non-streaming client from a streamed backend reply (needed when
    stop sequences are matched here). An error event raises it as a CortexError. A
    tool call whose arguments were cut off by max_tokens is left out, as `from_openai`
    does.
    """
    message: Message | None = None
    blocks: list[ResponseBlock] = []
    partial: dict[int, str] = {}
    broken: set[int] = set()
    stopped = False
    for event in events:
        if isinstance(event, ErrorEvent):
            raise _from_error_event(event)
        if isinstance(event, MessageStartEvent):
            message = msgspec.structs.replace(
                event.message, content=[], usage=msgspec.structs.replace(event.message.usage))
        elif isinstance(event, ContentBlockStartEvent):
            blocks.append(msgspec.structs.replace(event.content_block))
            partial[event.index] = ""
        elif isinstance(event, ContentBlockDeltaEvent):
            block, delta = blocks[event.index], event.delta
            if isinstance(block, TextBlock) and isinstance(delta, TextDelta):
                block.text += delta.text
            elif isinstance(block, ThinkingBlock) and isinstance(delta, ThinkingDelta):
                block.thinking += delta.thinking
            elif isinstance(block, ThinkingBlock) and isinstance(delta, SignatureDelta):
                block.signature = delta.signature
            elif isinstance(block, ToolUseBlock) and isinstance(delta, InputJSONDelta):
                partial[event.index] += delta.partial_json
            else:
                raise UpstreamError(f"a {type(delta).__name__} in a {type(block).__name__}")
        elif isinstance(event, ContentBlockStopEvent):
            block = blocks[event.index]
            if isinstance(block, ToolUseBlock):
                args = _arguments(partial[event.index])
                if args is None:
                    broken.add(event.index)
                else:
                    block.input = args
        elif isinstance(event, MessageDeltaEvent) and message is not None:
            message.stop_reason = event.delta.stop_reason
            message.stop_sequence = event.delta.stop_sequence
            usage = event.usage
            message.usage.output_tokens = usage.output_tokens
            if not isinstance(usage.input_tokens, msgspec.UnsetType):
                message.usage.input_tokens = usage.input_tokens
            if not isinstance(usage.cache_read_input_tokens, msgspec.UnsetType):
                message.usage.cache_read_input_tokens = usage.cache_read_input_tokens
            if not isinstance(usage.cache_creation_input_tokens, msgspec.UnsetType):
                message.usage.cache_creation_input_tokens = usage.cache_creation_input_tokens
        elif isinstance(event, MessageStopEvent):
            stopped = True
    if message is None or not stopped:
        raise UpstreamError("the stream ended before message_stop")
    message.content = [b for i, b in enumerate(blocks) if i not in broken]
    return message


# --- errors (§3.5, §6.7) -------------------------------------------------------------------

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


def _from_error_event(event: ErrorEvent) -> CortexError:
    return _BY_TYPE.get(event.error.type, UpstreamError)(event.error.message)


def encode_sse(event: StreamEvent) -> bytes:
    """`event: <type>\\ndata: <json>\\n\\n`: the SDKs dispatch on the event name (§1.4)."""
    return sse_frame(event, event=str(event.__struct_config__.tag))
