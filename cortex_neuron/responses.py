"""GenerationEvents to OpenAI responses: whole objects, or SSE chunks as they come.

Streams carry usage as OpenAI's spec says: only when the client asks with
`stream_options.include_usage`, then as `usage: null` on every chunk and the counts on
one extra last chunk whose `choices` is empty. `finish_usage` (asked by a gateway with
`x-cortex-usage: finish`, see app.py) also puts the counts on the finish chunk, as
every stream did before, for gateways that read them there. `admitted` (given when the
gateway asks with `stream_options.prompt_usage`) adds one chunk with the prompt's
counts and no choices before any content, so its Anthropic dialect can open
`message_start` with the prompt's size.

Reasoning (a thinking model's, apart from its answer) is `reasoning_content`, on the
message or in deltas of its own, as DeepSeek and llama-server send it; a text completion
has no place for it and leaves it out.

A `length` finish says why in `stop_cause` on the choice, a cortex extension: OpenAI
clients ignore it, and the gateway's Anthropic dialect tells a full context from a
reached max_tokens by it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import msgspec
from msgspec import UNSET, UnsetType

from cortex import Admitted, Done, GenerationEvent, ReasoningDelta, TextDelta, ToolCalls
from cortex.errors import CortexError, Unavailable
from cortex.types import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    PromptTokensDetails,
    ResponseMessage,
    ToolCallDelta,
    Usage,
)

__all__ = ["chat_completion", "chat_stream", "completion", "completion_stream", "sse_error"]

_encode = msgspec.json.Encoder().encode
DONE = b"data: [DONE]\n\n"


def _frame(obj: object) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def sse_error(exc: CortexError) -> bytes:
    """A mid-stream failure: an error frame the OpenAI SDK raises on, then the stream ends."""
    return _frame(exc.openai_envelope())


def _usage(done: Done) -> Usage:
    return Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                 total_tokens=done.prompt_tokens + done.completion_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=done.cached_tokens))


def _prompt_usage(admitted: Admitted) -> Usage:
    return Usage(prompt_tokens=admitted.prompt_tokens, completion_tokens=0,
                 total_tokens=admitted.prompt_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=admitted.cached_tokens))


def _finish(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _cause(done: Done, finish: str) -> str | UnsetType:
    """`stop_cause` for a choice that finished with `finish`."""
    return done.stop_cause if finish == "length" and done.stop_cause else UNSET


async def chat_completion(model: str, events: AsyncIterator[GenerationEvent]) -> ChatCompletion:
    text: list[str] = []
    reasoning: list[str] = []
    tool_calls = None
    async for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, ToolCalls):
            tool_calls = event.calls
        elif isinstance(event, Done):
            message = ResponseMessage(content="".join(text) if text or not tool_calls else None)
            if reasoning:
                message.reasoning_content = "".join(reasoning)
            finish = _finish(event)
            if tool_calls:
                message.tool_calls = tool_calls
                finish = "tool_calls"
            return ChatCompletion(
                id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model,
                choices=[ChatChoice(message=message, finish_reason=finish,
                                    stop_cause=_cause(event, finish))],
                usage=_usage(event))
    raise Unavailable("generation ended without a result")


async def chat_stream(model: str, first: GenerationEvent, events: AsyncIterator[GenerationEvent],
                      *, include_usage: bool, finish_usage: bool = False,
                      admitted: Admitted | None = None) -> AsyncIterator[bytes]:
    """SSE frames; usage as the module's docstring says."""
    chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None,
              choices: bool = True, cause: str | UnsetType = UNSET) -> bytes:
        out = ChatCompletionChunk(
            id=chunk_id, created=created, model=model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish, stop_cause=cause)]
            if choices else [])
        if usage is not None or include_usage:
            out.usage = usage
        return _frame(out)

    yield chunk(Delta(role="assistant", content=""))
    if admitted is not None:
        yield chunk(Delta(), usage=_prompt_usage(admitted), choices=False)
    tools_sent = False
    event: GenerationEvent | None = first
    try:
        while event is not None:
            if isinstance(event, TextDelta):
                yield chunk(Delta(content=event.text))
            elif isinstance(event, ReasoningDelta):
                yield chunk(Delta(reasoning_content=event.text))
            elif isinstance(event, ToolCalls):
                tools_sent = True
                yield chunk(Delta(tool_calls=[
                    ToolCallDelta(index=i, id=c.id, type="function",
                                  function={"name": c.function.name,
                                            "arguments": c.function.arguments})
                    for i, c in enumerate(event.calls)]))
            elif isinstance(event, Done):
                usage = _usage(event)
                finish = "tool_calls" if tools_sent else _finish(event)
                yield chunk(Delta(), finish, usage if finish_usage else None,
                            cause=_cause(event, finish))
                if include_usage:
                    yield chunk(Delta(), usage=usage, choices=False)
                break
            event = await anext(events, None)
    except CortexError as exc:
        yield sse_error(exc)
        return
    yield DONE


async def completion(model: str, events: AsyncIterator[GenerationEvent]) -> Completion:
    text: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Done):
            finish = _finish(event)
            return Completion(
                id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model,
                choices=[CompletionChoice(text="".join(text), finish_reason=finish,
                                          stop_cause=_cause(event, finish))],
                usage=_usage(event))
    raise Unavailable("generation ended without a result")


async def completion_stream(model: str, first: GenerationEvent,
                            events: AsyncIterator[GenerationEvent], *,
                            include_usage: bool, finish_usage: bool = False,
                            admitted: Admitted | None = None) -> AsyncIterator[bytes]:
    chunk_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(text: str, finish: str | None = None, usage: Usage | None = None,
              choices: bool = True, cause: str | UnsetType = UNSET) -> bytes:
        out = Completion(id=chunk_id, created=created, model=model,
                         choices=[CompletionChoice(text=text, finish_reason=finish,
                                                   stop_cause=cause)]
                         if choices else [])
        if usage is not None or include_usage:
            out.usage = usage
        return _frame(out)

    if admitted is not None:
        yield chunk("", usage=_prompt_usage(admitted), choices=False)
    event: GenerationEvent | None = first
    try:
        while event is not None:
            if isinstance(event, TextDelta):
                yield chunk(event.text)
            elif isinstance(event, Done):
                usage = _usage(event)
                finish = _finish(event)
                yield chunk("", finish, usage if finish_usage else None,
                            cause=_cause(event, finish))
                if include_usage:
                    yield chunk("", usage=usage, choices=False)
                break
            event = await anext(events, None)
    except CortexError as exc:
        yield sse_error(exc)
        return
    yield DONE
