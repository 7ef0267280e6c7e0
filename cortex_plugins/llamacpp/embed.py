"""Embeddings for a profile loaded with `embeddings = true`: capped per request, decoded
one input at a time on the context's thread, so a client that leaves or a forced unload
ends the work within one input instead of holding the model for minutes.

The caps are OpenAI's: 2,048 inputs, 8,192 tokens an input, 300,000 tokens a request.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any

from cortex import ContextLengthExceeded, InvalidRequest, Unavailable

__all__ = ["MAX_INPUTS", "MAX_INPUT_TOKENS", "MAX_REQUEST_TOKENS", "Embedder"]

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


class _Run:
    """One request's embedding loop; `aborted` says why it must stop."""

    __slots__ = ("aborted",)

    def __init__(self) -> None:
        self.aborted: str | None = None


class Embedder:
    """Embeds for one engine. `on_thread` runs a function on the context's own thread."""

    def __init__(self, *, model: Any, ctx: Any, n_ctx: int,
                 tokens: Callable[[str], list[int]],
                 on_thread: Callable[[Callable[[], list[float]]], Awaitable[list[float]]]
                 ) -> None:
        self._model = model
        self._ctx = ctx
        self._n_ctx = n_ctx
        self._tokens = tokens
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

    async def embed(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        if len(inputs) > MAX_INPUTS:
            raise InvalidRequest(f"{len(inputs)} inputs; give at most {MAX_INPUTS} a request",
                                 param="input")
        run = _Run()
        self._runs.add(run)
        try:
            batches = await self._tokenized(inputs, run)
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

    async def _tokenized(self, inputs: list[str], run: _Run) -> list[list[int]]:
        batches: list[list[int]] = []
        total = 0
        for i, text in enumerate(inputs):
            self._check(run)
            tokens = await asyncio.to_thread(self._tokens, text)
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
