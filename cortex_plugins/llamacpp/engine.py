"""A loaded GGUF model: prompt rendering, token generation, embeddings and tokenization."""

from __future__ import annotations

import asyncio
import codecs
import json
import random
import threading
from collections.abc import AsyncGenerator
from typing import Any

from cortex import Done, Engine, GenerationEvent, TextDelta, ToolCalls
from cortex.errors import ContextLengthExceeded, InvalidRequest, UnsupportedFeature
from cortex.types import ChatCompletionRequest, CompletionRequest, TokenizeRequest

from .render import Prompt, Renderer
from .stops import StopMatcher
from .tools import ToolCallParser
from .worker import Emit, Worker

__all__ = ["LlamaEngine", "Sampling"]

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
    def __init__(self, llama: Any, *, model_id: str, n_ctx: int, renderer: Renderer | None,
                 no_template_reason: str, embeddings: bool, max_tokens_cap: int | None,
                 measured_bytes: int | None) -> None:
        import llama_cpp

        self._llama = llama
        self._lib = llama_cpp
        self._vocab = llama._model.vocab
        self._model_id = model_id
        self._n_ctx = n_ctx
        self._renderer = renderer
        self._no_template_reason = no_template_reason
        self._cap = max_tokens_cap
        self._measured = measured_bytes
        self._worker = Worker(f"llama:{model_id}")
        self.embeddings = embeddings
        self.chat_supported = renderer is not None

    @property
    def in_flight(self) -> int:
        return self._worker.in_flight

    @property
    def queued(self) -> int:
        return self._worker.queued

    @property
    def measured_bytes(self) -> int | None:
        return self._measured

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
        tokens: list[int] = self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos,
                                                 special=True)
        return tokens

    def _check_fits(self, prompt_tokens: list[int], max_tokens: int | None) -> None:
        if not prompt_tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if len(prompt_tokens) >= self._n_ctx:
            raise ContextLengthExceeded(len(prompt_tokens), self._n_ctx)

    # --- generation ---------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest
                   ) -> AsyncGenerator[GenerationEvent, None]:
        sampling = Sampling(request, max_tokens=request.token_limit(), cap=self._cap)
        sampling.grammar = _grammar(request.response_format)

        def prepare() -> tuple[list[int], list[str]]:
            prompt = self._render(request)
            return self._tokens(prompt.text, prompt.add_bos), prompt.stop

        tokens, template_stops = await asyncio.to_thread(prepare)
        sampling.stop = sampling.stop + [s for s in template_stops if s not in sampling.stop]
        self._check_fits(tokens, sampling.max_tokens)
        events = self._worker.stream(
            lambda emit, cancel: self._generate(tokens, sampling, emit, cancel))
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
        self._check_fits(tokens, sampling.max_tokens)
        echo = request.echo and isinstance(prompt, str)
        if echo:
            yield TextDelta(str(prompt))
        async for event in self._worker.stream(
                lambda emit, cancel: self._generate(tokens, sampling, emit, cancel)):
            yield event

    def _generate(self, prompt: list[int], sampling: Sampling, emit: Emit,
                  cancel: threading.Event) -> None:
        """The token loop; runs on the model's thread. Checks for cancellation every token."""
        llama = self._llama
        llama.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(32))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(sampling.stop)
        generated: list[int] = []
        budget = self._n_ctx - len(prompt)
        if sampling.max_tokens is not None:
            budget = min(budget, sampling.max_tokens)
        finish = "length"
        for token in llama.generate(
                prompt, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
                temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty,
                frequency_penalty=sampling.frequency_penalty,
                presence_penalty=sampling.presence_penalty, grammar=sampling.grammar):
            if cancel.is_set():
                finish = "cancelled"
                break
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            piece = llama.detokenize([token], prev_tokens=prompt + generated)
            generated.append(token)
            text, hit = stops.feed(decoder.decode(piece))
            if text:
                emit(TextDelta(text))
            if hit:
                finish = "stop"
                break
            if len(generated) >= budget:
                break
        if finish != "stop":
            tail = stops.flush() + decoder.decode(b"", final=True)
            if tail:
                emit(TextDelta(tail))
        emit(Done(finish_reason=finish, prompt_tokens=len(prompt),
                  completion_tokens=len(generated)))

    # --- other work ---------------------------------------------------------------------

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        if not self.embeddings:
            raise UnsupportedFeature(
                f"model `{self._model_id}` was not loaded with embeddings = true")
        for text in inputs:
            count = len(await asyncio.to_thread(self._tokens, text, True))
            if count >= self._n_ctx:
                raise ContextLengthExceeded(count, self._n_ctx)
        result = await self._worker.call(
            lambda: self._llama.embed(inputs, normalize=True, return_count=True))
        vectors, count = result
        return [list(map(float, v)) for v in vectors], int(count)

    async def tokenize(self, request: TokenizeRequest) -> list[int]:
        def run() -> list[int]:
            if request.messages is not None:
                prompt = self._render(request, request.add_generation_prompt)
                return self._tokens(prompt.text, prompt.add_bos)
            return self._tokens(request.text or "", True)

        return await asyncio.to_thread(run)

    def abort(self, message: str) -> None:
        self._worker.abort_all(message)

    async def close(self) -> None:
        done = asyncio.get_running_loop().create_future()

        def final() -> None:
            try:
                self._llama.close()
            finally:
                done.get_loop().call_soon_threadsafe(done.set_result, None)

        self._worker.stop(final)
        await done
