"""Wire types of the Anthropic Messages API: requests, the Message reply, stream events.

Requests are liberal (api-conformance §1.3): unknown fields are ignored, and content
blocks of an unknown type decode as `UnknownBlock` instead of failing, because Claude
Code keeps adding both. Replies and events leave a field out only when it is UNSET,
never when it is meaningfully null (`stop_reason`, `stop_sequence`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, get_args

import msgspec
from msgspec import UNSET, UnsetType

from cortex import decode_body

__all__ = [
    "ContentBlock",
    "ContentBlockDeltaEvent",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "Conversation",
    "CountTokensRequest",
    "CountTokensResponse",
    "DocumentBlock",
    "ErrorDetail",
    "ErrorEvent",
    "ImageBlock",
    "InputJSONDelta",
    "Message",
    "MessageDelta",
    "MessageDeltaEvent",
    "MessageDeltaUsage",
    "MessageParam",
    "MessageStartEvent",
    "MessageStopEvent",
    "MessagesRequest",
    "Metadata",
    "OutputConfig",
    "OutputFormat",
    "PingEvent",
    "RedactedThinkingBlock",
    "ResponseBlock",
    "SignatureDelta",
    "Source",
    "StopReason",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ThinkingBlock",
    "ThinkingConfig",
    "ThinkingDelta",
    "Tool",
    "ToolChoice",
    "ToolChoiceAny",
    "ToolChoiceAuto",
    "ToolChoiceNone",
    "ToolChoiceTool",
    "ToolResultBlock",
    "ToolUseBlock",
    "UnknownBlock",
    "Usage",
    "decode_count_tokens_request",
    "decode_messages_request",
]

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn",
                     "refusal", "model_context_window_exceeded"]


class Wire(msgspec.Struct, kw_only=True):
    """Base of request types: unknown fields are ignored, never an error."""


# --- content blocks (requests; text, tool_use and thinking are replies too) ----------------

class Block(Wire, tag_field="type", kw_only=True):
    """A content block, told apart by its `type`."""


class TextBlock(Block, tag="text", kw_only=True):
    text: str


class Source(Wire, kw_only=True):
    """An image or document source: `base64` (media_type, data), `url`, `text` or `file`."""

    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None


class ImageBlock(Block, tag="image", kw_only=True):
    source: Source


class DocumentBlock(Block, tag="document", kw_only=True):
    source: Source
    title: str | None = None


class ToolUseBlock(Block, tag="tool_use", kw_only=True):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Block, tag="tool_result", kw_only=True):
    tool_use_id: str
    content: str | list[ContentBlock] = ""
    is_error: bool = False


class ThinkingBlock(Block, tag="thinking", kw_only=True):
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(Block, tag="redacted_thinking", kw_only=True):
    data: str = ""


class UnknownBlock(Block, tag="unknown", kw_only=True):
    """Stands in for a block type this gateway does not know; `kind` is the sent type."""

    kind: str = ""


ContentBlock = (TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock
                | ThinkingBlock | RedactedThinkingBlock | UnknownBlock)
ResponseBlock = TextBlock | ToolUseBlock | ThinkingBlock

_KNOWN_BLOCKS = frozenset(str(cls.__struct_config__.tag) for cls in get_args(ContentBlock))


# --- requests ------------------------------------------------------------------------------

class MessageParam(Wire, kw_only=True):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(Wire, kw_only=True):
    """A client tool; server tools (a `type` other than `custom`) are skipped downstream."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoiceBase(Wire, tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool = False


class ToolChoiceAuto(ToolChoiceBase, tag="auto", kw_only=True):
    pass


class ToolChoiceAny(ToolChoiceBase, tag="any", kw_only=True):
    pass


class ToolChoiceTool(ToolChoiceBase, tag="tool", kw_only=True):
    name: str


class ToolChoiceNone(ToolChoiceBase, tag="none", kw_only=True):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingConfig(Wire, kw_only=True):
    type: str
    budget_tokens: int | None = None


class OutputFormat(Wire, kw_only=True):
    type: str
    schema: dict[str, Any] | None = None


class OutputConfig(Wire, kw_only=True):
    effort: str | None = None
    format: OutputFormat | None = None


class Metadata(Wire, kw_only=True):
    user_id: str | None = None


class Conversation(Wire, kw_only=True):
    """What `messages` and `count_tokens` share: everything that shapes the prompt."""

    model: str
    messages: list[MessageParam]
    system: str | list[ContentBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(Conversation, kw_only=True):
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: Metadata | None = None
    stream: bool = False


class CountTokensRequest(Conversation, kw_only=True):
    pass


class CountTokensResponse(msgspec.Struct, kw_only=True):
    input_tokens: int


# --- the reply -----------------------------------------------------------------------------

class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ResponseBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


# --- stream events -------------------------------------------------------------------------

class BlockDelta(msgspec.Struct, kw_only=True, tag_field="type"):
    pass


class TextDelta(BlockDelta, tag="text_delta", kw_only=True):
    text: str


class InputJSONDelta(BlockDelta, tag="input_json_delta", kw_only=True):
    partial_json: str


class ThinkingDelta(BlockDelta, tag="thinking_delta", kw_only=True):
    thinking: str


class SignatureDelta(BlockDelta, tag="signature_delta", kw_only=True):
    signature: str


class Event(msgspec.Struct, kw_only=True, tag_field="type"):
    """A stream event; its tag is both the SSE `event:` name and `data.type`."""


class MessageStartEvent(Event, tag="message_start", kw_only=True):
    message: Message


class ContentBlockStartEvent(Event, tag="content_block_start", kw_only=True):
    index: int
    content_block: ResponseBlock


class ContentBlockDeltaEvent(Event, tag="content_block_delta", kw_only=True):
    index: int
    delta: TextDelta | InputJSONDelta | ThinkingDelta | SignatureDelta


class ContentBlockStopEvent(Event, tag="content_block_stop", kw_only=True):
    index: int


class MessageDelta(msgspec.Struct, kw_only=True):
    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageDeltaUsage(msgspec.Struct, kw_only=True):
    """Cumulative counts; input and cache counts only once the backend has told them."""

    output_tokens: int
    input_tokens: int | UnsetType = UNSET
    cache_creation_input_tokens: int | UnsetType = UNSET
    cache_read_input_tokens: int | UnsetType = UNSET


class MessageDeltaEvent(Event, tag="message_delta", kw_only=True):
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(Event, tag="message_stop", kw_only=True):
    pass


class PingEvent(Event, tag="ping", kw_only=True):
    pass


class ErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    message: str


class ErrorEvent(Event, tag="error", kw_only=True):
    """A stream's error event, and also the body of every non-2xx Anthropic reply."""

    error: ErrorDetail
    request_id: str | UnsetType = UNSET


StreamEvent = (MessageStartEvent | ContentBlockStartEvent | ContentBlockDeltaEvent
               | ContentBlockStopEvent | MessageDeltaEvent | MessageStopEvent | PingEvent
               | ErrorEvent)


# --- decoding ------------------------------------------------------------------------------

_T = TypeVar("_T", bound=Conversation)
_messages_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)
_any = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


def _mark_unknown(blocks: Any) -> None:
    """Rewrite blocks of unknown type, in place and recursively, as `unknown` blocks."""
    if not isinstance(blocks, list):
        return
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if not isinstance(kind, str) or kind not in _KNOWN_BLOCKS:  # (a list is unhashable)
            blocks[i] = {"type": "unknown", "kind": str(kind)}
        elif kind == "tool_result":
            _mark_unknown(block.get("content"))


def _decode(body: bytes, decoder: msgspec.json.Decoder[_T]) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError:
        pass  # maybe a block type we do not know (or not JSON): the slow path says which
    raw = decode_body(body, _any)
    if isinstance(raw, dict):
        _mark_unknown(raw.get("system"))
        messages = raw.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if isinstance(message, dict):
                _mark_unknown(message.get("content"))
    # Encoded again rather than converted, so both paths raise through decode_body.
    return decode_body(_encode(raw), decoder)


def decode_messages_request(body: bytes) -> MessagesRequest:
    """A `/v1/messages` body; raises InvalidRequest (400) with msgspec's JSON path."""
    return _decode(body, _messages_decoder)


def decode_count_tokens_request(body: bytes) -> CountTokensRequest:
    """A `/v1/messages/count_tokens` body; raises InvalidRequest (400)."""
    return _decode(body, _count_decoder)
