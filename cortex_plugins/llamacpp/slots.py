"""Which slot a new sequence takes, and whose KV cache it starts from.

A slot keeps the KV cache of the last sequence it ran, so the next turn of a
conversation that lands there decodes only its new tokens. Taking the free slot with
the longest common prefix (what the scheduler did) has a cost it did not count: a new
conversation sharing only an agent's system prompt and tools with another overwrote
that conversation's own turns, which its next request then decoded again, and with
nothing shared at all it took the first free slot even beside an empty one.

So each free slot is priced in tokens to decode, now and later:
- the prompt's tokens past the prefix the slot's cache shares with it, plus the tokens
  of the slot's cache that do not match (another conversation's, lost to it);
- or, forking: the cache of the slot sharing the longest prefix (free or running) is
  copied in first and cut to that prefix, for FORK_COST tokens' worth (llama.cpp copies
  a slot's whole stream, n_ctx cells, at its next decode), then the rest of the prompt.
The cheapest wins; ties go to the lowest slot.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["FORK_COST", "Placement", "common_prefix", "place"]

# A whole stream's copy in prompt tokens' worth. Copying Gemma 3 270M's 32k-cell slot
# (590 MB) takes 60 to 100 ms on a CPU, about what decoding 100 to 150 prompt tokens
# takes there; on a GPU the copy is far cheaper than the tokens. Set high on purpose.
FORK_COST = 256
_BLOCK = 512  # tokens compared at once by common_prefix


class Placement(NamedTuple):
    slot: int  # where the sequence runs
    source: int | None  # the slot whose cache is copied in first; None: the slot's own
    keep: int  # tokens of that cache kept: prompt[:keep]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the prefix `a` and `b` share. Compared a block at a time (list slices
    compare in C): it runs for every slot on the scheduler's thread at each admission,
    where an agent's slots hold tens of thousands of tokens."""
    n = min(len(a), len(b))
    i = 0
    while i + _BLOCK <= n and a[i:i + _BLOCK] == b[i:i + _BLOCK]:
        i += _BLOCK
    while i < n and a[i] == b[i]:  # the block holding the first difference
        i += 1
    return i


def place(prompt: list[int], cached: list[list[int]], free: list[int]) -> Placement:
    """Where `prompt` runs: one of the `free` slots (non-empty), given each slot's cache."""
    limit = len(prompt) - 1  # at least one token is decoded, for the logits
    common = [min(common_prefix(c, prompt), limit) for c in cached]
    best = max(range(len(cached)), key=lambda i: (common[i], -i))
    options: list[tuple[int, int, int | None]] = []  # (cost, slot, source)
    for slot in free:
        lost = len(cached[slot]) - common[slot]
        options.append((len(prompt) - common[slot] + lost, slot, None))
        if best != slot and common[best] > common[slot]:
            options.append((FORK_COST + len(prompt) - common[best] + lost, slot, best))
    _, slot, source = min(options, key=lambda o: (o[0], o[1], o[2] is not None))
    return Placement(slot, source, common[slot if source is None else source])
