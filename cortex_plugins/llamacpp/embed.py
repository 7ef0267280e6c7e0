"""Embeddings for a profile loaded with `embeddings = true`: capped per request, decoded
one input at a time on the context's thread, so a client that leaves or a forced unload
ends the work within one input instead of holding the model for minutes.

The caps are OpenAI's: 2,048 inputs, 8,192 tokens an input, 300,000 tokens a request.
An input over the context (or the per-input cap) is refused, unless the request asks for
it to be truncated (Ollama's default): then its end is cut off, the special tokens the
tokenizer puts around a text kept.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any

from cortex import ContextLengthExceeded, InvalidRequest, Unavailable

__all__ = ["MAX_INPUTS", "MAX_INPUT_TOKENS", "MAX_REQUEST_TOKENS", "Embedder", "cut_tokens"]

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


def cut_tokens(tokenize: Callable[[bool], list[int]], limit: int) -> list[int]:
    """A text's tokens cut at the end to at most `limit`. `tokenize(add_special)`
    tokenizes the text with or without the special tokens the model adds around it
    (BOS; EOS or SEP for some embedding models, whose pooling reads the last token):
    those are kept, and only the text's own tokens are cut."""
    tokens = tokenize(True)
    if len(tokens) <= limit:
        return tokens
    plain = tokenize(False)
    extra = len(tokens) - len(plain)
    if 0 <= extra < limit:
        for lead in range(extra + 1):
            if tokens[lead:lead + len(plain)] == plain:
                return tokens[:lead] + plain[:limit - extra] + tokens[lead + len(plain):]
    return tokens[:limit]  # the specials are not around the text: keep the head


class _Run:
    """One request's embedding loop; `aborted` says why it must stop."""

    __slots__ = ("aborted",)

    def __init__(self) -> None:
        self.aborted: str | None = None


class Embedder:
    """Embeds for one engine. `on_thread` runs a function on the context's own thread."""

    def __init__(self, *, model: Any, ctx: Any, n_ctx: int,
                 tokens: Callable[[str], list[int]], cut: Callable[[str, int], list[int]],
                 on_thread: Callable[[Callable[[], list[float]]], Awaitable[list[float]]]
                 ) -> None:
        """`tokens(text)`: its tokens, refusing a text that cannot fit the context;
        `cut(text, limit)`: at most `limit` of them (cut_tokens over a head of it)."""
        self._model = model
        self._ctx = ctx
        self._n_ctx = n_ctx
        self._tokens = tokens
        self._cut = cut
        self._on_thread = on_thread
        self._runs: set[_Run] = set()
        self.embedded = 0  # tokens decoded, for the prefill counter

    @property
    def running(self) -> int:
        return len(self._runs)

    def abort(self, message: str) -> None:
        """End every loop in flight at its next input (a forced unload)."""
        for run in self._runs:
            run.aborted = message

    async def embed(self, inputs: list[str], *, truncate: bool = False
                    ) -> tuple[list[list[float]], int]:
        if len(inputs) > MAX_INPUTS:
            raise InvalidRequest(f"{len(inputs)} inputs; give at most {MAX_INPUTS} a request",
                                 param="input")
        run = _Run()
        self._runs.add(run)
        try:
            batches = await self._tokenized(inputs, run, truncate)
            vectors = []
            for tokens in batches:
                self._check(run)
                vectors.append(await self._on_thread(functools.partial(self._embed_one, tokens)))
                self.embedded += len(tokens)
            return vectors, sum(len(t) for t in batches)
        finally:
            self._runs.discard(run)

    def _check(self, run: _Run) -> None:
        if run.aborted is not None:
            raise Unavailable(run.aborted)

    async def _tokenized(self, inputs: list[str], run: _Run, truncate: bool
                         ) -> list[list[int]]:
        batches: list[list[int]] = []
        total = 0
        # What fits: the context with room to spare, as for a prompt, and the input cap.
        limit = min(self._n_ctx - 1, MAX_INPUT_TOKENS)
        for i, text in enumerate(inputs):
            self._check(run)
            tokens = await (asyncio.to_thread(self._cut, text, limit) if truncate
                            else asyncio.to_thread(self._tokens, text))
            if not tokens:
                raise InvalidRequest(f"input[{i}] is empty", param="input")
            if len(tokens) >= self._n_ctx:
                raise ContextLengthExceeded(len(tokens), self._n_ctx, param="input")
            if len(tokens) > MAX_INPUT_TOKENS:
                raise InvalidRequest(f"input[{i}] has {len(tokens)} tokens; at most "
                                     f"{MAX_INPUT_TOKENS} an input", param="input")
            total += len(tokens)
            if total > MAX_REQUEST_TOKENS:
                raise InvalidRequest(f"the inputs have more than {MAX_REQUEST_TOKENS} tokens "
                                     "in all; split them over several requests", param="input")
            batches.append(tokens)
        return batches

    def _embed_one(self, tokens: list[int]) -> list[float]:
        import llama_cpp
        from llama_cpp._internals import LlamaBatch

        llama_cpp.llama_memory_clear(self._ctx.memory, True)
        batch = LlamaBatch(n_tokens=len(tokens), embd=0, n_seq_max=1, verbose=False)
        try:
            batch.set_batch(tokens, 0, True)
            code = llama_cpp.llama_decode(self._ctx.ctx, batch.batch)
        finally:
            batch.close()
        if code != 0:
            raise InvalidRequest(f"llama.cpp could not decode this input (llama_decode "
                                 f"returned {code})", param="input")
        pointer = llama_cpp.llama_get_embeddings_seq(self._ctx.ctx, 0)
        vector = [float(pointer[i]) for i in range(self._model.n_embd())]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]
