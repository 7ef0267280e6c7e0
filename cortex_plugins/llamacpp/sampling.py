"""Picking tokens: llama.cpp sampler chains, and sampling a grammar without crashing.

A grammar that allows no token the model has (a pattern asking for a NUL, say) makes
llama_sampler_sample pick a token the grammar rejected, which the grammar then refuses
by throwing through the C API: std::terminate, the whole neuron gone. So a sequence with
a grammar is sampled in two steps, apply and then accept, and a pick the chain ruled out
(logit -inf) is never accepted: that request ends instead.
"""

from __future__ import annotations

import ctypes
import math
import random
from typing import Any

import numpy

__all__ = ["Candidates", "sampler_chain"]

_PENALTY_LAST_N = 64


def sampler_chain(sampling: Any, n_vocab: int) -> Any:
    """A llama.cpp sampler chain for `sampling`, or None where greedy argmax gives the
    same token. A grammar (made and checked when the request arrived) joins the chain,
    which then owns it."""
    import llama_cpp
    from llama_cpp._internals import LlamaSampler

    neutral = sampling.repeat_penalty == 1.0 and not sampling.frequency_penalty \
        and not sampling.presence_penalty
    if sampling.temperature <= 0 and sampling.grammar is None and neutral:
        return None
    sampler = LlamaSampler()
    sampler.add_penalties(n_vocab, _PENALTY_LAST_N, sampling.repeat_penalty,
                          sampling.frequency_penalty, sampling.presence_penalty)
    if sampling.grammar is not None:
        grammar = sampling.grammar.take()
        if grammar:  # else closed: the request is gone already
            llama_cpp.llama_sampler_chain_add(sampler.sampler, grammar)
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


class Candidates:
    """The whole vocabulary as a llama_token_data_array, refilled for each sample.

    `sample` is llama_sampler_sample in two steps, so a token the chain rejected (every
    logit -inf: the grammar allows nothing) is never accepted.
    """

    def __init__(self, n_vocab: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._ids = numpy.arange(n_vocab, dtype=numpy.int32)
        self._array = numpy.zeros(n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"),
                                                  ("p", "<f4")])
        self._data = self._array.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))

    def sample(self, chain: Any, logits: Any) -> int | None:
        """Apply `chain` to `logits` (a float pointer), accept and return its token; None
        when it left no possible token."""
        n = len(self._ids)
        self._array["id"] = self._ids
        self._array["logit"] = numpy.ctypeslib.as_array(logits, shape=(n,))
        self._array["p"] = 0.0
        cur = self._lib.llama_token_data_array(data=self._data, size=n, selected=-1,
                                               sorted=False)
        self._lib.llama_sampler_apply(chain, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            return None
        chosen = cur.data[cur.selected]
        if not math.isfinite(chosen.logit):
            return None
        token = int(chosen.id)
        self._lib.llama_sampler_accept(chain, token)
        return token
