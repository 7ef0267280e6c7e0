"""Stop-string matching per streamed piece: the automaton (cortex.stops) against the
matcher it replaced (every stop string searched in every piece), for lists of 1 to
10,000 strings, plus the time to build the automaton once per request.

    .venv/bin/python bench/stops.py           # a table, microseconds per piece
    .venv/bin/python bench/stops.py --quick   # fewer pieces and sizes (seconds)

The text is Gemma-like pieces of a few characters; the stop strings begin with
characters the text uses (`<`, `t`), as chat templates' do, and never occur in it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from cortex.stops import StopMatcher

PIECES = ["The", " quick", " brown", " fox", " <", "b>", "jumps", "</b>", " over", " the",
          " lazy", " dog", ".", "\n", " Then", " it", " ran", " to", " the", " end", "."]


class SearchEveryStop:
    """The matcher before the automaton: cost per piece grows with the list."""

    def __init__(self, stops: Sequence[str]) -> None:
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


def stop_list(count: int) -> list[str]:
    extra = [f"<end_{n}>" if n % 2 else f"the_{n}" for n in range(count - 1)]
    return ["<end_of_turn>", *extra]


def per_piece(make: Callable[[list[str]], object], stops: list[str], pieces: int) -> float:
    matcher = make(stops)
    feed = matcher.feed  # type: ignore[attr-defined]
    started = time.perf_counter()
    for n in range(pieces):
        feed(PIECES[n % len(PIECES)])
    return (time.perf_counter() - started) / pieces * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [1, 64, 1000] if args.quick else [1, 4, 64, 1000, 10000]
    pieces = 2000 if args.quick else 20000
    print("| stop strings | automaton µs/piece | search-every-stop µs/piece | build ms |")
    print("|---:|---:|---:|---:|")
    for size in sizes:
        stops = stop_list(size)
        started = time.perf_counter()
        StopMatcher(stops)
        build = (time.perf_counter() - started) * 1e3
        ours = per_piece(StopMatcher, stops, pieces)
        theirs = per_piece(SearchEveryStop, stops, max(50, pieces // max(1, size // 10)))
        print(f"| {size} | {ours:.2f} | {theirs:.2f} | {build:.2f} |")


if __name__ == "__main__":
    main()
