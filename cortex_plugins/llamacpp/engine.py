"""A loaded GGUF model: prompt rendering, token generation, embeddings and tokenization."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from cortex import Done, Engine, EngineStats, GenerationEvent, TextDelta, ToolCalls
from cortex.errors import ContextLengthExceeded, InvalidRequest, UnsupportedFeature
from cortex.types import ChatCompletionRequest, CompletionRequest, TokenizeRequest

from .batch import END, Scheduler, Sequence
from .render import Prompt, Renderer
from .tools import ToolCallParser

__all__ = ["LlamaEngine", "Sampling"]

T = TypeVar("T")

def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class Sampling:
    """Per-request generation settings, resolved against defaults and the profile's cap.

    Absent fields take llama-server's defaults, which users of local models expect.
    """

    def __init__(self, request: ChatCompletionRequest | CompletionRequest, *,
                 max_tokens: int | None, cap: int | None) -> None:
        self.temperature = _or(request.temperature, 0.8)
        self.top_p = _or(request.top_p, 0.95)
        self.top_k = int(_or(request.top_k, 40))
        self.min_p = _or(request.min_p, 0.05)
        self.repeat_penalty = _or(request.repeat_penalty, 1.0)
        self.presence_penalty = _or(request.presence_penalty, 0.0)
        self.frequency_penalty = _or(request.frequency_penalty, 0.0)
        if max_tokens is not None and max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        limit = max_tokens if max_tokens is not None else cap
        self.max_tokens = min(limit, cap) if (limit is not None and cap is not None) else limit
        self.seed = request.seed
        self.ignore_eos = request.ignore_eos
        self.stop = request.stop_list()
        self.grammar: Any = None


def _grammar(response_format: dict[str, Any] | None) -> Any:
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    kind = response_format.get("type")
    schema = response_format.get("schema")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    elif kind != "json_object":
        raise InvalidRequest(f"response_format type `{kind}` is not supported",
                             param="response_format")
    try:
        if schema:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    except Exception as exc:
        raise InvalidRequest(f"response_format schema cannot be used: {exc}",
                             param="response_format") from None


class LlamaEngine(Engine):
    """A GGUF model and its context. Generation goes through the batching Scheduler; a
    profile loaded for embeddings serves only embeddings, one input at a time."""

    def __init__(self, *, model: Any, ctx: Any, model_id: str, slots: int, n_ctx: int,
                 n_batch: int, prefill_chunk: int, renderer: Renderer | None,
                 no_template_reason: str, embeddings: bool, max_tokens_cap: int | None,
                 measured_bytes: int | None) -> None:
        self._model = model
        self._ctx = ctx
        self._model_id = model_id
        self._n_ctx = n_ctx
        self._renderer = renderer
        self._no_template_reason = no_template_reason
        self._cap = max_tokens_cap
        self._measured = measured_bytes
        self.embeddings = embeddings
        self.chat_supported = renderer is not None and not embeddings
        self._scheduler = Scheduler(model=model, ctx=ctx, slots=slots, n_ctx_slot=n_ctx,
                                    n_batch=n_batch, prefill_chunk=prefill_chunk,
                                    name=f"llama:{model_id}")

    @property
    def in_flight(self) -> int:
        return self._scheduler.counts()[0]

    @property
    def queued(self) -> int:
        return self._scheduler.counts()[1]

    @property
    def measured_bytes(self) -> int | None:
        return self._measured

    def stats(self) -> EngineStats:
        scheduler = self._scheduler
        used, capacity = scheduler.kv_tokens()
        return EngineStats(prefill_tokens=scheduler.prefilled,
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

    def _tokens(self, text: str, add_bos: bool) -> list[int]:
        tokens: list[int] = self._model.tokenize(text.encode("utf-8"), add_bos, True)
        return tokens

    def _check_fits(self, prompt_tokens: list[int]) -> None:
        if not prompt_tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if len(prompt_tokens) >= self._n_ctx:
            raise ContextLengthExceeded(len(prompt_tokens), self._n_ctx)

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

    async def chat(self, request: ChatCompletionRequest
                   ) -> AsyncGenerator[GenerationEvent, None]:
        self._no_generation()
        sampling = Sampling(request, max_tokens=request.token_limit(), cap=self._cap)
        sampling.grammar = _grammar(request.response_format)

        def prepare() -> tuple[list[int], list[str]]:
            prompt = self._render(request)
            return self._tokens(prompt.text, prompt.add_bos), prompt.stop

        tokens, template_stops = await asyncio.to_thread(prepare)
        sampling.stop = sampling.stop + [s for s in template_stops if s not in sampling.stop]
        self._check_fits(tokens)
        events = self._generate(tokens, sampling)
        if not request.tools or request.tool_choice == "none":
            async for event in events:
                yield event
            return
        parser = ToolCallParser()
        async for event in events:
            if isinstance(event, TextDelta):
                if text := parser.feed(event.text):
                    yield TextDelta(text)
                continue
            if isinstance(event, Done):
                rest, calls = parser.finish()
                if rest:
                    yield TextDelta(rest)
                if calls:
                    yield ToolCalls(calls)
            yield event

    async def complete(self, request: CompletionRequest
                       ) -> AsyncGenerator[GenerationEvent, None]:
        self._no_generation()
        sampling = Sampling(request, max_tokens=request.max_tokens, cap=self._cap)
        prompt: str | list[str | int] = request.prompt
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise InvalidRequest("give one prompt per request", param="prompt")
            prompt = str(prompt[0])
        if isinstance(prompt, str):
            tokens = await asyncio.to_thread(self._tokens, prompt, True)
        elif all(isinstance(t, int) for t in prompt):
            tokens = [int(t) for t in prompt]
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

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(done.set_exception, exc)
            else:
                loop.call_soon_threadsafe(done.set_result, result)

        self._scheduler.call(run)
        return await done

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        if not self.embeddings:
            raise UnsupportedFeature(
                f"model `{self._model_id}` was not loaded with embeddings = true")
        batches = [await asyncio.to_thread(self._tokens, text, True) for text in inputs]
        for tokens in batches:
            if len(tokens) >= self._n_ctx:
                raise ContextLengthExceeded(len(tokens), self._n_ctx)
        vectors = await self._on_thread(lambda: [self._embed_one(t) for t in batches])
        return vectors, sum(len(t) for t in batches)

    def _embed_one(self, tokens: list[int]) -> list[float]:
        import llama_cpp
        from llama_cpp._internals import LlamaBatch

        llama_cpp.llama_memory_clear(self._ctx.memory, True)
        batch = LlamaBatch(n_tokens=len(tokens), embd=0, n_seq_max=1, verbose=False)
        try:
            batch.set_batch(tokens, 0, True)
            self._ctx.decode(batch)
        finally:
            batch.close()
        pointer = llama_cpp.llama_get_embeddings_seq(self._ctx.ctx, 0)
        vector = [float(pointer[i]) for i in range(self._model.n_embd())]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]

    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        def run() -> list[int]:
            if request.messages is not None:
                prompt = self._render(request, request.add_generation_prompt)
                return self._tokens(prompt.text, prompt.add_bos)
            return self._tokens(request.text or "", True)

        return await asyncio.to_thread(run)

    def abort(self, message: str) -> None:
        self._scheduler.abort_all(message)

    async def close(self) -> None:
        await self._on_thread(lambda: None)  # let running sequences end first
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def free() -> None:
            self._ctx.close()
            self._model.close()
            loop.call_soon_threadsafe(done.set_result, None)

        self._scheduler.call(free)
        self._scheduler.stop()
        await done
