"""A Responses request → the canonical OpenAI chat request.

`input_items` decodes the client's `input` item by item (an error names `input[i]`)
into the items this response is stored with; `ToolSet` sorts the tools into functions
the model is shown (namespace groups flattened) and hosted tools the fleet cannot run
(left out and reported, never refused: Codex always sends `web_search`);
`to_openai` renders instructions, the kept history and the new items as chat
messages. Content a model cannot read (images, files) is a 400 naming the part.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import msgspec

from cortex import (
    ChatCompletionRequest,
    ChatMessage,
    InvalidRequest,
    StreamOptions,
    Tool,
    ToolCall,
    ToolCallFunction,
    ToolFunction,
    UnsupportedFeature,
)

from .types import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputItem,
    MessageItem,
    NamespaceTool,
    ResponsesRequest,
    TextFormat,
    ToolChoiceObject,
)

__all__ = ["ToolSet", "check_supported", "input_items", "new_id", "to_openai"]

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})


class _TypeView(msgspec.Struct):
    type: str | None = None


_type_view = msgspec.json.Decoder(_TypeView)
_ITEMS: dict[str | None, type[InputItem]] = {
    None: MessageItem, "message": MessageItem, "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem}
#: Items that carry nothing the model can read here: replayed reasoning (its summary and
#: encrypted content are another model's), dropped without a word.
_SKIPPED = frozenset({"reasoning"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _decode(raw: msgspec.Raw, into: type[Any], where: str) -> Any:
    try:
        return msgspec.json.decode(raw, type=into)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        detail = str(exc).replace("`$", f"`{where}", 1) if "`$" in str(exc) else \
            f"{exc} - at `{where}`"
        raise InvalidRequest(f"invalid request: {detail}", param=where) from None


def check_supported(request: ResponsesRequest) -> None:
    """Refuse what the fleet cannot do rather than answer as if it had."""
    refused = [("background", bool(request.background), "background responses"),
               ("conversation", request.conversation is not None, "the Conversations API"),
               ("prompt", request.prompt is not None, "prompt templates"),
               ("top_logprobs", bool(request.top_logprobs), "log probabilities"),
               ("truncation", request.truncation == "auto",
                "`truncation: auto` (a prompt over the context is refused instead)")]
    for param, asked, what in refused:
        if asked:
            raise UnsupportedFeature(f"{what} are not served by this gateway", param=param)


def _parts(parts: str | list[ContentPart], where: str, *, output: bool) -> list[ContentPart]:
    """The content as text parts (a string is one), or a 400 naming an unreadable part."""
    if isinstance(parts, str):
        return [ContentPart(type="output_text" if output else "input_text", text=parts)]
    for j, part in enumerate(parts):
        if part.type not in _TEXT_PARTS:
            raise InvalidRequest(f"{where}[{j}]: `{part.type}` content is not supported here; "
                                 "the models read text only", param=f"{where}[{j}]")
        if (part.refusal if part.type == "refusal" else part.text) is None:
            raise InvalidRequest(f"{where}[{j}]: a `{part.type}` part needs its text",
                                 param=f"{where}[{j}]")
    return parts


def input_items(request: ResponsesRequest) -> list[InputItem]:
    """This request's input as items with ids and text-only content: what the model
    reads, what `input_items` lists and what a later `previous_response_id` replays."""
    if isinstance(request.input, str):
        return [MessageItem(id=new_id("msg"), role="user",
                            content=_parts(request.input, "input", output=False))]
    items: list[InputItem] = []
    for i, raw in enumerate(request.input):
        where = f"input[{i}]"
        kind = _decode(raw, _TypeView, where).type
        if kind in _SKIPPED:
            continue
        cls = _ITEMS.get(kind)
        if cls is None:
            raise InvalidRequest(f"{where}: `{kind}` items are not supported here (message, "
                                 "function_call, function_call_output)", param=where)
        item = _decode(raw, cls, where)
        if isinstance(item, MessageItem):
            item.content = _parts(item.content, f"{where}.content",
                                  output=item.role == "assistant")
        elif isinstance(item, FunctionCallOutputItem) and not isinstance(item.output, str):
            item.output = _parts(item.output, f"{where}.output", output=False)
        item.id = item.id or new_id({"message": "msg", "function_call": "fc"}.get(
            str(item.__struct_config__.tag), "fco"))
        items.append(item)
    return items


class ToolSet:
    """The request's tools as the model sees them: functions, namespace groups flattened
    (a function keeps its own name unless two share it, then `namespace__name`), and
    the types of the tools it cannot run."""

    def __init__(self, raws: Sequence[msgspec.Raw] | None) -> None:
        self.functions: list[Tool] = []
        self.ignored: list[str] = []
        self._origin: dict[str, tuple[str | None, str]] = {}
        self._flat: dict[tuple[str | None, str], str] = {}
        grouped: list[tuple[str | None, str, FunctionTool]] = []
        for i, raw in enumerate(raws or ()):
            kind = _decode(raw, _TypeView, f"tools[{i}]").type
            if kind == "function":
                tool = _decode(raw, FunctionTool, f"tools[{i}]")
                grouped.append((None, "", tool))
            elif kind == "namespace":
                group = _decode(raw, NamespaceTool, f"tools[{i}]")
                for j, inner in enumerate(group.tools):
                    where = f"tools[{i}].tools[{j}]"
                    if _decode(inner, _TypeView, where).type == "function":
                        grouped.append((group.name, group.description,
                                        _decode(inner, FunctionTool, where)))
                    else:
                        self._ignore(f"{group.name}.{_decode(inner, _TypeView, where).type}")
            else:
                self._ignore(str(kind))
        counts: dict[str, int] = {}
        for _, _, tool in grouped:
            counts[tool.name] = counts.get(tool.name, 0) + 1
        for namespace, about, tool in grouped:
            flat = tool.name if namespace is None or counts[tool.name] == 1 \
                else f"{namespace}__{tool.name}"
            if flat in self._origin:
                raise InvalidRequest(f"tools: the function `{flat}` is defined twice",
                                     param="tools")
            self._origin[flat] = (namespace, tool.name)
            self._flat[(namespace, tool.name)] = flat
            description = tool.description
            if namespace is not None and about:
                description = f"{about}\n\n{description}" if description else about
            self.functions.append(Tool(function=ToolFunction(
                name=flat, description=description, strict=tool.strict,
                parameters=tool.parameters if tool.parameters is not None else _EMPTY_SCHEMA)))

    def _ignore(self, kind: str) -> None:
        if kind not in self.ignored:
            self.ignored.append(kind)

    def flat_name(self, namespace: str | None, name: str) -> str:
        """The model's name for a (replayed) call of `name` in `namespace`."""
        found = self._flat.get((namespace, name))
        if found is not None:
            return found
        return f"{namespace}__{name}" if namespace else name

    def origin(self, flat: str) -> tuple[str | None, str]:
        """(namespace, name) of a function the model called by its flattened name."""
        return self._origin.get(flat, (None, flat))

    def choice(self, choice: str | ToolChoiceObject | None) -> tuple[list[Tool], Any]:
        """The functions to offer and the canonical tool_choice for `choice`."""
        tools = self.functions
        if choice is None or isinstance(choice, str):
            if choice == "required" and not tools:
                raise InvalidRequest("tool_choice `required` needs a function tool; this "
                                     "request has none the gateway can run", param="tool_choice")
            return tools, choice or "auto"
        if choice.type == "function":
            flat = self._find(choice.name)
            return tools, {"type": "function", "function": {"name": flat}}
        if choice.type == "allowed_tools":
            allowed = {self._find(ref.name) for ref in choice.tools or ()
                       if ref.type == "function"}
            kept = [tool for tool in tools if tool.function.name in allowed]
            if choice.mode == "required" and not kept:
                raise InvalidRequest("tool_choice allows no function tool this gateway can "
                                     "run, and requires a call", param="tool_choice")
            return kept, choice.mode or "auto"
        raise InvalidRequest(f"tool_choice forces `{choice.type}`, a tool this gateway cannot "
                             "run (it runs function tools)", param="tool_choice")

    def _find(self, name: str | None) -> str:
        if name in self._origin:
            return name
        matches = [flat for (_, inner), flat in self._flat.items() if inner == name]
        if len(matches) != 1:
            raise InvalidRequest(f"tool_choice names the function `{name}`, which is not "
                                 "among the request's function tools", param="tool_choice")
        return matches[0]


def _text(parts: str | list[ContentPart]) -> str:
    if isinstance(parts, str):
        return parts
    return "\n\n".join((part.refusal if part.type == "refusal" else part.text) or ""
                       for part in parts)


def _messages(instructions: str | None, items: Sequence[InputItem],
              tools: ToolSet) -> list[ChatMessage]:
    """Chat messages for the items: leading system and developer text (after the
    instructions) is the system prompt; a later one becomes a user turn, because
    strict-alternation templates (Gemma) refuse a late system turn."""
    system = [instructions] if instructions else []
    out: list[ChatMessage] = []
    for item in items:
        if isinstance(item, MessageItem):
            text = _text(item.content)
            if item.role in ("system", "developer") and not out:
                system.append(text)
            else:
                role = "assistant" if item.role == "assistant" else "user"
                out.append(ChatMessage(role=role, content=text))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, function=ToolCallFunction(
                name=tools.flat_name(item.namespace, item.name),
                arguments=item.arguments.strip() or "{}"))
            # Content "" rather than null beside tool calls: llama-cpp-python rejects null.
            out.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
        else:
            out.append(ChatMessage(role="tool", tool_call_id=item.call_id,
                                   content=_text(item.output)))
    head = "\n\n".join(text for text in system if text)
    return _merged(([ChatMessage(role="system", content=head)] if head else []) + out)


def _merged(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Adjacent user turns as one, and adjacent assistant turns (text, then a call, then
    more calls) as one, so templates that need alternation take the conversation."""
    out: list[ChatMessage] = []
    for message in messages:
        last = out[-1] if out else None
        if last is None or last.role != message.role or message.role not in ("user", "assistant"):
            out.append(message)
        elif message.role == "user":
            last.content = f"{last.text()}\n\n{message.text()}"
        else:
            last.content = last.text() + message.text()
            last.tool_calls = (last.tool_calls or []) + (message.tool_calls or []) or None
    return out


def _response_format(fmt: TextFormat | None) -> dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema is None:
        raise InvalidRequest("text.format: a `json_schema` format needs its `schema`",
                             param="text.format.schema")
    spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema,
                            "strict": fmt.strict is not False}
    return {"type": "json_schema", "json_schema": spec}


def to_openai(request: ResponsesRequest, *, model: str, history: Sequence[InputItem],
              items: Sequence[InputItem], tools: ToolSet) -> ChatCompletionRequest:
    """The canonical request for `model` (as the client named it): `history` (the kept
    conversation of `previous_response_id`) then this request's `items`."""
    conversation = [*history, *items]
    if not conversation:
        raise InvalidRequest("input is empty", param="input")
    out = ChatCompletionRequest(
        model=model, messages=_messages(request.instructions, conversation, tools),
        max_tokens=request.max_output_tokens, temperature=request.temperature,
        top_p=request.top_p, stream=request.stream, user=request.user,
        stream_options=StreamOptions(include_usage=True) if request.stream else None,
        response_format=_response_format(request.text.format if request.text else None))
    offered, choice = tools.choice(request.tool_choice)
    if offered and choice != "none":  # tool_choice is left out with no tools (CliRelay#740)
        out.tools = offered
        out.tool_choice = choice
        out.parallel_tool_calls = request.parallel_tool_calls
    return out
