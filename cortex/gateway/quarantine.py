"""Quarantine: requests a neuron died holding, kept from the rest of the fleet for a while.

A request that crashes a neuron (a llama.cpp bug, a body the neuron's own checks let
through) would crash every node it is replayed on, and clients replay a 502 on their own
(both official SDKs retry it twice). So a request a neuron died holding before its first
byte is a suspect: the gateway counts, per fingerprint (a hash of the model, route and
body as the neuron got it), how many nodes died holding it, tries it on another node only
while that count is within `[gateway] poison_retries`, and refuses it with 400 for
`poison_ttl` seconds after. Requests queued on the same node when it died share the
count: nothing tells the one that killed it from the ones that were there.

Memory is bounded: at most MAX_FINGERPRINTS are kept (the oldest go first), each a
16-byte digest. They live in this gateway only; a replica or a restart starts empty.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from cortex.errors import Quarantined

if TYPE_CHECKING:
    from cortex.config import GatewaySection

__all__ = ["MAX_FINGERPRINTS", "Quarantine", "fingerprint"]

#: The most suspects remembered at once; each costs under 200 bytes.
MAX_FINGERPRINTS = 4096


def fingerprint(model: str, path: str, body: bytes) -> bytes:
    """The request as the neuron gets it: profile id, route and body."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (model.encode(), path.encode()):
        digest.update(len(part).to_bytes(4, "little"))
        digest.update(part)
    digest.update(body)
    return digest.digest()


class _Suspect:
    __slots__ = ("deaths", "nodes", "since")

    def __init__(self) -> None:
        self.deaths = 0
        self.nodes: list[str] = []
        self.since = 0.0  # monotonic time of the last death


class Quarantine:
    """Fingerprints of requests that neurons died holding, with how many died."""

    def __init__(self, settings: Callable[[], GatewaySection], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings  # read per use: a reload changes the budget and the TTL
        self._clock = clock
        self._suspects: OrderedDict[bytes, _Suspect] = OrderedDict()

    def __len__(self) -> int:
        """Requests remembered now (the proxy hashes a request only while there are any)."""
        self._expire(self._clock())
        return len(self._suspects)

    def _expire(self, now: float) -> None:
        ttl = self._settings().poison_ttl
        while self._suspects:  # ordered by last death: the oldest first
            key, oldest = next(iter(self._suspects.items()))
            if now - oldest.since < ttl:
                return
            del self._suspects[key]

    def _live(self, key: bytes, now: float) -> _Suspect | None:
        self._expire(now)
        return self._suspects.get(key)

    def record(self, key: bytes, node: str) -> int:
        """A neuron died holding this request: how many have, within the TTL."""
        now = self._clock()
        suspect = self._live(key, now) or _Suspect()
        suspect.deaths += 1
        suspect.nodes.append(node)
        suspect.since = now
        if self._settings().poison_ttl > 0:
            self._suspects[key] = suspect
            self._suspects.move_to_end(key)
            while len(self._suspects) > MAX_FINGERPRINTS:
                self._suspects.popitem(last=False)
        return suspect.deaths

    def allows(self, deaths: int) -> bool:
        """Whether a request that `deaths` neurons died holding may go to another node."""
        return deaths <= self._settings().poison_retries

    def check(self, key: bytes) -> None:
        """Raise Quarantined when this request is over its budget of deaths."""
        now = self._clock()
        suspect = self._live(key, now)
        if suspect is None or self.allows(suspect.deaths):
            return
        ttl = self._settings().poison_ttl
        nodes = ", ".join(f"`{n}`" for n in suspect.nodes)
        raise Quarantined(
            f"this request (the same model and body) was being served when neuron"
            f"{'s' if len(suspect.nodes) > 1 else ''} {nodes} died, "
            f"{now - suspect.since:.0f} s ago, before its first byte; the "
            f"gateway will not send it to another node for {ttl:.0f} s after that "
            f"([gateway] poison_ttl). Change the request, or ask the operator to check "
            "the neuron's log", retry_after=max(1.0, ttl - (now - suspect.since)))
