"""Stop sequences over streamed text: hold back what could begin one, say which one hit.

Used where text is generated (the llama.cpp harness) and where it is translated (the
Anthropic dialect reports which stop_sequence ended a reply), so a client never sees
part of a stop string.

The stop strings are compiled once per request into an Aho-Corasick automaton, and its
state carries over from one piece of text to the next: each character costs one
transition (plus failure links, paid for by earlier transitions), whatever the number
of stop strings, so a long list slows neither the generating thread nor the gateway's
event loop. Lists are still capped (`check_stops`): the automaton's size, and the time
to build it, grow with the strings' total length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import msgspec

from cortex.errors import InvalidRequest

__all__ = ["MAX_STOP_BYTES", "MAX_STOP_STRINGS", "StopMatcher", "check_stops"]

#: The most stop strings, and UTF-8 bytes of them, a request may carry (a neuron's
#: fixed caps, and the gateway's defaults). OpenAI documents up to 4 strings.
MAX_STOP_STRINGS = 64
MAX_STOP_BYTES = 16 * 1024


_stop_field = msgspec.json.Decoder(str | list[str] | None)


def check_stops(stops: str | Sequence[str] | msgspec.Raw | None, *, field: str,
                max_strings: int = MAX_STOP_STRINGS, max_bytes: int = MAX_STOP_BYTES) -> None:
    """Raise InvalidRequest (naming `field`) for a stop list over the caps. Raw JSON
    too long to hold a list within them (a string's JSON is at most six bytes per byte
    of text, plus quotes and a comma) is refused before it is decoded."""
    if isinstance(stops, msgspec.Raw):
        if len(stops) > 6 * max_bytes + 3 * max_strings + 2:
            raise InvalidRequest(f"`{field}` is {len(stops)} bytes of JSON; at most "
                                 f"{max_strings} strings of {max_bytes} bytes in all are "
                                 "accepted", param=field)
        try:
            stops = _stop_field.decode(stops) if len(stops) else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise InvalidRequest(f"`{field}` must be a string or an array of strings",
                                 param=field) from None
    if stops is None or isinstance(stops, str):
        stops = [] if stops is None else [stops]
    if len(stops) > max_strings:
        raise InvalidRequest(f"`{field}` has {len(stops)} strings; at most {max_strings} "
                             "are accepted", param=field)
    size = sum(len(s.encode("utf-8", "surrogatepass")) for s in stops)
    if size > max_bytes:
        raise InvalidRequest(f"`{field}` is {size} bytes of text; at most {max_bytes} "
                             "are accepted", param=field)


class _Automaton:
    """The stop strings' trie with failure links; node 0 is the root (nothing matched).

    For each node: `goto` its children by character, `fail` the node of its longest
    proper suffix that is also in the trie, `depth` its length, and `hit` the longest
    stop string that ends it (itself, or one ending its failure chain)."""

    __slots__ = ("depth", "fail", "firsts", "goto", "hit")

    def __init__(self, stops: Sequence[str]) -> None:
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        hit: list[str | None] = [None]
        for stop in stops:
            node = 0
            for char in stop:
                child = goto[node].get(char)
                if child is None:
                    child = len(goto)
                    goto[node][char] = child
                    goto.append({})
                    depth.append(depth[node] + 1)
                    hit.append(None)
                node = child
            hit[node] = stop
        fail = [0] * len(goto)
        queue = deque(goto[0].values())
        while queue:
            node = queue.popleft()
            for char, child in goto[node].items():
                back = fail[node]
                while back and char not in goto[back]:
                    back = fail[back]
                fail[child] = goto[back].get(char, 0)
                if hit[child] is None:
                    hit[child] = hit[fail[child]]
                queue.append(child)
        self.goto, self.fail, self.depth, self.hit = goto, fail, depth, hit
        self.firsts = frozenset(goto[0])  # from the root, any other character stays there


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        stops = [s for s in stops if s]
        self._automaton = _Automaton(stops) if stops else None
        self._state = 0  # the automaton's node: the longest live start of a stop string
        self._held = ""  # the text of that node, not emitted yet

    def feed(self, text: str) -> tuple[str, str | None]:
        """Text safe to emit now, and the stop string that ended it (earliest, then longest)."""
        machine = self._automaton
        state = self._state
        if machine is None or (not state and machine.firsts.isdisjoint(text)):
            return text, None
        goto, fail, depth, hits = machine.goto, machine.fail, machine.depth, machine.hit
        end = len(self._held)  # offsets are into held + text
        best: str | None = None
        best_at = 0
        for char in text:
            while (step := goto[state].get(char)) is None and state:
                state = fail[state]
            state = step or 0
            end += 1
            found = hits[state]
            if found is not None and (best is None or end - len(found) <= best_at):
                best, best_at = found, end - len(found)  # same start, later end: longer
            if best is not None and end - depth[state] > best_at:
                break  # nothing still open can start at or before the hit
        buffer = self._held + text
        if best is not None:
            self._state, self._held = 0, ""
            return buffer[:best_at], best
        keep = depth[state]
        self._state = state
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], None

    def flush(self) -> str:
        """What was held back, once generation ended without a stop string."""
        held, self._held, self._state = self._held, "", 0
        return held
