"""Alias patterns: a profile's aliases with `*` (any run of characters) or `?` (one
character) match many names, e.g. `claude-*` for whatever Claude model name a client's
release asks for.

A name resolves to a profile by its id or an exact alias first; only then do patterns
apply, and the most specific one wins (the most literal characters). Two patterns of
different profiles that are equally specific and can both match one name would make that
name ambiguous: the configuration is refused (`ambiguous_patterns`). Character classes
(`[...]`) are refused too, which keeps that check exact.
"""

from __future__ import annotations

import fnmatch
import functools
import re

__all__ = ["AliasPattern", "ambiguous_patterns", "is_pattern", "overlap"]

WILDCARDS = frozenset("*?")


def is_pattern(name: str) -> bool:
    return any(c in WILDCARDS for c in name)


class AliasPattern:
    """One pattern, compiled, with its specificity (literal characters)."""

    __slots__ = ("regex", "specificity", "text")

    def __init__(self, text: str) -> None:
        if "[" in text or "]" in text:
            raise ValueError(f"alias pattern `{text}`: only * and ? are wildcards; "
                             "character classes ([...]) are not supported")
        self.text = text
        self.specificity = sum(1 for c in text if c not in WILDCARDS)
        self.regex = re.compile(fnmatch.translate(text))

    def matches(self, name: str) -> bool:
        return self.regex.match(name) is not None


def overlap(a: str, b: str) -> bool:
    """Whether some name matches both patterns (`*` and `?` wildcards only)."""

    @functools.cache
    def joint(i: int, j: int) -> bool:  # can a[i:] and b[j:] match one string?
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            return joint(i + 1, j) or (j < len(b) and joint(i, j + 1))
        if j < len(b) and b[j] == "*":
            return joint(i, j + 1) or (i < len(a) and joint(i + 1, j))
        if i < len(a) and j < len(b) and (a[i] == b[j] or "?" in (a[i], b[j])):
            return joint(i + 1, j + 1)
        return False

    return joint(0, 0)


def ambiguous_patterns(owners: list[tuple[str, str]]) -> tuple[str, str, str, str] | None:
    """Among (pattern, profile id) pairs, two of different profiles that are equally
    specific and overlap, as (pattern, id, pattern, id); None when there are none."""
    patterns = [(AliasPattern(text), owner) for text, owner in owners]
    for n, (first, first_owner) in enumerate(patterns):
        for second, second_owner in patterns[n + 1:]:
            if first_owner != second_owner and first.specificity == second.specificity \
                    and overlap(first.text, second.text):
                return first.text, first_owner, second.text, second_owner
    return None
