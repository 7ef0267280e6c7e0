"""The neuron's answer → a Response object.

A `Draft` knows what a response echoes of its request (model, instructions, tools,
sampling) and makes the Response at each stage; `from_openai` fills one from a whole
ChatCompletion, and the StreamTranslator from a stream, with the same rules: text is a
`message` item unless it is only whitespace, each tool call a `function_call` item
under its own (namespace, name), calls past `parallel_tool_calls: false` or
`max_tool_calls` dropped, `length` an `incomplete` response (`max_output_tokens`) when
the client set that budget, and a context that filled up while generating an error, as
OpenAI, which refuses such a request up front, would answer it.

A reply cut by a budget the client did not set (the profile's `default_max_tokens` or
`max_tokens`) is `completed`: where it ends was the server's choice, as a model's own
stop is, and Codex, which sends no `max_output_tokens`, fails its turn on `incomplete`.
"""

from __future__ import annotations

import time

from msgspec import UNSET

from cortex import ChatCompletion, InvalidRequest, ToolCall, UpstreamError, Usage

from .request import ToolSet, new_id
from .types import (
    IncompleteDetails,
    InputTokensDetails,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
    TextFormat,
)

__all__ = ["CallIds", "ContextFilled", "Draft", "from_openai", "response_usage"]


class ContextFilled(InvalidRequest):
    """The context window filled up while the model was writing: the reply is cut, not
    finished, and a longer `max_output_tokens` would not help."""

    code = "context_length_exceeded"

    def __init__(self) -> None:
        super().__init__("the model's context window filled up while it wrote the reply: "
                         "shorten the input (or start a new conversation)", param="input")


def response_usage(prompt: int, completion: int, cached: int = 0) -> ResponseUsage:
    return ResponseUsage(input_tokens=prompt, output_tokens=completion,
                         input_tokens_details=InputTokensDetails(cached_tokens=cached),
                         total_tokens=prompt + completion)


class CallIds:
    """`call_id`s unique in one response: the backend's where it gave one."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def assign(self, backend_id: str | None) -> str:
        call_id = backend_id or ""
        if not call_id or call_id in self._used:
            call_id = new_id("call")
        self._used.add(call_id)
        return call_id


class Draft:
    """One response's identity and echo of its request; `response()` at any stage."""

    def __init__(self, request: ResponsesRequest, tools: ToolSet, *,
                 response_id: str | None = None) -> None:
        self.request = request
        self.tools = tools
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        # Calls the client takes: one with parallel_tool_calls false, at most max_tool_calls.
        limit = request.max_tool_calls
        self.max_calls = 1 if request.parallel_tool_calls is False else limit

    @property
    def store(self) -> bool:
        return self.request.store is not False

    def incomplete(self, finish: str | None) -> bool:
        """Whether a reply that finished so ran out of the client's own budget."""
        return finish == "length" and self.request.max_output_tokens is not None

    def response(self, status: str = "in_progress", output: list[OutputItem] | None = None,
                 usage: ResponseUsage | None = None, error: ResponseError | None = None,
                 incomplete: bool = False) -> ResponseObject:
        request = self.request
        out = ResponseObject(
            id=self.id, created_at=self.created_at, status=status,  # type: ignore[arg-type]
            completed_at=int(time.time()) if status == "completed" else None,
            error=error, output=list(output or ()), usage=usage, model=request.model,
            incomplete_details=IncompleteDetails(reason="max_output_tokens")
            if incomplete else None,
            instructions=request.instructions, max_output_tokens=request.max_output_tokens,
            max_tool_calls=request.max_tool_calls,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id, reasoning=request.reasoning,
            store=self.store, temperature=request.temperature, top_p=request.top_p,
            text=request.text or TextConfig(format=TextFormat(type="text")),
            tool_choice=request.tool_choice or "auto", tools=list(request.tools or ()),
            truncation=request.truncation or "disabled", user=request.user,
            metadata=dict(request.metadata or {}))
        if self.tools.ignored:
            out.ignored_tools = list(self.tools.ignored)
        return out

    def function_call(self, call_id: str, flat_name: str, arguments: str,
                      status: str = "completed", item_id: str | None = None
                      ) -> OutputFunctionCall:
        namespace, name = self.tools.origin(flat_name)
        item = OutputFunctionCall(id=item_id or new_id("fc"), call_id=call_id, name=name,
                                  arguments=arguments, status=status)  # type: ignore[arg-type]
        item.namespace = namespace if namespace is not None else UNSET
        return item


def _calls(draft: Draft, calls: list[ToolCall]) -> list[ToolCall]:
    return calls if draft.max_calls is None else calls[:draft.max_calls]


def from_openai(draft: Draft, completion: ChatCompletion) -> ResponseObject:
    """The finished Response for a whole backend answer."""
    if not completion.choices:
        raise UpstreamError("the backend answered without a choice")
    choice = completion.choices[0]
    if choice.finish_reason == "length" and choice.stop_cause == "context":
        raise ContextFilled
    incomplete = draft.incomplete(choice.finish_reason)
    output: list[OutputItem] = []
    text = choice.message.content or ""
    if text.strip():
        output.append(OutputMessage(id=new_id("msg"), status="completed",
                                    content=[OutputText(text=text)]))
    ids = CallIds()
    tool_calls = choice.message.tool_calls
    for call in _calls(draft, [] if tool_calls is UNSET else tool_calls):
        output.append(draft.function_call(ids.assign(call.id), call.function.name,
                                          call.function.arguments.strip() or "{}"))
    if incomplete and output:  # the item being written when the budget ran out
        output[-1].status = "incomplete"
    return draft.response("incomplete" if incomplete else "completed", output,
                          usage=_usage(completion.usage), incomplete=incomplete)


def _usage(usage: Usage) -> ResponseUsage:
    details = usage.prompt_tokens_details
    cached = 0 if details is UNSET else details.cached_tokens
    return response_usage(usage.prompt_tokens, usage.completion_tokens, cached)
