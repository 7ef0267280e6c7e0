"""PrefixTable: which node last served a conversation prefix, so the next turn goes there.

llama.cpp reuses the KV cache of a prompt prefix it has just processed; sending the
next turn of a conversation to the same neuron skips re-reading the whole history.
This is a hint only: losing it (a restart, another replica) costs speed, not
correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["PrefixTable"]


class PrefixTable:
    def __init__(self, capacity: int = 16384) -> None:
        self._capacity = capacity
        self._nodes: OrderedDict[str, str] = OrderedDict()

    def lookup(self, model: str, prefixes: Sequence[str]) -> str | None:
        """The node of the longest known prefix (`prefixes` is shortest first)."""
        for key in reversed(prefixes):
            node = self._nodes.get(f"{model}\0{key}")
            if node is not None:
                return node
        return None

    def record(self, model: str, prefixes: Sequence[str], node: str) -> None:
        for key in prefixes:
            full = f"{model}\0{key}"
            self._nodes[full] = node
            self._nodes.move_to_end(full)
        while len(self._nodes) > self._capacity:
            self._nodes.popitem(last=False)

    def forget_node(self, node: str) -> None:
        for key in [k for k, v in self._nodes.items() if v == node]:
            del self._nodes[key]
