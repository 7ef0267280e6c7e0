"""Picking tokens: llama.cpp sampler chains, and sampling a grammar without crashing.

A grammar that allows no token the model has (a pattern asking for a NUL, say) makes
llama_sampler_sample pick a token the grammar rejected, which the grammar then refuses
by throwing through the C API: std::terminate, the whole neuron gone. So a sequence
with a grammar is sampled in steps (apply, check, accept), and a pick the grammar ruled
out (logit -inf) is never accepted: that request ends instead.

The grammar is its own sampler, beside the chain: the chain picks from the raw logits,
and only when the grammar rejects that one token is the whole vocabulary constrained
and picked from again (as llama.cpp's common sampler does). A grammar over 262,144
tokens costs tens of milliseconds a token on a CPU, and the scheduler's thread samples
every stream of the model in turn, so this keeps a structured request from slowing the
streams beside it.
"""

from __future__ import annotations

import ctypes
import math
import random
from typing import Any

import numpy

__all__ = ["Candidates", "grammar_sampler", "sampler_chain"]

_PENALTY_LAST_N = 64


def sampler_chain(sampling: Any, n_vocab: int) -> Any:
    """A llama.cpp sampler chain for `sampling` (its grammar aside), or None where
    greedy argmax gives the same token."""
    from llama_cpp._internals import LlamaSampler

    neutral = sampling.repeat_penalty == 1.0 and not sampling.frequency_penalty \
        and not sampling.presence_penalty
    if sampling.temperature <= 0 and sampling.grammar is None and neutral:
        return None
    sampler = LlamaSampler()
    sampler.add_penalties(n_vocab, _PENALTY_LAST_N, sampling.repeat_penalty,
                          sampling.frequency_penalty, sampling.presence_penalty)
    if sampling.temperature <= 0:
        sampler.add_greedy()
    else:
        sampler.add_top_k(sampling.top_k)
        sampler.add_top_p(sampling.top_p, 1)
        sampler.add_min_p(sampling.min_p, 1)
        sampler.add_temp(sampling.temperature)
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        sampler.add_dist(seed & 0xFFFFFFFF)
    return sampler


def grammar_sampler(sampling: Any) -> Any:
    """The request's grammar (made and checked when it arrived) in a chain of its own,
    which then owns and frees it; None without one, or once the request is gone."""
    if sampling.grammar is None:
        return None
    pointer = sampling.grammar.take()
    if not pointer:
        return None
    import llama_cpp
    from llama_cpp._internals import LlamaSampler

    sampler = LlamaSampler()
    llama_cpp.llama_sampler_chain_add(sampler.sampler, pointer)
    return sampler


class Candidates:
    """The whole vocabulary as a llama_token_data_array, refilled for each sample."""

    def __init__(self, n_vocab: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._ids = numpy.arange(n_vocab, dtype=numpy.int32)
        self._array = numpy.zeros(n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"),
                                                  ("p", "<f4")])
        self._data = self._array.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        self._one = (llama_cpp.llama_token_data * 1)()

    def _apply(self, sampler: Any, logits: Any | None, data: Any, size: int) -> Any:
        if logits is not None:
            self._array["id"] = self._ids
            self._array["logit"] = numpy.ctypeslib.as_array(logits, shape=(size,))
            self._array["p"] = 0.0
        cur = self._lib.llama_token_data_array(data=data, size=size, selected=-1,
                                               sorted=False)
        self._lib.llama_sampler_apply(sampler, ctypes.byref(cur))
        return cur

    def sample(self, chain: Any, grammar: Any, logits: Any) -> int | None:
        """The token `chain` picks from `logits` (a float pointer) that `grammar` allows,
        accepted by both; None when the grammar allows no token."""
        n = len(self._ids)
        cur = self._apply(chain, logits, self._data, n)
        if not 0 <= cur.selected < cur.size:
            return None
        token = int(cur.data[cur.selected].id)
        self._one[0] = self._lib.llama_token_data(id=token, logit=0.0, p=0.0)
        if not math.isfinite(self._apply(grammar, None, self._one, 1).data[0].logit):
            # The grammar rejects the chain's pick: constrain everything, pick again.
            cur = self._apply(grammar, logits, self._data, n)
            cur = self._apply(chain, None, cur.data, cur.size)
            if not 0 <= cur.selected < cur.size or \
                    not math.isfinite(cur.data[cur.selected].logit):
                return None
            token = int(cur.data[cur.selected].id)
        self._lib.llama_sampler_accept(grammar, token)
        self._lib.llama_sampler_accept(chain, token)
        return token
