"""Stop strings never leak, even when they arrive split across tokens."""

from __future__ import annotations

from cortex.stops import StopMatcher


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
