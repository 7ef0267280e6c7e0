"""Continuous batching: several sequences decoded together in one llama.cpp context.

One thread owns the context and runs the scheduler loop. Each step it puts one token
per generating sequence and a bounded chunk of each waiting prompt into one batch,
calls llama_decode once, and samples every sequence that has logits. New requests join
free slots between steps and finished ones leave, so a long prompt never stalls the
streams already running for more than one chunk.

Each slot keeps the tokens its KV cells hold after a request ends; a new request takes
the free slot that costs it the fewest tokens to decode, maybe starting from another
slot's copied cache (slots.py), and prefills only the rest.

A failed llama_decode belongs to the request that caused it: the step is decoded again
one sequence at a time, and only those whose own part fails end (with a 400), so the
streams batched beside a bad prompt go on.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import ctypes
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy

from cortex import Admitted, CortexError, Done, InvalidRequest, StopMatcher, TextDelta, Unavailable

from .sampling import Candidates, grammar_sampler, sampler_chain
from .slots import place

__all__ = ["END", "Scheduler", "Sequence"]

log = logging.getLogger("cortex.neuron.llamacpp")

END = object()  # the last thing a sequence emits


class Sequence:
    """One request's generation state while it waits for, or holds, a slot."""

    def __init__(self, prompt: list[int], sampling: Any, loop: asyncio.AbstractEventLoop,
                 events: asyncio.Queue[Any]) -> None:
        self.prompt = prompt
        self.sampling = sampling
        self.loop = loop
        self.events = events
        self.cancel = threading.Event()
        self.abort_message: str | None = None
        self.slot = -1
        self.pos = 0
        self.pending: list[int] = []
        self.generated: list[int] = []
        self.last = self.row = -1
        self.sampler: Any = None
        self.grammar: Any = None  # its grammar's sampler, beside `sampler`
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopMatcher(sampling.stop)
        self.budget = self.cached = 0  # budget: min(room left in the slot, max_tokens)


class _Part:
    """What one sequence puts into a step: `tokens` from position `start`; `logits` when
    the last of them is to be sampled. Committed to the sequence only once decoded."""

    __slots__ = ("logits", "seq", "start", "tokens")

    def __init__(self, seq: Sequence, tokens: list[int], logits: bool) -> None:
        self.seq = seq
        self.tokens = tokens
        self.start = seq.pos
        self.logits = logits


class Scheduler:
    """Owns a llama.cpp context; every method but submit/abort_all/stop runs on its thread."""

    def __init__(self, *, model: Any, ctx: Any, slots: int, n_ctx_slot: int, n_batch: int,
                 prefill_chunk: int, name: str) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaBatch

        self._lib = llama_cpp
        self._model = model
        self._ctx = ctx
        self._vocab = model.vocab
        self._n_vocab = model.n_vocab()
        self._n_ctx_slot = n_ctx_slot
        self._n_batch = n_batch
        self._chunk = max(1, min(prefill_chunk, n_batch))
        self._batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self._slots: list[Sequence | None] = [None] * slots
        self._cached: list[list[int]] = [[] for _ in range(slots)]
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._inbox: queue.SimpleQueue[Sequence | Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._all: set[Sequence] = set()
        self.steps = 0
        self.isolated = 0  # steps whose llama_decode failed and were redone one by one
        # Totals for metrics, written by this thread only: prompt tokens decoded (prefix
        # cache hits excluded) and tokens sampled into replies.
        self.prefilled = 0
        self.generated = 0
        self._buf = ctypes.create_string_buffer(64)
        self._candidates: Candidates | None = None  # made when a grammar is first sampled
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- called from other threads ------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        with self._lock:
            self._all.add(seq)
        self._inbox.put(seq)

    def call(self, fn: Callable[[], None]) -> None:
        """Run fn on the scheduler thread once no sequence is generating."""
        self._inbox.put(fn)

    def counts(self) -> tuple[int, int]:
        """(in flight, queued) as seen now; a snapshot, not a promise."""
        with self._lock:
            active = sum(1 for s in self._slots if s is not None)
            return active, max(0, len(self._all) - active)

    def kv_tokens(self) -> tuple[int, int]:
        """(KV cells holding tokens, cells in all): a snapshot, not a promise."""
        return sum(len(c) for c in self._cached), self._n_ctx_slot * len(self._slots)

    def abort_all(self, message: str) -> None:
        with self._lock:
            victims = list(self._all)
        for seq in victims:
            seq.abort_message = message
            seq.cancel.set()

    def stop(self) -> None:
        self._inbox.put(None)

    # --- the scheduler thread -----------------------------------------------------------

    def _warm_up(self) -> None:
        """Decode one token once, so the first request does not pay for graph set-up.
        Without logits: the output layer (for Gemma 3 270M, its 262k-token vocabulary
        matrix is most of a decode) warms nothing the first request lacks, and after a
        swap that request is already waiting behind this decode."""
        batch = self._batch.batch
        batch.token[0] = max(self._model.token_bos(), 0)
        batch.pos[0], batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = 0, 1, 0, False
        batch.n_tokens = 1
        self._lib.llama_decode(self._ctx.ctx, batch)
        self._lib.llama_memory_seq_rm(self._ctx.memory, 0, -1, -1)

    def _run(self) -> None:
        self._warm_up()
        deferred: list[Callable[[], None]] = []
        while True:
            busy = any(s is not None for s in self._slots) or bool(self._waiting)
            if not busy and deferred:
                for fn in deferred:
                    fn()
                deferred.clear()
            for item in self._drain(block=not busy):
                if item is None:
                    self._shutdown(deferred)
                    return
                if isinstance(item, Sequence):
                    self._waiting.append(item)
                else:
                    deferred.append(item)
            self._admit()
            if any(s is not None for s in self._slots):
                try:
                    self._step()
                except Exception as exc:  # a bug, not a request: the thread must go on
                    log.exception("a decode step failed")
                    for seq in [s for s in self._slots if s is not None]:
                        self._end(seq, None, error=CortexError(f"internal error: {exc!r}"))
            self._flush()

    def _drain(self, *, block: bool) -> list[Sequence | Callable[[], None] | None]:
        """Everything in the inbox; waits for the first item only when idle."""
        items = [self._inbox.get()] if block else []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _shutdown(self, deferred: list[Callable[[], None]]) -> None:
        for seq in list(self._waiting) + [s for s in self._slots if s is not None]:
            self._end(seq, None, error=Unavailable("the model was unloaded"))
        self._flush()
        for fn in deferred:
            fn()
        self._batch.close()

    def _admit(self) -> None:
        while self._waiting and None in self._slots:
            seq = self._waiting.popleft()
            if seq.cancel.is_set():
                self._end(seq, None)
                continue
            free = [i for i, s in enumerate(self._slots) if s is None]
            slot, source, keep = place(seq.prompt, self._cached, free)
            mem = self._ctx.memory
            if source is not None:  # whole streams only; done at the next llama_decode
                self._lib.llama_memory_seq_cp(mem, source, slot, -1, -1)
            if not self._lib.llama_memory_seq_rm(mem, slot, keep, -1):
                self._lib.llama_memory_seq_rm(mem, slot, -1, -1)
                keep = 0
            self._cached[slot] = seq.prompt[:keep]
            seq.slot, seq.pos, seq.pending, seq.cached = slot, keep, seq.prompt[keep:], keep
            room = self._n_ctx_slot - len(seq.prompt)
            seq.budget = room if seq.sampling.max_tokens is None else \
                min(room, seq.sampling.max_tokens)
            try:
                seq.sampler = sampler_chain(seq.sampling, self._n_vocab)
                seq.grammar = grammar_sampler(seq.sampling)
            except Exception as exc:  # settings llama.cpp's wrappers refuse (ctypes ranges)
                self._end(seq, None, error=InvalidRequest(f"sampling settings refused: {exc}"))
                continue
            self._slots[slot] = seq
            self._send(seq, Admitted(prompt_tokens=len(seq.prompt), cached_tokens=keep))

    def _parts(self) -> list[_Part]:
        """This step's work: one token per generating sequence, then prompt chunks."""
        running = [s for s in self._slots if s is not None]
        parts: list[_Part] = []
        for seq in running:
            seq.row = -1
            if seq.cancel.is_set():
                self._end(seq, "cancelled")
            elif not seq.pending:
                parts.append(_Part(seq, [seq.last], True))
        prefilling = [s for s in running if s.pending and not s.cancel.is_set()]
        room = self._n_batch - len(parts)
        # A lone prompt takes the whole batch; beside running streams, one chunk at a time.
        chunk = self._n_batch if not parts and len(prefilling) == 1 else self._chunk
        for seq in prefilling:
            take = min(len(seq.pending), chunk, room)
            if take <= 0:
                break
            parts.append(_Part(seq, seq.pending[:take], take == len(seq.pending)))
            room -= take
        return parts

    def _decode(self, parts: list[_Part]) -> int:
        batch = self._batch.batch
        n = 0
        for part in parts:
            for i, token in enumerate(part.tokens):
                batch.token[n] = token
                batch.pos[n] = part.start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = part.seq.slot
                batch.logits[n] = part.logits and i == len(part.tokens) - 1
                n += 1
            part.seq.row = n - 1 if part.logits else -1
        batch.n_tokens = n
        code: int = self._lib.llama_decode(self._ctx.ctx, batch)
        self.steps += 1
        return code

    def _commit(self, part: _Part) -> None:
        seq = part.seq
        seq.pos += len(part.tokens)
        self._cached[seq.slot].extend(part.tokens)
        if seq.pending:
            seq.pending = seq.pending[len(part.tokens):]
            self.prefilled += len(part.tokens)

    def _step(self) -> None:
        parts = self._parts()
        if not parts:
            return
        code = self._decode(parts)
        if code != 0:
            self._isolate(parts, code)
            return
        for part in parts:
            self._commit(part)
        for part in parts:
            if part.logits and self._slots[part.seq.slot] is part.seq:
                self._sample(part.seq)

    def _isolate(self, parts: list[_Part], code: int) -> None:
        """A failed step again, one sequence at a time: a part that fails alone ends its
        own request (its fault: a 400, not a 503 another node would retry); the rest
        decode and sample as usual."""
        self.isolated += 1
        mem = self._ctx.memory
        for part in parts:  # whatever the failed step left in the KV cache
            self._lib.llama_memory_seq_rm(mem, part.seq.slot, part.start, -1)
        for part in parts:
            seq = part.seq
            alone = self._decode([part])
            if alone != 0:
                self._lib.llama_memory_seq_rm(mem, seq.slot, part.start, -1)
                self._end(seq, None, error=InvalidRequest(
                    f"llama.cpp could not decode this request (llama_decode returned "
                    f"{alone}; the batch it shared returned {code})", param="prompt"))
                continue
            self._commit(part)
            if part.logits:
                self._sample(seq)

    def _sample(self, seq: Sequence) -> None:
        logits = self._lib.llama_get_logits_ith(self._ctx.ctx, seq.row)
        if seq.sampler is None:  # plain greedy: an argmax, not a 262k-entry candidate list
            token = int(numpy.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        elif seq.grammar is None:
            token = seq.sampler.sample(self._ctx, seq.row)
        else:
            if self._candidates is None:
                self._candidates = Candidates(self._n_vocab)
            picked = self._candidates.sample(seq.sampler.sampler, seq.grammar.sampler, logits)
            if picked is None:
                where = seq.sampling.grammar.param  # response_format, or a forced tool_choice
                self._end(seq, None, error=InvalidRequest(
                    f"{where}: the grammar made from the schema allows no token this model "
                    "has at this point", param=where))
                return
            token = picked
        if self._lib.llama_vocab_is_eog(self._vocab, token) and not seq.sampling.ignore_eos:
            self._end(seq, "stop")
            return
        seq.generated.append(token)
        self.generated += 1
        seq.last = token
        piece = self._piece(token)
        text, hit = seq.stops.feed(seq.decoder.decode(piece))
        if text:
            self._send(seq, TextDelta(text))
        if hit is not None:
            self._end(seq, "stop")
        elif len(seq.generated) >= seq.budget:
            self._end(seq, "length")

    def _piece(self, token: int) -> bytes:
        """The token's bytes (llama-cpp-python's wrapper returns its whole 32-byte buffer)."""
        n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0,
                                           False)
        if n < 0:  # a longer piece than the buffer: grow it and ask again
            self._buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf),
                                               0, False)
        return self._buf.raw[:n]

    def _send(self, seq: Sequence, event: Any) -> None:
        self._outbox.setdefault(seq.loop, []).append((seq.events, event))

    def _flush(self) -> None:
        """Hand this step's events to asyncio: one wake-up per event loop, not per token."""
        for loop, items in self._outbox.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_deliver, items)
        self._outbox.clear()

    def _end(self, seq: Sequence, finish: str | None, *,
             error: Exception | None = None) -> None:
        if seq.slot >= 0 and self._slots[seq.slot] is seq:
            self._slots[seq.slot] = None
        if seq.sampling.grammar is not None:
            seq.sampling.grammar.close()  # not taken if it never reached a slot
        if seq.abort_message is not None:
            error = Unavailable(seq.abort_message)
        if error is not None:
            self._send(seq, error)
        elif finish is not None and finish != "cancelled":
            if finish != "stop":
                tail = seq.stops.flush() + seq.decoder.decode(b"", final=True)
                if tail:
                    self._send(seq, TextDelta(tail))
            self._send(seq, Done(finish_reason=finish, prompt_tokens=len(seq.prompt),
                          completion_tokens=len(seq.generated), cached_tokens=seq.cached,
                          stop_cause=None if finish != "length" else "max_tokens"
                          if seq.budget == seq.sampling.max_tokens else "context"))
        self._send(seq, END)
        with self._lock:
            self._all.discard(seq)


def _deliver(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for events, event in items:
        events.put_nowait(event)
