"""Rendezvous (highest-random-weight) hashing: which node a conversation belongs to.

Every gateway replica computes the same answer from the same inputs, with nothing
shared between them: a key (a conversation's first prefix hash) scores each node by a
hash of the pair, and the node with the highest score wins. When a node leaves, only
the keys it held move (each to its own next-highest node); when one joins, only the
keys it now scores highest for move to it. A node that cannot take the request is
passed over for the next in the same order, which every replica also agrees on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["rendezvous", "rendezvous_weight"]


def rendezvous_weight(key: str, node: str) -> int:
    """The score of `node` for `key`: 64 bits of BLAKE2b over the pair, the same everywhere
    (Python's own hash() is salted per process, so two replicas would disagree)."""
    data = key.encode()
    digest = hashlib.blake2b(len(data).to_bytes(8, "little") + data + node.encode(),
                             digest_size=8, person=b"cortex-hrw")
    return int.from_bytes(digest.digest(), "big")


def rendezvous(key: str, nodes: Iterable[str]) -> list[str]:
    """`nodes` best first for `key` (ties, vanishingly rare, broken by name)."""
    return sorted(nodes, key=lambda node: (-rendezvous_weight(key, node), node))
