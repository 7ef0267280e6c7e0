"""Stop sequences over streamed text: hold back what could begin one, say which one hit.

Used where text is generated (the llama.cpp harness) and where it is translated (the
Anthropic dialect reports which stop_sequence ended a reply), so a client never sees
part of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopMatcher"]


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Text safe to emit now, and the stop string that ended it (earliest, then longest)."""
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
        """What was held back, once generation ended without a stop string."""
        held, self._held = self._held, ""
        return held
