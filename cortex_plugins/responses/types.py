"""Wire types of the OpenAI Responses API: the request, its input items, the Response
object and the stream's events.

Requests are liberal where clients differ (unknown fields are ignored; Codex sends
`client_metadata`, `prompt_cache_key`, `include`), strict where the value reaches the
model: bounds on budgets and sampling, tool names the templates can carry. Input items
and tools arrive as raw JSON and are decoded one by one (`request`), so an error names
the item (`input[3]`) and a tool the fleet cannot run is set aside, not refused.
Replies leave a field out only when it is UNSET, never when it is meaningfully null.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "ArgumentsDelta",
    "ArgumentsDone",
    "ContentPart",
    "ContentPartAdded",
    "ContentPartDone",
    "ErrorEvent",
    "Event",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "IncompleteDetails",
    "InputItem",
    "InputTokensDetails",
    "MessageItem",
    "NamespaceTool",
    "OutputFunctionCall",
    "OutputItem",
    "OutputItemAdded",
    "OutputItemDone",
    "OutputMessage",
    "OutputText",
    "OutputTextDelta",
    "OutputTextDone",
    "OutputTokensDetails",
    "Reasoning",
    "ResponseCompleted",
    "ResponseCreated",
    "ResponseError",
    "ResponseFailed",
    "ResponseInProgress",
    "ResponseIncomplete",
    "ResponseObject",
    "ResponseUsage",
    "ResponsesRequest",
    "StreamEvent",
    "TextConfig",
    "TextFormat",
    "ToolChoiceObject",
    "ToolRef",
]

#: What a function's name may be: what OpenAI allows, and what every chat template and
#: the tool-call grammar can carry unescaped.
ToolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=128)]
Role = Literal["user", "assistant", "system", "developer"]
Status = Literal["in_progress", "completed", "incomplete"]


class Wire(msgspec.Struct, kw_only=True):
    """Base of request types: unknown fields are ignored, never an error."""


# --- input items ---------------------------------------------------------------------------

class ContentPart(Wire, kw_only=True, omit_defaults=True):
    """One part of a message's content (`input_text`, `output_text`, `refusal`; other
    types are refused by `request`, naming the part)."""

    type: str
    text: str | None = None
    refusal: str | None = None


class Item(Wire, tag_field="type", kw_only=True, omit_defaults=True):
    """An input item, told apart by its `type` (a message may leave it out)."""

    id: str | None = None
    status: Status | None = None


class MessageItem(Item, tag="message", kw_only=True):
    role: Role
    content: str | list[ContentPart]


class FunctionCallItem(Item, tag="function_call", kw_only=True):
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None


class FunctionCallOutputItem(Item, tag="function_call_output", kw_only=True):
    call_id: str
    output: str | list[ContentPart]


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


# --- tools and choices ---------------------------------------------------------------------

class FunctionTool(Wire, kw_only=True):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamespaceTool(Wire, kw_only=True):
    """A group of functions (Codex's sub-agent and MCP tools); flattened for the model."""

    name: ToolName
    description: str = ""
    tools: list[msgspec.Raw] = []


class ToolRef(Wire, kw_only=True):
    type: str
    name: str | None = None


class ToolChoiceObject(Wire, kw_only=True):
    """`{"type": "function", "name": …}`, `{"type": "allowed_tools", "mode": …,
    "tools": […]}`, or a hosted tool's type (which the fleet cannot force)."""

    type: str
    name: str | None = None
    mode: Literal["auto", "required"] | None = None
    tools: list[ToolRef] | None = None


class TextFormat(Wire, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class TextConfig(Wire, kw_only=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class Reasoning(Wire, kw_only=True):
    """Accepted and echoed; the models the fleet runs do not take an effort."""

    effort: str | None = None
    summary: str | None = None


# --- the request ---------------------------------------------------------------------------

class ResponsesRequest(Wire, kw_only=True):
    model: str
    input: str | list[msgspec.Raw] = []
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool = False
    tools: list[msgspec.Raw] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, msgspec.Meta(ge=1)] | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    reasoning: Reasoning | None = None
    metadata: Annotated[dict[str, str], msgspec.Meta(max_length=16)] | None = None
    user: str | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Refused when set: the fleet runs no background jobs, conversations or prompt templates.
    background: bool | None = None
    conversation: msgspec.Raw | None = None
    prompt: msgspec.Raw | None = None
    top_logprobs: int | None = None


# --- the reply -----------------------------------------------------------------------------

class OutputText(msgspec.Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(msgspec.Struct, kw_only=True, tag_field="type", tag="message"):
    id: str
    status: Status
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class OutputFunctionCall(msgspec.Struct, kw_only=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: Status
    namespace: str | UnsetType = UNSET


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = msgspec.field(
        default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(msgspec.Struct, kw_only=True):
    """The Response: what `create` returns, the stream's lifecycle events carry and
    `GET /v1/responses/{id}` gives back."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputItem] = []
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: Reasoning | None = None
    store: bool = True
    temperature: float | None = None
    text: TextConfig = msgspec.field(
        default_factory=lambda: TextConfig(format=TextFormat(type="text")))
    tool_choice: str | ToolChoiceObject = "auto"
    tools: list[msgspec.Raw] = []
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = {}
    # cortex's own: the types of the request's tools the fleet cannot run (web_search,
    # file_search, …), left out of the prompt rather than refused.
    ignored_tools: list[str] | UnsetType = UNSET


# --- stream events -------------------------------------------------------------------------

class Event(msgspec.Struct, kw_only=True, tag_field="type"):
    """A stream event; its tag is both the SSE `event:` name and `data.type`. Its
    `sequence_number` is set as it is sent (StreamTranslator)."""

    sequence_number: int = 0


class ResponseCreated(Event, tag="response.created", kw_only=True):
    response: ResponseObject


class ResponseInProgress(Event, tag="response.in_progress", kw_only=True):
    response: ResponseObject


class ResponseCompleted(Event, tag="response.completed", kw_only=True):
    response: ResponseObject


class ResponseIncomplete(Event, tag="response.incomplete", kw_only=True):
    response: ResponseObject


class ResponseFailed(Event, tag="response.failed", kw_only=True):
    response: ResponseObject


class OutputItemAdded(Event, tag="response.output_item.added", kw_only=True):
    output_index: int
    item: OutputItem


class OutputItemDone(Event, tag="response.output_item.done", kw_only=True):
    output_index: int
    item: OutputItem


class ContentPartAdded(Event, tag="response.content_part.added", kw_only=True):
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class ContentPartDone(Event, tag="response.content_part.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class OutputTextDelta(Event, tag="response.output_text.delta", kw_only=True):
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[Any] = []


class OutputTextDone(Event, tag="response.output_text.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[Any] = []


class ArgumentsDelta(Event, tag="response.function_call_arguments.delta", kw_only=True):
    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(Event, tag="response.function_call_arguments.done", kw_only=True):
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(Event, tag="error", kw_only=True):
    """Sent just before `response.failed`, as OpenAI does."""

    code: str | None
    message: str
    param: str | None = None


StreamEvent = (ResponseCreated | ResponseInProgress | ResponseCompleted | ResponseIncomplete
               | ResponseFailed | OutputItemAdded | OutputItemDone | ContentPartAdded
               | ContentPartDone | OutputTextDelta | OutputTextDone | ArgumentsDelta
               | ArgumentsDone | ErrorEvent)
