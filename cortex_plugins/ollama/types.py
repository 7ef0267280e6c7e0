"""The Ollama API's wire types (docs/api.md of ollama/ollama), as this gateway reads them.

Requests are decoded into these Structs, so a field of the wrong type is a 400 naming
its JSON path before anything is translated. Fields Ollama has and this gateway cannot
honour are decoded too, so the translation refuses them by name rather than dropping
them silently; fields Ollama itself ignores are ignored here as well.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "ChatRequest",
    "CopyRequest",
    "EmbedRequest",
    "EmbeddingsRequest",
    "GenerateRequest",
    "Message",
    "ModelRequest",
    "Options",
    "OutToolCall",
    "PullRequest",
    "ToolCall",
    "ToolCallFunction",
]

#: A keep_alive: seconds as a number, or a Go duration ("5m", "1h30m", "-1", "0").
KeepAlive = float | str | None
#: `think`: a thinking model's reasoning shown (true, or a level) or hidden (false).
Think = bool | Literal["low", "medium", "high", "max"] | None
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]


class Options(msgspec.Struct, kw_only=True):
    """`options`: the Modelfile parameters a request may set. Mapped ones go to the
    neuron; `num_ctx` is checked against the model's context; the runtime ones
    (`num_gpu`, `num_thread`, `num_batch`, ...) are the profile's to decide, so, as
    Ollama does with options it cannot apply, they are ignored."""

    num_predict: int | None = None
    temperature: NonNegative | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    min_p: Probability | None = None
    seed: int | None = None
    stop: list[str] | None = None
    num_ctx: Annotated[int, msgspec.Meta(ge=1)] | None = None
    repeat_penalty: NonNegative | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ToolCallFunction(msgspec.Struct, kw_only=True):
    name: str
    # Ollama sends the arguments as an object, not OpenAI's JSON string.
    arguments: dict[str, Any] = {}
    index: int | None = None


class ToolCall(msgspec.Struct, kw_only=True):
    function: ToolCallFunction
    id: str | None = None


class Message(msgspec.Struct, kw_only=True):
    role: str
    content: str | None = None
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class _Inference(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: Think = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(_Inference, kw_only=True):
    messages: list[Message] = []
    tools: list[dict[str, Any]] | None = None
    # A conversation over the context loses its oldest turns (false: it is refused).
    truncate: bool = True


class GenerateRequest(_Inference, kw_only=True):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None
    context: list[int] | None = None


class EmbedRequest(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: str | list[str] = []
    truncate: bool = True
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    """The legacy `/api/embeddings`: one prompt, one `embedding`."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class ModelRequest(msgspec.Struct, kw_only=True):
    """`/api/show` and `/api/delete`: `model` (older clients say `name`)."""

    model: str = ""
    name: str = ""
    verbose: bool = False

    @property
    def target(self) -> str:
        return self.model or self.name


class PullRequest(ModelRequest, kw_only=True):
    stream: bool = True
    insecure: bool = False


class CopyRequest(msgspec.Struct, kw_only=True):
    source: str = ""
    destination: str = ""


class OutToolCall(msgspec.Struct, kw_only=True):
    """A tool call in a reply: arguments as an object, as Ollama sends them."""

    function: ToolCallFunction
