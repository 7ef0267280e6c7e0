"""Estimates: what a profile would reserve on a node, and how long a model takes to load.

Both are caches of what neurons say, so losing them costs a question, not correctness.
A memory estimate is asked of the node that would hold the copy (its harness knows its
GPUs), once per node and neuron-facing profile: a number is kept for good (until the
node goes down), a failure for ERROR_TTL seconds, and concurrent asks share one
request. A neuron that refuses the profile itself (a 4xx: a missing file, an unknown
bundled name, a bad scheme) says why, and that reason is kept as a refusal, which the
router counts as permanent (the model is unservable there), unlike a neuron that did
not answer. Load times come from the neurons' statuses and feed the router (how long a
request would wait for a load) and admission (how long a refused client should wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import msgspec

from cortex.config import ModelProfile
from cortex.errors import CortexError
from cortex.gateway.client import neuron_profile
from cortex.gateway.nodes import Node

__all__ = ["ERROR_TTL", "Estimates"]

log = logging.getLogger("cortex.gateway.fleet")
#: Seconds a node's failure to estimate is remembered before it is asked again.
ERROR_TTL = 30.0


#: What one ask produced: bytes, a refusal's reason (str), or None (no answer).
_Answer = int | str | None


def _result(future: asyncio.Future[_Answer]) -> _Answer:
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result()


def _known(future: asyncio.Future[_Answer]) -> bool:
    """A finished estimate that produced a number (worth caching for good)."""
    return isinstance(_result(future), int)


class Estimates:
    def __init__(self, node: Callable[[str], Node | None]) -> None:
        """`node` finds a fleet member by name (None when it is not in the fleet)."""
        self._node = node
        self._asked: dict[tuple[str, bytes], tuple[float, asyncio.Future[_Answer]]] = {}
        self._load_seconds: dict[str, float] = {}

    def load_seconds(self, model: str) -> float | None:
        """How long the model took to load last time, anywhere; None if never seen."""
        return self._load_seconds.get(model)

    def loaded(self, model: str, seconds: float | None) -> None:
        """A neuron reported the model's load time (statuses carry it; 0/None: unknown)."""
        if seconds:
            self._load_seconds[model] = seconds

    def forget(self, node: str) -> None:
        """Drop a node's estimates (it went down: its GPUs may differ when it is back)."""
        for key in [k for k in self._asked if k[0] == node]:
            del self._asked[key]

    def _cached(self, profile: ModelProfile, names: Iterable[str]
                ) -> dict[str, asyncio.Future[_Answer]]:
        """The asks still worth their answer (numbers for good, failures for ERROR_TTL)."""
        key_profile = msgspec.json.encode(neuron_profile(profile))
        now = time.monotonic()
        found = {}
        for name in names:
            cached = self._asked.get((name, key_profile))
            if cached is not None and (_known(cached[1]) or now - cached[0] < ERROR_TTL):
                found[name] = cached[1]
        return found

    def known(self, profile: ModelProfile, names: Iterable[str]
              ) -> tuple[dict[str, int], dict[str, str]]:
        """What is already known, without asking: bytes per node, and the reasons of
        the nodes that refused the profile (see `of` and `refusals`)."""
        sizes: dict[str, int] = {}
        refusals: dict[str, str] = {}
        for name, future in self._cached(profile, names).items():
            answer = _result(future)
            if isinstance(answer, int):
                sizes[name] = answer
            elif isinstance(answer, str):
                refusals[name] = answer
        return sizes, refusals

    def refusals(self, profile: ModelProfile, names: Iterable[str]) -> dict[str, str]:
        """Why each named node refused the profile, for those that did (after `of`)."""
        return self.known(profile, names)[1]

    async def of(self, profile: ModelProfile, names: Iterable[str]) -> dict[str, int]:
        """Bytes the profile would reserve on each named node; nodes that cannot say are left
        out. Answers are cached (failures briefly), and concurrent asks share one request."""
        key_profile = msgspec.json.encode(neuron_profile(profile))
        now = time.monotonic()
        futures: dict[str, asyncio.Future[_Answer]] = {}
        for name in names:
            node = self._node(name)
            if node is None:
                continue
            cached = self._asked.get((name, key_profile))
            if cached is not None and (_known(cached[1]) or now - cached[0] < ERROR_TTL):
                futures[name] = cached[1]
                continue
            fresh: asyncio.Future[_Answer] = asyncio.ensure_future(_ask(node, profile))
            self._asked[(name, key_profile)] = (now, fresh)
            futures[name] = fresh
        results = {}
        for name, pending in futures.items():
            with contextlib.suppress(Exception):
                value = await asyncio.shield(pending)
                if isinstance(value, int):
                    results[name] = value
        return results


async def _ask(node: Node, profile: ModelProfile) -> _Answer:
    resident = node.models.get(profile.id)
    if resident is not None and resident.estimate is not None:
        return resident.estimate.total
    try:
        return (await node.client.estimate(profile)).total
    except CortexError as exc:
        log.info("neuron %s cannot estimate %s: %s", node.entry.name, profile.id, exc.message)
        # A 4xx is the neuron's verdict on the profile; anything else says nothing of it.
        return exc.message if 400 <= exc.status < 500 and exc.status not in (408, 429) \
            else None
