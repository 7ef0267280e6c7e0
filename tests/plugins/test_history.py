"""Ollama's chat truncation (cortex_plugins/llamacpp/history.py): which turns a
conversation over the context keeps. A fake `fits` (a budget of characters) stands in
for rendering and tokenizing; test_engine.py runs it on the real model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cortex import ChatMessage
from cortex_plugins.llamacpp.history import fitting_tail


def _conversation(turns: int, *, system: bool = True) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content="S")] if system else []
    for turn in range(turns):
        messages += [ChatMessage(role="user", content=f"u{turn}" * 5),
                     ChatMessage(role="assistant", content=f"a{turn}" * 5)]
    return [*messages, ChatMessage(role="user", content="last")]


def _size(messages: list[ChatMessage]) -> int:
    return sum(len(m.text()) for m in messages)


def test_the_oldest_turns_go_and_the_system_prompt_stays() -> None:
    messages = _conversation(6)
    kept = fitting_tail(messages, lambda m: _size(m) <= 50)
    assert kept is not None
    assert [m.text() for m in kept] == ["S", "u4" * 5, "a4" * 5, "u5" * 5, "a5" * 5, "last"]


def test_none_when_the_last_turn_alone_does_not_fit() -> None:
    assert fitting_tail(_conversation(3), lambda m: _size(m) <= 4) is None
    assert fitting_tail([ChatMessage(role="user", content="x" * 9)], lambda m: False) is None


def test_a_cut_starts_at_a_user_turn_and_keeps_a_tool_round() -> None:
    """Never an assistant turn or a tool result first (templates that alternate roles
    refuse that), so the last user turn and the tool round after it stay together."""
    messages = [ChatMessage(role="user", content="old" * 9),
                ChatMessage(role="assistant", content="old" * 9),
                ChatMessage(role="user", content="q"),
                ChatMessage(role="assistant", content="", tool_calls=[]),
                ChatMessage(role="tool", content="r", tool_call_id="c")]
    kept = fitting_tail(messages, lambda m: _size(m) <= 10)
    assert kept == messages[2:]


@given(st.integers(0, 40), st.integers(0, 600), st.booleans())
def test_the_longest_tail_that_fits_in_few_tries(turns: int, budget: int,
                                                 system: bool) -> None:
    messages = _conversation(turns, system=system)
    tried: list[int] = []

    def fits(kept: list[ChatMessage]) -> bool:
        tried.append(len(kept))
        return _size(kept) <= budget

    kept = fitting_tail(messages, fits)
    heads = [i for i, m in enumerate(messages) if m.role == "user" and i > int(system)]
    tails = [[m for j, m in enumerate(messages) if j >= i or m.role == "system"]
             for i in heads]
    expected = next((t for t in tails if _size(t) <= budget), None)
    assert kept == expected
    assert len(tried) <= max(1, len(heads)).bit_length() + 1
