"""Conversation affinity as a pure function (cortex.rendezvous, and the `affinity`
strategy over it): every replica computes the same home for a conversation, and a node
leaving or joining moves only the conversations it must."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter

from cortex import (
    Evictor,
    FleetSnapshot,
    ModelView,
    NodeView,
    Plugins,
    Router,
    RouteRequest,
    build_plugin_manager,
    rendezvous,
)

NODES = tuple(f"gpu-{c}" for c in "abcdef")
#: Synthetic conversation keys shaped as prefix_hashes makes them (32 hex digits).
KEYS = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(6000)]


def homes(nodes: tuple[str, ...]) -> dict[str, str]:
    return {key: rendezvous(key, nodes)[0] for key in KEYS}


def test_removing_a_node_moves_only_the_keys_that_were_on_it() -> None:
    before = homes(NODES)
    after = homes(tuple(n for n in NODES if n != "gpu-c"))
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "gpu-c"}
    # ... and they spread over the others rather than piling onto one.
    assert set(Counter(after[k] for k in moved)) == set(NODES) - {"gpu-c"}


def test_adding_a_node_moves_only_the_keys_it_now_wins() -> None:
    before = homes(NODES)
    after = homes((*NODES, "gpu-g"))
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if after[k] == "gpu-g"}
    assert len(KEYS) / 7 * 0.8 < len(moved) < len(KEYS) / 7 * 1.2


def test_keys_spread_evenly_and_the_order_does_not_depend_on_the_input_order() -> None:
    counts = Counter(homes(NODES).values())
    assert set(counts) == set(NODES)
    assert all(abs(c - len(KEYS) / len(NODES)) < 0.1 * len(KEYS) / len(NODES)
               for c in counts.values()), counts
    assert all(rendezvous(k, NODES) == rendezvous(k, tuple(reversed(NODES)))
               for k in KEYS[:200])


def test_two_processes_agree() -> None:
    """Replicas are separate processes, each with its own salted hash(): the homes must
    not depend on it."""
    script = ("import json, sys; from cortex import rendezvous; "
              "keys, nodes = json.load(sys.stdin); "
              "print(json.dumps([rendezvous(k, nodes)[0] for k in keys]))")
    answers = []
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", script], check=True, text=True,
                                capture_output=True, input=json.dumps([KEYS[:500], NODES]),
                                env={**os.environ, "PYTHONHASHSEED": seed})
        answers.append(json.loads(result.stdout))
    assert answers[0] == answers[1] == [rendezvous(k, NODES)[0] for k in KEYS[:500]]


def _fleet(nodes: tuple[str, ...], *, busy: frozenset[str] = frozenset()) -> FleetSnapshot:
    return FleetSnapshot(nodes=tuple(NodeView(name=n, budget=2**34, models=(ModelView(
        id="m", slots=2, active=2 if n in busy else 0),)) for n in nodes))


def _routed(snapshot: FleetSnapshot) -> dict[str, str | None]:
    plugins = Plugins(build_plugin_manager(entry_points=False))
    router = Router(plugins.routing_strategy("affinity")(),
                    Evictor(plugins.eviction_policy("lru")()))
    return {k: router.decide(RouteRequest(model="m", conversation=k), snapshot).node
            for k in KEYS}


def test_the_affinity_strategy_moves_only_conversations_on_a_node_that_left() -> None:
    before = _routed(_fleet(NODES))
    assert set(before.values()) == set(NODES)  # spread, not all on the first name
    after = _routed(_fleet(tuple(n for n in NODES if n != "gpu-d")))
    assert {k for k in KEYS if before[k] != after[k]} == {
        k for k in KEYS if before[k] == "gpu-d"}


def test_a_busy_home_sends_its_conversations_to_their_next_node_only() -> None:
    """A home with no free slot is passed over for the next node of each conversation's
    own order, the one every replica also picks: the same as if it had left."""
    busy = _routed(_fleet(NODES, busy=frozenset({"gpu-b"})))
    gone = _routed(_fleet(tuple(n for n in NODES if n != "gpu-b")))
    assert busy == gone
    assert set(busy.values()) == set(NODES) - {"gpu-b"}
