"""A loaded GGUF model: prompt rendering, token generation, embeddings and tokenization."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

import msgspec

from cortex import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContextLengthExceeded,
    Engine,
    EngineStats,
    GenerationEvent,
    InvalidRequest,
    ModelProfile,
    TextDelta,
    TokenizeRequest,
    UnsupportedFeature,
)

from .batch import END, Scheduler, Sequence
from .embed import Embedder, cut_tokens
from .forced import forced_tools, tool_call_grammar
from .grammar import Grammar, make_grammar
from .history import fitting_tail
from .render import Prompt, Renderer
from .schema import grammar_text
from .tools import with_tool_calls

__all__ = ["LlamaEngine", "Sampling", "longest_token"]

T = TypeVar("T")
#: Profile fields a loaded model takes in place (reconfigure); any other change reloads it.
IN_PLACE = frozenset({"chat_template", "chat_format", "max_tokens", "default_max_tokens"})


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class Sampling:
    """Per-request generation settings, resolved against defaults and the profile's cap
    (`cap`, its max_tokens) and default budget (`default`, its default_max_tokens).

    Absent fields take llama-server's defaults, which users of local models expect.
    """

    def __init__(self, request: ChatCompletionRequest | CompletionRequest, *,
                 max_tokens: int | None, cap: int | None, default: int | None = None) -> None:
        self.temperature = _or(request.temperature, 0.8)
        self.top_p = _or(request.top_p, 0.95)
        self.top_k = int(_or(request.top_k, 40))
        self.min_p = _or(request.min_p, 0.05)
        self.repeat_penalty = _or(request.repeat_penalty, 1.0)
        self.presence_penalty = _or(request.presence_penalty, 0.0)
        self.frequency_penalty = _or(request.frequency_penalty, 0.0)
        if max_tokens is not None and max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        limit = max_tokens if max_tokens is not None else default if default is not None \
            else cap
        self.max_tokens = min(limit, cap) if (limit is not None and cap is not None) else limit
        self.seed = request.seed
        self.ignore_eos = request.ignore_eos
        # Bounded when the request was decoded (cortex.stops: 64 strings, 16 KiB), and
        # matched by one automaton, so their number does not slow the scheduler.
        self.stop = request.stop_list()
        self.grammar: Grammar | None = None


def longest_token(model: Any) -> int:
    """Bytes in the vocabulary's longest token text: no text of B bytes tokenizes to
    fewer than B / this many tokens (a token's text is never shorter than its piece)."""
    import llama_cpp

    vocab = model.vocab
    return max((len(llama_cpp.llama_vocab_get_text(vocab, i) or b"")
                for i in range(model.n_vocab())), default=1) or 1


class LlamaEngine(Engine):
    """A GGUF model and its context. Generation goes through the batching Scheduler; a
    profile loaded for embeddings serves only embeddings, one input at a time."""

    def __init__(self, *, model: Any, ctx: Any, profile: ModelProfile, slots: int, n_ctx: int,
                 n_batch: int, prefill_chunk: int,
                 renderer_for: Callable[[ModelProfile], tuple[Renderer | None, str]],
                 measured_bytes: int | None, longest: int,
                 release: Callable[[Any], None] | None = None) -> None:
        """`renderer_for`: the profile's chat template renderer, or None and why not;
        `longest`: bytes in the vocabulary's longest token text (longest_token);
        `release`: takes the model once its context is freed (default: free it)."""
        self._model = model
        self._release = release or (lambda m: m.close())
        self._ctx = ctx
        self._profile = profile
        self._model_id = model_id = profile.id
        self._n_ctx = n_ctx
        self._n_vocab = model.n_vocab()
        self._renderer_for = renderer_for
        self._renderer, self._no_template_reason = renderer_for(profile)
        self._cap, self._default = profile.max_tokens, profile.default_max_tokens
        self._measured = measured_bytes
        # Text longer than this many bytes cannot fit the context, whatever it says.
        self._max_prompt_bytes = n_ctx * longest
        self.embeddings = embeddings = profile.embeddings
        self.chat_supported = self._renderer is not None and not embeddings
        self._scheduler = Scheduler(model=model, ctx=ctx, slots=slots, n_ctx_slot=n_ctx,
                                    n_batch=n_batch, prefill_chunk=prefill_chunk,
                                    name=f"llama:{model_id}")
        self._embedder = Embedder(model=model, ctx=ctx, n_ctx=n_ctx,
                                  tokens=lambda text: self._tokens(text, True, param="input"),
                                  cut=self._cut, on_thread=self._on_thread)

    @property
    def in_flight(self) -> int:
        return self._scheduler.counts()[0] + self._embedder.running

    @property
    def queued(self) -> int:
        return self._scheduler.counts()[1]

    @property
    def measured_bytes(self) -> int | None:
        return self._measured

    def reconfigure(self, profile: ModelProfile) -> bool:
        old, new = msgspec.structs.asdict(self._profile), msgspec.structs.asdict(profile)
        if any(old[key] != new[key] for key in old if key not in IN_PLACE):
            return False
        renderer, reason = self._renderer_for(profile)  # may refuse: nothing changed yet
        # Requests already rendered go on as they were; new ones render with this.
        self._renderer, self._no_template_reason = renderer, reason
        self.chat_supported = renderer is not None and not self.embeddings
        self._cap, self._default = profile.max_tokens, profile.default_max_tokens
        self._profile = profile
        return True

    def stats(self) -> EngineStats:
        scheduler = self._scheduler
        used, capacity = scheduler.kv_tokens()
        return EngineStats(prefill_tokens=scheduler.prefilled + self._embedder.embedded,
                           generated_tokens=scheduler.generated, kv_cache_tokens=used,
                           kv_cache_capacity=capacity)

    # --- prompts ------------------------------------------------------------------------

    def _render(self, request: ChatCompletionRequest | TokenizeRequest,
                add_generation_prompt: bool = True) -> Prompt:
        if self._renderer is None:
            raise UnsupportedFeature(
                f"model `{self._model_id}` has no chat template ({self._no_template_reason}); "
                "set chat_format or chat_template in its profile, or use /v1/completions")
        assert request.messages is not None
        tools = request.tools
        if isinstance(request, ChatCompletionRequest) and request.tool_choice == "none":
            tools = None
        return self._renderer.render(request.messages, tools, add_generation_prompt)

    def _tokens(self, text: str, add_bos: bool, *, bounded: bool = True,
                param: str = "messages") -> list[int]:
        """The text's tokens. `bounded`: text that cannot fit the context is refused from
        a tokenized head of it, not tokenized whole (a 16 MiB prompt takes seconds)."""
        data = text.encode("utf-8")
        if bounded and len(data) > self._max_prompt_bytes:
            head = data[:self._max_prompt_bytes].decode("utf-8", "ignore").encode("utf-8")
            count = len(self._model.tokenize(head, add_bos, True))
            if count >= self._n_ctx:  # always, unless the head ends in a partial token
                raise ContextLengthExceeded(count * len(data) // max(len(head), 1), self._n_ctx,
                                            param=param)
        tokens: list[int] = self._model.tokenize(data, add_bos, True)
        return tokens

    def _cut(self, text: str, limit: int) -> list[int]:
        """At most `limit` of the text's tokens (embed.cut_tokens). Only a head of a long
        text is tokenized: one of `_max_prompt_bytes` already holds more than n_ctx."""
        data = text.encode("utf-8")
        if len(data) > self._max_prompt_bytes:
            data = data[:self._max_prompt_bytes].decode("utf-8", "ignore").encode("utf-8")
        return cut_tokens(lambda add_special: self._model.tokenize(data, add_special, True),
                          limit)

    def _fitted(self, request: ChatCompletionRequest) -> tuple[Prompt, list[int]]:
        prompt = self._render(request)
        tokens = self._tokens(prompt.text, prompt.add_bos)
        self._check_fits(tokens)
        return prompt, tokens

    def _prompt(self, request: ChatCompletionRequest) -> tuple[Prompt, list[int]]:
        """The rendered prompt and its tokens; with `truncate_history`, a conversation
        over the context loses its oldest turns (history.py) instead. Blocking."""
        try:
            return self._fitted(request)
        except ContextLengthExceeded:
            if not request.truncate_history:
                raise

            def fits(messages: list[ChatMessage]) -> bool:
                try:
                    self._fitted(msgspec.structs.replace(request, messages=messages))
                except ContextLengthExceeded:
                    return False
                return True

            kept = fitting_tail(request.messages, fits)
            if kept is None:
                raise
            return self._fitted(msgspec.structs.replace(request, messages=kept))

    def _check_fits(self, prompt_tokens: list[int]) -> None:
        if not prompt_tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if len(prompt_tokens) >= self._n_ctx:
            raise ContextLengthExceeded(len(prompt_tokens), self._n_ctx)

    def _check_ids(self, tokens: list[int]) -> None:
        """Token ids a client gave: llama_decode fails the whole batch on one out of the
        vocabulary, and ctypes wraps ids past 32 bits into valid ones."""
        for token in tokens:
            if not 0 <= token < self._n_vocab:
                raise InvalidRequest(f"prompt token id {token} is not in this model's "
                                     f"vocabulary (0 to {self._n_vocab - 1})", param="prompt")

    def _grammar(self, request: ChatCompletionRequest) -> Grammar | None:
        """The request's grammar sampler, made and checked now: a forced tool call's, or
        its response_format's. Blocking."""
        forced = forced_tools(request.tools, request.tool_choice)
        text = grammar_text(request.response_format)
        if forced is not None:
            if text is not None:
                raise InvalidRequest("a forced tool_choice and a response_format cannot both "
                                     "shape the reply", param="tool_choice")
            return make_grammar(self._model.vocab, tool_call_grammar(forced), "tool_choice")
        return make_grammar(self._model.vocab, text) if text is not None else None

    def _no_generation(self) -> None:
        if self.embeddings:
            raise UnsupportedFeature(
                f"model `{self._model_id}` is loaded for embeddings; load another profile "
                "of it to generate text")

    # --- generation ---------------------------------------------------------------------

    async def _generate(self, prompt: list[int], sampling: Sampling
                        ) -> AsyncGenerator[GenerationEvent, None]:
        events: asyncio.Queue[Any] = asyncio.Queue()
        seq = Sequence(prompt, sampling, asyncio.get_running_loop(), events)
        self._scheduler.submit(seq)
        try:
            while (event := await events.get()) is not END:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            seq.cancel.set()  # a client that left frees its slot at the next step
            if sampling.grammar is not None:
                sampling.grammar.close()  # a no-op once the scheduler took it

    async def chat(self, request: ChatCompletionRequest
                   ) -> AsyncGenerator[GenerationEvent, None]:
        self._no_generation()
        sampling = Sampling(request, max_tokens=request.token_limit(), cap=self._cap,
                            default=self._default)

        def prepare() -> tuple[list[int], list[str], Grammar | None]:
            prompt, tokens = self._prompt(request)
            return tokens, prompt.stop, self._grammar(request)

        tokens, template_stops, sampling.grammar = await asyncio.to_thread(prepare)
        sampling.stop = sampling.stop + [s for s in template_stops if s not in sampling.stop]
        events = self._generate(tokens, sampling)
        if not request.tools or request.tool_choice == "none":
            async for event in events:
                yield event
            return
        async for event in with_tool_calls(events):
            yield event

    async def complete(self, request: CompletionRequest
                       ) -> AsyncGenerator[GenerationEvent, None]:
        self._no_generation()
        sampling = Sampling(request, max_tokens=request.max_tokens, cap=self._cap,
                            default=self._default)
        prompt: str | list[str | int] = request.prompt
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise InvalidRequest("give one prompt per request", param="prompt")
            prompt = str(prompt[0])
        if isinstance(prompt, str):
            tokens = await asyncio.to_thread(functools.partial(self._tokens, prompt, True,
                                                               param="prompt"))
        elif all(isinstance(t, int) for t in prompt):
            tokens = [int(t) for t in prompt]
            self._check_ids(tokens)
        else:
            raise InvalidRequest("prompt must be a string or a list of token ids",
                                 param="prompt")
        self._check_fits(tokens)
        if request.echo and isinstance(prompt, str):
            yield TextDelta(prompt)
        async for event in self._generate(tokens, sampling):
            yield event

    # --- other work ---------------------------------------------------------------------

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        """Run fn on the context's own thread, between batches."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if done.done():  # the awaiting request was cancelled meanwhile
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self._scheduler.call(run)
        return await done

    async def embed(self, inputs: list[str], *, truncate: bool = False
                    ) -> tuple[list[list[float]], int]:
        if not self.embeddings:
            raise UnsupportedFeature(
                f"model `{self._model_id}` was not loaded with embeddings = true")
        return await self._embedder.embed(inputs, truncate=truncate)

    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        def run() -> list[int]:  # a count, asked for whatever the length: unbounded
            if request.messages is not None:
                prompt = self._render(request, request.add_generation_prompt)
                return self._tokens(prompt.text, prompt.add_bos, bounded=False)
            return self._tokens(request.text or "", True, bounded=False)

        return await asyncio.to_thread(run)

    def abort(self, message: str) -> None:
        self._scheduler.abort_all(message)
        self._embedder.abort(message)

    async def close(self) -> None:
        await self._on_thread(lambda: None)  # let running sequences end first
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def free() -> None:
            self._ctx.close()
            try:
                self._release(self._model)
            finally:
                loop.call_soon_threadsafe(done.set_result, None)

        self._scheduler.call(free)
        self._scheduler.stop()
        await done
