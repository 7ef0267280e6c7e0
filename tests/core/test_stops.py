"""Stop strings never leak, even when they arrive split across tokens."""

from __future__ import annotations

import sys
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cortex.stops as stops_module
from cortex.errors import InvalidRequest
from cortex.stops import MAX_STOP_BYTES, MAX_STOP_STRINGS, StopMatcher, check_stops


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit is not None:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_pieces() -> None:
    assert run(["</end>"], ["Hello </", "en", "d> more"]) == ("Hello ", True)


def test_false_start_is_released() -> None:
    assert run(["STOP"], ["a ST", "OCK b"]) == ("a STOCK b", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["b", "a"], ["xxabc"]) == ("xx", True)


def test_no_stops_passes_through() -> None:
    assert run([], ["a", "b"]) == ("ab", False)


def test_held_text_is_flushed_at_the_end() -> None:
    assert run(["END"], ["the E"]) == ("the E", False)


def test_the_matched_stop_is_reported() -> None:
    assert StopMatcher(["\n\n", "END"]).feed("abc END") == ("abc ", "END")
    assert StopMatcher(["ab", "abc"]).feed("xabc") == ("x", "abc")  # earliest, then longest


# --- the automaton keeps the old matcher's semantics, at a cost independent of the list ----

class _Reference:
    """The matcher as it was: every stop string searched for in every piece. The
    automaton must answer exactly as it does."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        if not self._stops:
            return text, None
        buffer = self._held + text
        hits = [(at, -len(stop), stop) for stop in self._stops if (at := buffer.find(stop)) >= 0]
        if hits:
            at, _, stop = min(hits)
            self._held = ""
            return buffer[:at], stop
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:size]):
                    keep = size
                    break
        self._held = buffer[len(buffer) - keep:]
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(stops=st.lists(st.text("abc", max_size=5), max_size=6),
       pieces=st.lists(st.text("abcd", max_size=6), max_size=8))
def test_the_automaton_answers_as_the_reference_matcher(stops: list[str],
                                                        pieces: list[str]) -> None:
    # A small alphabet makes overlaps, shared prefixes and stops inside stops common.
    ours, theirs = StopMatcher(stops), _Reference(stops)
    for piece in pieces:
        assert ours.feed(piece) == theirs.feed(piece), (stops, pieces)
    assert ours.flush() == theirs.flush()


def test_a_hit_inside_a_longer_stop_still_in_progress_is_reported() -> None:
    # "bc" is whole and "abcd" is not (yet): the reference reports "bc" at once.
    assert StopMatcher(["abcd", "bc"]).feed("abc") == ("a", "bc")
    assert StopMatcher(["abcd", "bc"]).feed("abcd") == ("", "abcd")


def _lines_run(matcher: StopMatcher, pieces: list[str]) -> int:
    """Python lines executed in cortex/stops.py while feeding `pieces`: a count of the
    matcher's work that no machine's speed changes."""
    count = 0

    def trace(frame: types.FrameType, event: str, arg: object) -> object:
        nonlocal count
        if frame.f_code.co_filename != stops_module.__file__:
            return None
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        for piece in pieces:
            matcher.feed(piece)
    finally:
        sys.settrace(None)
    return count


def test_the_work_per_piece_does_not_grow_with_the_number_of_stops() -> None:
    pieces = ["the <", "end", " of", " tu", "rn> and", " more <e", "nd text", " the"]

    def stops(count: int) -> list[str]:
        # Strings that share their first characters with the text (so the automaton
        # walks into them and back), none of them whole in it.
        return ["<end_of_turn>", "</s>", *(f"<e{n:05d}" for n in range(count)),
                *(f"the q{n:05d}" for n in range(count))]

    work = _lines_run(StopMatcher(stops(10)), pieces)
    assert work > 0
    assert _lines_run(StopMatcher(stops(5000)), pieces) == work


# --- caps ----------------------------------------------------------------------------------

def test_check_stops_names_the_field_over_either_cap() -> None:
    check_stops(["a"] * MAX_STOP_STRINGS, field="stop")
    check_stops("x" * MAX_STOP_BYTES, field="stop")
    check_stops(None, field="stop")
    with pytest.raises(InvalidRequest) as many:
        check_stops(["a"] * (MAX_STOP_STRINGS + 1), field="stop_sequences")
    assert many.value.param == "stop_sequences" and "65 strings" in many.value.message
    with pytest.raises(InvalidRequest) as big:
        check_stops(["é" * (MAX_STOP_BYTES // 2 + 1)], field="stop")  # 2 bytes each
    assert big.value.param == "stop" and f"{MAX_STOP_BYTES + 2} bytes" in big.value.message
    with pytest.raises(InvalidRequest):
        check_stops(["a", "b", "c"], field="stop", max_strings=2)
