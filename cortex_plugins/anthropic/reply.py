"""The neuron's answer → an Anthropic Message (api-conformance §6.2, §6.3, §6.4).

`from_openai` translates a whole ChatCompletion; `assemble` folds a translated event
stream into the same Message (a non-streaming client whose stop sequences were matched
on a stream). Both share the stop_reason rule, usage and tool-use ids and arguments.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from cortex import ChatCompletion, StopMatcher, UpstreamError
from cortex.dialect import BackendUsage

from .errors import from_error_event
from .types import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    ErrorEvent,
    InputJSONDelta,
    Message,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    ResponseBlock,
    SignatureDelta,
    StopReason,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    Usage,
)

__all__ = ["ToolIds", "anthropic_usage", "assemble", "backend_usage", "from_openai",
           "is_object", "new_message_id", "stop_reason", "tool_arguments"]

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def new_message_id() -> str:
    """`msg_` and 24 URL-safe characters, the shape clients and gateway tests check."""
    return "msg_" + secrets.token_urlsafe(18)


class ToolIds:
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


def stop_reason(finish_reason: str | None, *, tool_use: bool, stop_sequence: str | None,
                stop_cause: str | None = None) -> StopReason:
    """§6.3: `length` wins, then any tool call, then a matched stop sequence; else end_turn.

    A `length` whose `stop_cause` (the neuron's) is `context` filled the context window:
    `model_context_window_exceeded`, which Claude Code files as a full context ("reached
    its context window limit", room to be made), not as its own output maximum exceeded,
    as `max_tokens` would have it say. Any other `length` is an output limit, the
    client's `max_tokens` or the profile's cap ("or the model's maximum", as the API
    documents it): `max_tokens`. `stop` (EOS), `content_filter`, and unknown or missing
    reasons all read `end_turn`, never null or a value outside the enum.
    """
    if finish_reason == "length":
        return "model_context_window_exceeded" if stop_cause == "context" else "max_tokens"
    if tool_use:
        return "tool_use"
    if stop_sequence is not None:
        return "stop_sequence"
    return "end_turn"


def anthropic_usage(prompt: int, completion: int, cached: int = 0,
                    written: int = 0) -> Usage:
    """§6.4: cached and cache-written prompt tokens are reported apart from input_tokens."""
    return Usage(input_tokens=max(0, prompt - cached - written), output_tokens=completion,
                 cache_creation_input_tokens=written, cache_read_input_tokens=cached)


def backend_usage(usage: BackendUsage, output: int) -> Usage:
    """A streamed backend's usage (its prompt's, or its reply's) with `output` tokens."""
    details = usage.prompt_tokens_details
    return anthropic_usage(usage.prompt_tokens or 0, output,
                           (details.cached_tokens or 0) if details else 0,
                           (details.cache_write_tokens or 0) if details else 0)


def tool_arguments(raw: str) -> dict[str, Any] | None:
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


def is_object(raw: str) -> bool:
    try:
        return isinstance(msgspec.json.decode(raw), dict)
    except msgspec.DecodeError:
        return False


def from_openai(resp: ChatCompletion, *, model: str, stop_sequences: Sequence[str] = (),
                message_id: str | None = None) -> Message:
    """The Message for a whole backend answer; `model` is the id the client asked for.

    A stop sequence still in the text (the backend was not told it) cuts the text there,
    drops what followed, and is reported. Tool arguments that are not a JSON object even
    after repair fail the turn (UpstreamError) rather than become `{}`, which makes
    Claude Code loop on "Invalid tool parameters" (§6.2); a call cut off by `length` is
    dropped instead, since the stop reason already says why.
    """
    if not resp.choices:
        raise UpstreamError("the backend answered without a choice")
    choice = resp.choices[0]
    message_id = message_id or new_message_id()
    text = choice.message.content or ""
    calls = list(choice.message.tool_calls or ())
    finish = choice.finish_reason
    cause = choice.stop_cause if isinstance(choice.stop_cause, str) else None
    head, hit = StopMatcher(stop_sequences).feed(text)
    if hit is not None:
        text, calls, finish = head, [], None
    content: list[ResponseBlock] = [TextBlock(text=text)] if text.strip() else []
    ids = ToolIds(message_id)
    for call in calls:
        args = tool_arguments(call.function.arguments)
        if args is None:
            if finish == "length":
                continue
            raise UpstreamError(f"the backend's arguments for tool `{call.function.name}` are "
                                f"not a JSON object: {call.function.arguments[:200]!r}")
        content.append(ToolUseBlock(id=ids.assign(call.id), name=call.function.name,
                                    input=args))
    tool_use = any(isinstance(block, ToolUseBlock) for block in content)
    details = resp.usage.prompt_tokens_details
    cached = details.cached_tokens if not isinstance(details, msgspec.UnsetType) else 0
    return Message(id=message_id, model=model, content=content,
                   stop_reason=stop_reason(finish, tool_use=tool_use, stop_sequence=hit,
                                           stop_cause=cause),
                   stop_sequence=hit,
                   usage=anthropic_usage(resp.usage.prompt_tokens,
                                         resp.usage.completion_tokens, cached))


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
            raise from_error_event(event)
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
                args = tool_arguments(partial[event.index])
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
