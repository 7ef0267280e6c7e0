"""Slot choice (cortex_plugins/llamacpp/slots.py) over token lists: pure, no model.
The real-model behaviour (a forked cache gives the same greedy reply, and the
conversation it was copied from keeps its own) is tests/neuron/test_slot_fork.py."""

from __future__ import annotations

from cortex_plugins.llamacpp.slots import FORK_COST, Placement, common_prefix, place

SYSTEM = list(range(1000, 1000 + 2 * FORK_COST))  # an agent's system prompt and tools
X = SYSTEM + list(range(5000, 5000 + 2 * FORK_COST))  # a conversation's turns so far
Y = [*SYSTEM, 7, 8, 9]  # another conversation, sharing only the system prompt


def test_a_conversation_going_on_takes_its_own_slot() -> None:
    assert place([*X, 1, 2], [[], X], [0, 1]) == Placement(1, None, len(X))


def test_an_empty_slot_beats_overwriting_another_conversation() -> None:
    # The old rule (longest common prefix, first on ties) took slot 0 here.
    assert place([1, 2, 3], [X, []], [0, 1]) == Placement(1, None, 0)


def test_a_shared_system_prompt_is_forked_into_an_empty_slot() -> None:
    assert place(Y, [X, []], [0, 1]) == Placement(1, 0, len(SYSTEM))


def test_a_running_slot_can_be_the_source() -> None:
    assert place(Y, [X, []], [1]) == Placement(1, 0, len(SYSTEM))


def test_a_short_shared_prefix_is_not_worth_a_copy() -> None:
    short = list(range(1000, 1000 + FORK_COST // 4))
    other = short + list(range(5000, 5000 + 2 * FORK_COST))
    assert place([*short, 7], [other, []], [0, 1]) == Placement(1, None, 0)


def test_a_slot_with_little_to_lose_is_reused_in_place() -> None:
    # The other conversation holds only a few tokens past the shared prefix: cheaper to
    # lose those than to copy a whole stream.
    brief = [*SYSTEM, 5, 6]
    assert place(Y, [brief, []], [0, 1]) == Placement(0, None, len(SYSTEM))


def test_with_every_slot_taken_the_one_losing_least_goes() -> None:
    long_one = list(range(3000, 3000 + 3 * FORK_COST))
    assert place([1, 2], [long_one, [9] * 10], [0, 1]) == Placement(1, None, 0)


def test_at_least_one_prompt_token_is_left_to_decode() -> None:
    assert place(X, [X, []], [0, 1]) == Placement(0, None, len(X) - 1)
    assert place(X, [X, []], [1]) == Placement(1, 0, len(X) - 1)


def test_common_prefix_finds_the_first_difference_wherever_it_is() -> None:
    base = list(range(3000))
    for at in (0, 1, 511, 512, 513, 1024, 2999):
        other = [*base[:at], -1, *base[at + 1:]]
        assert common_prefix(base, other) == at
    assert common_prefix(base, base[:1700]) == 1700
    assert common_prefix([], base) == 0
