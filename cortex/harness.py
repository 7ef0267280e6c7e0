"""Harness: how a neuron runs one kind of model in-process.

A Harness estimates and loads; the Engine it returns serves requests. Engines speak
in GenerationEvents, and the neuron app turns those into OpenAI chunks, so a harness
never formats wire output itself.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Callable
from typing import ClassVar

import msgspec

from cortex.config import ModelProfile
from cortex.types import (
    ChatCompletionRequest,
    CompletionRequest,
    MemoryEstimate,
    TokenizeRequest,
    ToolCall,
)

__all__ = ["Admitted", "Done", "Engine", "EngineStats", "GenerationEvent", "Harness",
           "ReasoningDelta", "ResolvedModel", "TextDelta", "ToolCalls"]


class ResolvedModel(msgspec.Struct, kw_only=True):
    """A model source resolved to local files (the first of a split GGUF comes first)."""

    files: list[str]
    total_bytes: int
    origin: str
    chat_template: str | None = None
    # Repos whose tokenizer_config.json was looked at for a fallback chat template, in order.
    template_repos_tried: list[str] = []

    @property
    def path(self) -> str:
        return self.files[0]


class Admitted(msgspec.Struct, kw_only=True):
    """The prompt took its place in the batch, before any output: its size and the prefix
    found cached (what Done reports at the end), so a stream can tell them first. A
    harness sends it at most once, first; one that sends none is served as well."""

    prompt_tokens: int
    cached_tokens: int = 0


class TextDelta(msgspec.Struct):
    text: str


class ReasoningDelta(msgspec.Struct):
    """A thinking model's reasoning, before its answer: sent apart from the text (OpenAI
    streams' `reasoning_content`), so each dialect shows or hides it as its client asked."""

    text: str


class ToolCalls(msgspec.Struct):
    calls: list[ToolCall]


class Done(msgspec.Struct, kw_only=True):
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused, not prefilled
    # Why a "length" finish came: "max_tokens" (the request's, or the profile's cap) or
    # "context" (the sequence filled its context: no room for another token).
    stop_cause: str | None = None


GenerationEvent = Admitted | TextDelta | ReasoningDelta | ToolCalls | Done


class EngineStats(msgspec.Struct, kw_only=True):
    """Work counters since the model loaded, for the neuron's /metrics."""

    prefill_tokens: int = 0  # prompt tokens decoded (reused KV cache excluded)
    generated_tokens: int = 0  # tokens sampled into replies
    kv_cache_tokens: int = 0  # KV cells holding a token now
    kv_cache_capacity: int = 0  # KV cells in all (n_ctx x slots)


class Engine(abc.ABC):
    """One loaded model. Blocking work runs off the event loop; methods are async."""

    chat_supported: bool = True
    embeddings: bool = False

    @property
    @abc.abstractmethod
    def in_flight(self) -> int:
        """Requests being generated now."""

    @property
    @abc.abstractmethod
    def queued(self) -> int:
        """Requests accepted but waiting for a slot."""

    @property
    def measured_bytes(self) -> int | None:
        """Memory the loaded model really holds, when the harness can tell."""
        return None

    def stats(self) -> EngineStats | None:
        """Token and KV-cache counters, when the harness keeps them (cheap: read per scrape)."""
        return None

    def reconfigure(self, profile: ModelProfile) -> bool:
        """Take a changed profile of this model in place (a new chat template, say), for
        the requests that start from now on; False when the change needs a reload.
        Blocking."""
        return False

    @abc.abstractmethod
    def chat(self, request: ChatCompletionRequest
             ) -> AsyncGenerator[GenerationEvent, None]:
        """Generate a chat reply. Closing the iterator cancels generation."""

    @abc.abstractmethod
    def complete(self, request: CompletionRequest
                 ) -> AsyncGenerator[GenerationEvent, None]:
        """Generate a text completion. Closing the iterator cancels generation."""

    @abc.abstractmethod
    async def embed(self, inputs: list[str], *, truncate: bool = False
                    ) -> tuple[list[list[float]], int]:
        """Return one vector per input and the number of tokens read. `truncate`: an
        input longer than the model takes is cut at its end to fit, instead of refused."""

    @abc.abstractmethod
    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        """Tokens of `text`, or of `messages` (and tools) rendered by the chat template."""

    @abc.abstractmethod
    def abort(self, message: str) -> None:
        """End every queued and running request with an error (a forced unload)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Free the model. Called once nothing is in flight (or after cancelling it)."""


class Harness(abc.ABC):
    name: ClassVar[str]
    #: False for harnesses whose `source` is not a file (the synthetic one): the neuron
    #: then skips source resolution and hands `resolve()`'s result to estimate and load.
    needs_files: ClassVar[bool] = True

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        """Settings from neuron.toml's `[harness.<name>]` table."""

    def __init__(self, options: Options) -> None:
        self.options = options

    @classmethod
    def check_profile(cls, profile: ModelProfile) -> list[tuple[str, str]]:
        """What is wrong with `profile` for this harness that shows without the model's
        files, as (key, reason) pairs. The gateway asks at `cortex config check`, start
        and reload, and refuses a profile with any: a neuron would only refuse its load
        later, when a client asks for it."""
        return []

    def resolve(self, source: str) -> ResolvedModel:
        """The 'files' of a source, for harnesses that set needs_files = False."""
        return ResolvedModel(files=[], total_bytes=0, origin=source)

    @abc.abstractmethod
    def estimate(self, profile: ModelProfile, model: ResolvedModel,
                 overhead: int) -> MemoryEstimate:
        """Memory the model will need, read from file metadata only. Blocking."""

    @abc.abstractmethod
    def load(self, profile: ModelProfile, model: ResolvedModel,
             progress: Callable[[float], None]) -> Engine:
        """Load the weights and return an Engine. Blocking; called in a worker thread."""

    def kept_bytes(self) -> int:
        """Memory held by models kept after their unload, to be loaded again without
        reading their files. The neuron counts it as free (a gateway plans with it) and
        takes it back with release_kept before a load that needs the room."""
        return 0

    def release_kept(self, needed: int, spare: tuple[ModelProfile, ResolvedModel] | None = None
                     ) -> int:
        """Free kept models, the longest kept first, until `needed` bytes are freed. The
        one `spare` would load again is never freed: its bytes count as freed, since that
        load takes them into its own estimate. The bytes freed. Blocking."""
        return 0
