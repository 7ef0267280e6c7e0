"""GenerationEvents to OpenAI responses: whole objects, or SSE chunks as they come."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import msgspec

from cortex import Done, GenerationEvent, TextDelta, ToolCalls
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


def _finish(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


async def chat_completion(model: str, events: AsyncIterator[GenerationEvent]) -> ChatCompletion:
    text: list[str] = []
    tool_calls = None
    async for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCalls):
            tool_calls = event.calls
        elif isinstance(event, Done):
            message = ResponseMessage(content="".join(text) if text or not tool_calls else None)
            finish = _finish(event)
            if tool_calls:
                message.tool_calls = tool_calls
                finish = "tool_calls"
            return ChatCompletion(
                id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model,
                choices=[ChatChoice(message=message, finish_reason=finish)],
                usage=_usage(event))
    raise Unavailable("generation ended without a result")


async def chat_stream(model: str, first: GenerationEvent, events: AsyncIterator[GenerationEvent],
                      *, include_usage: bool) -> AsyncIterator[bytes]:
    """SSE frames. Usage rides on the finish chunk always, and in OpenAI's separate
    empty-choices chunk when the client asked with stream_options.include_usage."""
    chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None,
              choices: bool = True) -> bytes:
        out = ChatCompletionChunk(
            id=chunk_id, created=created, model=model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)] if choices else [])
        if usage is not None:
            out.usage = usage
        return _frame(out)

    yield chunk(Delta(role="assistant", content=""))
    tools_sent = False
    event: GenerationEvent | None = first
    try:
        while event is not None:
            if isinstance(event, TextDelta):
                yield chunk(Delta(content=event.text))
            elif isinstance(event, ToolCalls):
                tools_sent = True
                yield chunk(Delta(tool_calls=[
                    ToolCallDelta(index=i, id=c.id, type="function",
                                  function={"name": c.function.name,
                                            "arguments": c.function.arguments})
                    for i, c in enumerate(event.calls)]))
            elif isinstance(event, Done):
                usage = _usage(event)
                yield chunk(Delta(), "tool_calls" if tools_sent else _finish(event), usage)
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
            return Completion(
                id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model,
                choices=[CompletionChoice(text="".join(text), finish_reason=_finish(event))],
                usage=_usage(event))
    raise Unavailable("generation ended without a result")


async def completion_stream(model: str, first: GenerationEvent,
                            events: AsyncIterator[GenerationEvent], *,
                            include_usage: bool) -> AsyncIterator[bytes]:
    chunk_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(text: str, finish: str | None = None, usage: Usage | None = None,
              choices: bool = True) -> bytes:
        out = Completion(id=chunk_id, created=created, model=model,
                         choices=[CompletionChoice(text=text, finish_reason=finish)]
                         if choices else [])
        if usage is not None:
            out.usage = usage
        return _frame(out)

    event: GenerationEvent | None = first
    try:
        while event is not None:
            if isinstance(event, TextDelta):
                yield chunk(event.text)
            elif isinstance(event, Done):
                usage = _usage(event)
                yield chunk("", _finish(event), usage)
                if include_usage:
                    yield chunk("", usage=usage, choices=False)
                break
            event = await anext(events, None)
    except CortexError as exc:
        yield sse_error(exc)
        return
    yield DONE
