"""Ollama requests into the canonical OpenAI ones the neurons speak.

Everything is checked here, before the gateway routes it: the options are typed and
bounded (types.py) and mapped field by field (`num_ctx` asks nothing: the profile's
context is the model's, as Ollama caps one over the model's own length and Continue and
LlamaIndex send one with every request), `format` becomes a `response_format` the
neuron's grammar enforces, tools and tool calls change shape (arguments: an object here,
a JSON string there; a tool result is matched to its call by its id, else by name), an
assistant turn's `thinking` is its `reasoning_content`, chat's `truncate` (a
conversation over the context loses its oldest turns, which the neuron does) is
`truncate_history`, and what this gateway cannot honour (images, a per-request template,
`context`) is a 400 naming it. `think` asks nothing of the neuron: a thinking model's
reasoning comes apart from its answer whatever is asked, and the reply shows it or not
(reply.py); the models here take no effort level.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from cortex import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    InvalidRequest,
    StreamOptions,
    Tool,
    ToolCall,
    ToolCallFunction,
    UnsupportedFeature,
)

from .types import ChatRequest, EmbedRequest, GenerateRequest, KeepAlive, Message, Options

__all__ = ["FOREVER", "chat_request", "embed_inputs", "embed_request",
           "generate_request", "keep_alive_seconds"]

_encode = msgspec.json.Encoder().encode
#: keep_alive < 0: keep the model loaded (no idle TTL).
FOREVER = math.inf
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
          "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?([0-9]*\.?[0-9]+)")
#: A longer keep-alive than this is surely a mistake (about 30 years).
_MAX_KEEP_ALIVE = 1e9


def keep_alive_seconds(value: KeepAlive) -> float | None:
    """`keep_alive` as seconds: None when absent, 0 to unload after the request, FOREVER
    for a negative one. Numbers are seconds; strings are Go durations ("5m", "1h30m")."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif body and sum(len(m.group()) for m in _DURATION.finditer(body)) == len(body):
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(body))
        else:
            raise InvalidRequest(f"keep_alive `{value[:40]}` is not a duration (such as "
                                 "\"5m\", \"1h30m\", \"0\" or \"-1\")", param="keep_alive")
    else:
        seconds = float(value)
    if math.isnan(seconds) or seconds > _MAX_KEEP_ALIVE:
        raise InvalidRequest("keep_alive is out of range", param="keep_alive")
    return FOREVER if seconds < 0 else seconds


def _sampling(options: Options | None) -> dict[str, Any]:
    """The options the neuron samples with, in OpenAI's names."""
    if options is None:
        return {}
    fields: dict[str, Any] = {}
    predict = options.num_predict
    if predict is not None:
        if predict > 0:
            fields["max_tokens"] = predict
        elif predict not in (-1, -2):  # -1: no limit, -2: fill the context
            raise InvalidRequest("options.num_predict must be a positive count, -1 (no "
                                 "limit) or -2 (fill the context)",
                                 param="options.num_predict")
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty",
                 "presence_penalty", "frequency_penalty", "stop"):
        if (value := getattr(options, name)) is not None:
            fields[name] = value
    if options.seed is not None and options.seed >= 0:  # Ollama's -1: a random seed
        fields["seed"] = options.seed
    return fields


def _response_format(value: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise InvalidRequest(f"format `{value[:40]}` is not \"json\" or a JSON schema",
                         param="format")


def _tools(tools: list[dict[str, Any]] | None) -> list[Tool] | None:
    if not tools:
        return None
    try:
        return [msgspec.convert(tool, Tool) for tool in tools]
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid tools: {exc}", param="tools") from None


def _messages(messages: list[Message]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    pending: list[tuple[str, str]] = []  # the last assistant turn's calls: (name, id)
    made = 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.role.lower()  # as Ollama reads it ("User" is user)
        if role not in _ROLES:
            raise InvalidRequest(f"{where}.role `{message.role[:40]}` is not system, user, "
                                 "assistant or tool", param=f"{where}.role")
        if message.images:
            raise UnsupportedFeature(f"{where}.images: the models of this gateway take "
                                     "text only", param=f"{where}.images")
        if role == "assistant" and message.tool_calls:
            calls = []
            pending = []
            for call in message.tool_calls:
                made += 1
                call_id = call.id or f"call_{made}"
                pending.append((call.function.name, call_id))
                calls.append(ToolCall(id=call_id, function=ToolCallFunction(
                    name=call.function.name,
                    arguments=_encode(call.function.arguments).decode())))
            out.append(ChatMessage(role="assistant", content=message.content or None,
                                   tool_calls=calls,
                                   reasoning_content=message.thinking or None))
        elif role == "tool":
            out.append(ChatMessage(role="tool", content=message.content or "",
                                   tool_call_id=_answered(message, pending, made)))
        elif role == "assistant":
            out.append(ChatMessage(role="assistant", content=message.content or "",
                                   reasoning_content=message.thinking or None))
        else:
            out.append(ChatMessage(role=role, content=message.content or ""))
    return out


def _answered(message: Message, pending: list[tuple[str, str]], made: int) -> str:
    """The id of the call a tool result answers: its own id, else the first unanswered
    call of that name (else the first unanswered one)."""
    if message.tool_call_id:
        pending[:] = [p for p in pending if p[1] != message.tool_call_id]
        return message.tool_call_id
    for position, (name, call_id) in enumerate(pending):
        if message.tool_name in (None, name):
            del pending[position]
            return call_id
    return f"call_{made}_result"


def _no_logprobs(req: ChatRequest | GenerateRequest) -> None:
    """What no model here gives is refused."""
    if req.logprobs or req.top_logprobs:
        field = "logprobs" if req.logprobs else "top_logprobs"
        raise UnsupportedFeature(f"{field}: log probabilities are not served", param=field)


def chat_request(req: ChatRequest, *, model: str) -> ChatCompletionRequest:
    _no_logprobs(req)
    return ChatCompletionRequest(
        model=model, messages=_messages(req.messages), stream=req.stream,
        stream_options=StreamOptions(include_usage=True) if req.stream else None,
        tools=_tools(req.tools), response_format=_response_format(req.format),
        truncate_history=req.truncate, **_sampling(req.options))


def generate_request(req: GenerateRequest, *, model: str
                     ) -> ChatCompletionRequest | CompletionRequest:
    """A prompt as a chat turn (the profile's template applies), or raw as a completion."""
    _no_logprobs(req)
    if req.images:
        raise UnsupportedFeature("images: the models of this gateway take text only",
                                 param="images")
    if req.template:
        raise UnsupportedFeature("template: the model's chat template is its profile's; "
                                 "send a raw prompt instead (raw: true)", param="template")
    if req.context:
        raise UnsupportedFeature("context is deprecated and not kept by this gateway: "
                                 "send the conversation to /api/chat", param="context")
    if req.suffix:
        raise UnsupportedFeature("suffix (fill-in-the-middle) is not served",
                                 param="suffix")
    sampling = _sampling(req.options)
    stream_options = StreamOptions(include_usage=True) if req.stream else None
    if req.raw:
        if req.format:
            raise UnsupportedFeature("format needs the chat template: not with raw: true",
                                     param="format")
        sampling.setdefault("max_tokens", None)  # not OpenAI's default of 16
        return CompletionRequest(model=model, prompt=req.prompt, stream=req.stream,
                                 stream_options=stream_options, **sampling)
    messages = [ChatMessage(role="system", content=req.system)] if req.system else []
    messages.append(ChatMessage(role="user", content=req.prompt))
    return ChatCompletionRequest(model=model, messages=messages, stream=req.stream,
                                 stream_options=stream_options,
                                 response_format=_response_format(req.format), **sampling)


def embed_request(inputs: str | list[str], *, model: str,
                  truncate: bool = False) -> EmbeddingRequest:
    """`truncate`: an input over the context is cut at its end (the neuron does it,
    where the tokens are known) instead of refused. `dimensions` is not sent: Ollama
    cuts only a vector longer than asked, which the answer does (EmbedExchange)."""
    texts: list[str | int | list[int]] = [inputs] if isinstance(inputs, str) else [*inputs]
    return EmbeddingRequest(model=model, input=texts, truncate=truncate)


def embed_inputs(req: EmbedRequest) -> list[str]:
    return [req.input] if isinstance(req.input, str) else list(req.input)
