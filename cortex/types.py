"""Wire types: the OpenAI-shaped canonical request and response, and the neuron's API.

The canonical request is OpenAI chat-completions shaped because that is what a
neuron speaks. Request types ignore unknown fields (clients send many); response
types omit only fields that are UNSET, never ones that are meaningfully null.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from cortex.config import ModelProfile
from cortex.stops import check_stops

__all__ = [
    "GPU",
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "Delta",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EstimateRequest",
    "LoadRequest",
    "MemoryEstimate",
    "ModelState",
    "ModelStatus",
    "NodeStatus",
    "PromptTokensDetails",
    "ResponseMessage",
    "StreamOptions",
    "TokenizeRequest",
    "TokenizeResponse",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallFunction",
    "ToolFunction",
    "UnloadRequest",
    "Usage",
]


class Wire(msgspec.Struct, kw_only=True):
    """Base for our own API types: every field on the wire, unknown fields tolerated."""


# --- OpenAI-shaped requests ---------------------------------------------------------------

class ToolFunction(Wire, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Wire, kw_only=True):
    type: str = "function"
    function: ToolFunction


class ToolCallFunction(msgspec.Struct, kw_only=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function"
    function: ToolCallFunction


class ChatMessage(Wire, kw_only=True):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        """The message's text, with array content's text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content
                       if part.get("type") in ("text", "input_text"))


class StreamOptions(Wire, kw_only=True):
    include_usage: bool = False
    # cortex's own, which only its gateway sets (the Anthropic dialect): one chunk with
    # the prompt's usage and no choices before any content (docs/neuron.md). Unset, not
    # false, so other requests' bodies stay as they were.
    prompt_usage: bool | UnsetType = UNSET


class SamplingFields(Wire, kw_only=True):
    """Sampling parameters shared by chat and text completions."""

    model: str
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    ignore_eos: bool = False  # llama-server's extension: generate max_tokens whatever comes
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | int | None = None  # refused by the neuron when set: not served
    user: str | None = None

    def __post_init__(self) -> None:
        # The neuron's own cap (InvalidRequest, a 400): its scheduler matches the list.
        check_stops(self.stop, field="stop")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None
    # cortex's (Ollama's chat `truncate`): over the context, drop the oldest turns, not 400.
    truncate_history: bool = False

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: str | list[str | int]
    max_tokens: int | None = 16
    echo: bool = False
    suffix: str | None = None


class EmbeddingRequest(Wire, kw_only=True):
    model: str
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # cortex's (Ollama's `truncate`): an input over the context is cut to fit, not refused.
    truncate: bool = False


# --- OpenAI-shaped responses --------------------------------------------------------------

class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | UnsetType = UNSET


class ResponseMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str | None
    reasoning_content: str | UnsetType = UNSET  # a thinking model's, apart from content
    tool_calls: list[ToolCall] | UnsetType = UNSET


class ChatChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None
    logprobs: None = None
    stop_cause: str | UnsetType = UNSET  # cortex's: with "length", "max_tokens" or "context"


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ToolCallDelta(msgspec.Struct, kw_only=True):
    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: dict[str, str] | UnsetType = UNSET


class Delta(msgspec.Struct, kw_only=True):
    role: str | UnsetType = UNSET
    content: str | UnsetType = UNSET
    reasoning_content: str | UnsetType = UNSET  # a thinking model's (DeepSeek's name)
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None
    stop_cause: str | UnsetType = UNSET


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | UnsetType | None = UNSET
    system_fingerprint: str | None = None


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None
    stop_cause: str | UnsetType = UNSET


class Completion(msgspec.Struct, kw_only=True):
    """A text completion; streamed chunks use the same shape (OpenAI does too)."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | UnsetType | None = UNSET


class EmbeddingData(msgspec.Struct, kw_only=True):
    object: str = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[EmbeddingData]
    model: str
    usage: dict[str, int]


# --- Neuron API ----------------------------------------------------------------------------

ModelState = Literal["loading", "ready", "unloading", "failed"]


class GPU(Wire, kw_only=True):
    index: int
    name: str
    memory_total: int
    memory_used: int
    memory_free: int
    utilization: int | None = None
    driver: str | None = None
    uuid: str | None = None


class MemoryEstimate(Wire, kw_only=True):
    """What a model will take: weights + KV cache (n_ctx x slots) + compute buffers (they
    grow with n_batch) + a fixed overhead."""

    weights: int
    kv_cache: int
    overhead: int
    total: int
    compute: int = 0


class ModelStatus(Wire, kw_only=True):
    id: str
    state: ModelState
    source: str
    harness: str = "llamacpp"
    n_ctx: int = 0
    slots: int = 1
    estimate: MemoryEstimate | None = None
    measured_bytes: int | None = None
    in_flight: int = 0
    queued: int = 0
    last_used: float = 0.0
    load_seconds: float | None = None
    load_progress: float = 0.0
    chat: bool = True
    embeddings: bool = False
    error: str | None = None
    # Set by a gateway's pin (POST /models/pin), so every gateway replica's evictor
    # leaves this copy alone; it goes with the copy (an unload, a restart).
    pinned: bool = False
    # ModelProfile.fingerprint() of the profile this copy runs: a gateway whose profile's
    # differs loads it again (the neuron then changes or reloads the copy).
    profile_fingerprint: str = ""


class NodeStatus(Wire, kw_only=True):
    node: str
    version: str
    cpu_only: bool
    gpus: list[GPU] = []
    budget_bytes: int
    reserved_bytes: int
    free_bytes: int
    # Unloaded models' weights kept to load them again fast: in free_bytes, given back
    # when a load needs the room.
    kept_bytes: int = 0
    models: list[ModelStatus] = []
    uptime_seconds: float = 0.0
    # Set by POST /drain: the node finishes what it has and takes nothing new.
    draining: bool = False


class DrainRequest(Wire, kw_only=True):
    """Body of a neuron's POST /drain: start (true) or stop (false) draining."""

    draining: bool = True


class PinRequest(Wire, kw_only=True):
    """Body of a neuron's POST /models/pin."""

    model: str
    pinned: bool = True


class LoadRequest(Wire, kw_only=True):
    profile: ModelProfile
    wait: bool = True


class EstimateRequest(Wire, kw_only=True):
    """Ask a neuron what a profile would reserve there, without loading it."""

    profile: ModelProfile


class UnloadRequest(Wire, kw_only=True):
    model: str
    force: bool = False


class TokenizeRequest(Wire, kw_only=True):
    model: str
    text: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    add_generation_prompt: bool = True
    return_tokens: bool = False


class TokenizeResponse(Wire, kw_only=True):
    model: str
    count: int
    tokens: list[int] | None = None
