"""The synthetic harness: an OpenAI-compatible token stream at a set rate, no model.

It makes the gateway, not the model, the thing measured, and lets anyone load-test a
whole fleet (routing, loading, eviction, failover) without GPUs. A profile selects it
with `harness = "synthetic"` and tunes it in its source:

    source = "synthetic:rate=200,ttft_ms=20,tokens=128,bytes=2GiB"

rate      tokens per second per stream (0 = as fast as possible)
ttft_ms   delay before the first token (a stand-in for prefill)
tokens    tokens generated when neither the request nor the profile's
          default_max_tokens sets a budget
bytes     the memory the model claims, so placement and eviction have work to do
load_ms   how long a load takes

`[harness.synthetic]` in neuron.toml sets the defaults. Words come from a fixed list,
varied by a seed derived from the prompt, so identical requests give identical text.

For tests of crash containment only, neuron.toml's `[harness.synthetic] die_on = "..."`
(unset by default, and not settable from a profile's source) makes a request whose
prompt contains that string kill the neuron process (SIGKILL) before its first token,
as a crash in llama.cpp would.

For tests of agent clients only, `[harness.synthetic] script` (also neuron.toml only)
scripts the replies to requests that offer tools: the reply to a conversation with N
assistant turns so far is step N (the last step once past the end), either a tool call
(`tool`, `arguments`) when the request offers that tool, or the words of `text`. A real
client then runs a real round trip (tool call, its result, a final answer) on cue,
which no model that small does.

For tests of thinking only, `[harness.synthetic] reasoning` (neuron.toml only) makes
every chat reply begin with those words as reasoning (ReasoningDelta, the neuron's
`reasoning_content`), as a thinking model's trace comes before its answer; they count
as generated tokens. No bundled model reasons apart from its answer, so this is what
shows a dialect's thinking fields end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import Any, ClassVar

import msgspec

from cortex import (
    Admitted,
    ChatCompletionRequest,
    CompletionRequest,
    ConfigError,
    ContextLengthExceeded,
    Done,
    Engine,
    GenerationEvent,
    Harness,
    InvalidRequest,
    MemoryEstimate,
    ModelProfile,
    ReasoningDelta,
    ResolvedModel,
    TextDelta,
    TokenizeRequest,
    ToolCall,
    ToolCallFunction,
    ToolCalls,
    Unavailable,
    hookimpl,
    parse_bytes,
)

__all__ = ["ScriptStep", "SyntheticEngine", "SyntheticHarness", "SyntheticSettings"]

_WORDS = ("the", "a", "fleet", "of", "neurons", "serves", "tokens", "quickly", "and", "model",
          "gateway", "stream", "cortex", "routes", "each", "request", "to", "node", "with",
          "memory", "load", "evict", "cache", "prefix", "batch", "slot", "time", "first")


class ScriptStep(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One scripted reply: a call of tool `tool` with `arguments`, or the words of `text`."""

    text: str = ""
    tool: str | None = None
    arguments: dict[str, Any] = {}


class SyntheticSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rate: float = 100.0
    ttft_ms: float = 0.0
    tokens: int = 128
    bytes: int | str = 0
    load_ms: float = 0.0


def parse_source(source: str, defaults: SyntheticSettings) -> SyntheticSettings:
    """`synthetic:rate=200,tokens=64` over the harness defaults."""
    if not source.startswith("synthetic:") and source != "synthetic":
        raise InvalidRequest(f"the synthetic harness needs a `synthetic:` source, got `{source}`")
    fields = msgspec.structs.asdict(defaults)
    spec = source.partition(":")[2]
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, _, value = item.partition("=")
        fields[key] = value
    try:
        return msgspec.convert(fields, SyntheticSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"bad synthetic source `{source}`: {exc}") from None


def _count(text: str) -> int:
    return max(1, len(text.split()))


class SyntheticEngine(Engine):
    def __init__(self, profile: ModelProfile, settings: SyntheticSettings, *,
                 die_on: str | None = None, script: list[ScriptStep] | None = None,
                 reasoning: str = "") -> None:
        self._profile = profile
        self._settings = settings
        self._die_on = die_on
        self._script = script or []
        self._reasoning = reasoning.split()
        self._slots = asyncio.Semaphore(profile.slots)
        self._active = 0
        self._waiting = 0
        self._aborted: str | None = None
        self.embeddings = profile.embeddings

    @property
    def in_flight(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return self._waiting

    async def _stream(self, prompt: str, max_tokens: int | None, stop: list[str],
                      step: ScriptStep | None = None, thought: Sequence[str] = ()
                      ) -> AsyncGenerator[GenerationEvent, None]:
        """`thought`: words of reasoning sent before the answer, within the same budget."""
        prompt_tokens = _count(prompt)
        if prompt_tokens >= self._profile.n_ctx:
            raise ContextLengthExceeded(prompt_tokens, self._profile.n_ctx)
        wanted = max_tokens or self._profile.default_max_tokens or self._settings.tokens
        room = self._profile.n_ctx - prompt_tokens
        budget = min(wanted, room)
        rng = random.Random(hashlib.sha256(prompt.encode()).digest())
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._active += 1
        try:
            if self._die_on and self._die_on in prompt:
                os.kill(os.getpid(), signal.SIGKILL)  # die_on: a crash, for tests
            yield Admitted(prompt_tokens=prompt_tokens)  # it holds a slot: prefill follows
            if self._settings.ttft_ms:
                await asyncio.sleep(self._settings.ttft_ms / 1000)
            if step is not None and step.tool is not None:
                arguments = json.dumps(step.arguments, ensure_ascii=False)
                call = ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                                function=ToolCallFunction(name=step.tool, arguments=arguments))
                yield ToolCalls([call])
                yield Done(finish_reason="stop", prompt_tokens=prompt_tokens,
                           completion_tokens=1)
                return
            words = step.text.split() if step is not None else None
            interval = 1 / self._settings.rate if self._settings.rate > 0 else 0.0
            start = time.monotonic()
            text = ""
            for n in range(budget):
                if self._aborted is not None:
                    raise Unavailable(self._aborted)
                k = n - len(thought)  # the answer's own word: the reasoning comes first
                if k < 0:
                    yield ReasoningDelta(("" if n == 0 else " ") + thought[n])
                else:
                    if words is not None and k == len(words):
                        yield Done(finish_reason="stop", prompt_tokens=prompt_tokens,
                                   completion_tokens=n)
                        return
                    piece = ("" if k == 0 else " ") + (rng.choice(_WORDS) if words is None
                                                       else words[k])
                    text += piece
                    if any(s in text for s in stop):
                        yield Done(finish_reason="stop", prompt_tokens=prompt_tokens,
                                   completion_tokens=n)
                        return
                    yield TextDelta(piece)
                # Sleep to the schedule rather than by a fixed step, so the rate holds.
                delay = start + (n + 1) * interval - time.monotonic()
                await asyncio.sleep(max(0.0, delay))
            yield Done(finish_reason="length", prompt_tokens=prompt_tokens,
                       completion_tokens=budget,
                       stop_cause="context" if room < wanted else "max_tokens")
        finally:
            self._active -= 1
            self._slots.release()

    def _step(self, request: ChatCompletionRequest) -> ScriptStep | None:
        """The scripted reply to `request` (see the module's doc), if any."""
        if not self._script or not request.tools or request.tool_choice == "none":
            return None
        turns = sum(1 for m in request.messages if m.role == "assistant")
        step = self._script[min(turns, len(self._script) - 1)]
        offered = {t.function.name for t in request.tools}
        return None if step.tool is not None and step.tool not in offered else step

    async def chat(self, request: ChatCompletionRequest
                   ) -> AsyncGenerator[GenerationEvent, None]:
        prompt = "\n".join(f"{m.role}: {m.text()}" for m in request.messages)
        async for event in self._stream(prompt, request.token_limit(), request.stop_list(),
                                        self._step(request), self._reasoning):
            yield event

    async def complete(self, request: CompletionRequest
                       ) -> AsyncGenerator[GenerationEvent, None]:
        prompt = request.prompt if isinstance(request.prompt, str) else \
            " ".join(str(p) for p in request.prompt)
        async for event in self._stream(prompt, request.max_tokens, request.stop_list()):
            yield event

    async def embed(self, inputs: list[str], *, truncate: bool = False
                    ) -> tuple[list[list[float]], int]:
        """A vector from each input's hash; a word is a token, and an input over the
        context is refused or, with `truncate`, cut to its first n_ctx - 1 words."""
        limit = self._profile.n_ctx - 1
        vectors, count = [], 0
        for text in inputs:
            words = text.split()
            if len(words) > limit:
                if not truncate:
                    raise ContextLengthExceeded(len(words), self._profile.n_ctx,
                                                param="input")
                words = words[:limit]
                text = " ".join(words)
            count += max(1, len(words))
            digest = hashlib.sha256(text.encode()).digest()
            raw = [b / 255 - 0.5 for b in digest] * 2
            norm = math.sqrt(sum(x * x for x in raw)) or 1.0
            vectors.append([x / norm for x in raw])
        return vectors, count

    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        if request.messages is not None:
            text = "\n".join(f"{m.role}: {m.text()}" for m in request.messages)
        else:
            text = request.text or ""
        return list(range(_count(text)))

    def abort(self, message: str) -> None:
        self._aborted = message

    async def close(self) -> None:
        return None


class SyntheticHarness(Harness):
    name: ClassVar[str] = "synthetic"
    needs_files: ClassVar[bool] = False

    class Options(Harness.Options):
        rate: float = 100.0
        ttft_ms: float = 0.0
        tokens: int = 128
        bytes: int | str = 0
        load_ms: float = 0.0
        # Tests only: a prompt containing this kills the neuron (see the module's doc).
        die_on: str | None = None
        # Tests only: scripted replies to requests that offer tools (the module's doc).
        script: list[ScriptStep] = []
        # Tests only: words of reasoning that begin every chat reply (the module's doc).
        reasoning: str = ""

    options: Options

    @classmethod
    def check_profile(cls, profile: ModelProfile) -> list[tuple[str, str]]:
        try:
            settings = parse_source(profile.source, SyntheticSettings())
            parse_bytes(settings.bytes)
        except (InvalidRequest, ValueError) as exc:
            return [("source", str(exc))]
        return []

    def _settings(self, source: str) -> SyntheticSettings:
        defaults = msgspec.structs.asdict(self.options)
        defaults.pop("die_on")
        defaults.pop("script")
        defaults.pop("reasoning")
        return parse_source(source, SyntheticSettings(**defaults))

    def estimate(self, profile: ModelProfile, model: ResolvedModel,
                 overhead: int) -> MemoryEstimate:
        try:
            weights = parse_bytes(self._settings(profile.source).bytes)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return MemoryEstimate(weights=weights, kv_cache=0, overhead=0, total=weights)

    def load(self, profile: ModelProfile, model: ResolvedModel,
             progress: Callable[[float], None]) -> SyntheticEngine:
        settings = self._settings(profile.source)
        steps = 10  # progress as llama.cpp reports it: fractions along the way
        for step in range(1, steps + 1):
            if settings.load_ms:
                time.sleep(settings.load_ms / 1000 / steps)  # load() runs on a worker thread
            progress(step / steps)
        return SyntheticEngine(profile, settings, die_on=self.options.die_on,
                               script=self.options.script, reasoning=self.options.reasoning)


@hookimpl
def register_harnesses() -> Iterable[type[Harness]]:
    return [SyntheticHarness]
