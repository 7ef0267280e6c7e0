"""Ollama's chat truncation: a conversation over the context loses its oldest turns
instead of being refused (a request's `truncate_history`, which the Ollama dialect sets
as Ollama's `truncate` defaults to).

The system messages stay wherever they are, and the rest is kept from a user message
on, so a template that wants user and assistant turns to alternate still renders; the
longest such tail that fits is found by bisection (fewer messages never take more
tokens), so a long conversation costs a few renders, not one per message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cortex import ChatMessage

__all__ = ["fitting_tail"]

_KEPT = frozenset({"system", "developer"})


def _from(messages: Sequence[ChatMessage], cut: int) -> list[ChatMessage]:
    return [m for i, m in enumerate(messages) if i >= cut or m.role in _KEPT]


def fitting_tail(messages: Sequence[ChatMessage],
                 fits: Callable[[list[ChatMessage]], bool]) -> list[ChatMessage] | None:
    """The system messages and the longest tail of the rest, from a user message on,
    that `fits`: at least the last user message and what follows it; None when even
    that does not fit. The whole conversation is taken not to fit (the caller tried)."""
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    starts = [i for i in starts if any(m.role not in _KEPT for m in messages[:i])]
    low, high, best = 0, len(starts) - 1, None
    while low <= high:  # the earliest start that fits: more history, more tokens
        middle = (low + high) // 2
        kept = _from(messages, starts[middle])
        if fits(kept):
            best, high = kept, middle - 1
        else:
            low = middle + 1
    return best
