"""Anthropic Messages request → the canonical OpenAI request (api-conformance §6.1).

`to_openai` turns a client's MessagesRequest into what a neuron takes; `to_tokenize`
the same prompt for count_tokens. Content a model cannot read is a 400 naming the
block, never quietly dropped.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from cortex import (
    ChatCompletionRequest,
    ChatMessage,
    InvalidRequest,
    StreamOptions,
    TokenizeRequest,
    Tool,
    ToolCall,
    ToolCallFunction,
    ToolFunction,
)

from .types import (
    ContentBlock,
    Conversation,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    OutputConfig,
    TextBlock,
    ThinkingBlock,
    ToolChoice,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
)
from .types import Tool as AnthropicTool

__all__ = ["to_openai", "to_tokenize"]

_encode = msgspec.json.Encoder().encode
# Claude Code stamps `cch=<hash>;` per request into system[0]; it would defeat KV reuse (§5.9).
_BILLING_STAMP = re.compile(r"^(x-anthropic-billing-header:[^\n]*?\bcch=)[0-9A-Za-z]+", re.M)


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
        # prompt_usage: the prompt's counts before any output, for message_start's usage.
        stream_options=StreamOptions(include_usage=True, prompt_usage=True) if stream else None,
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
