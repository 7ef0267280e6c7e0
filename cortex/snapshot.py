"""A frozen picture of the fleet, the only input routing and eviction decisions read.

Decisions are pure functions of a FleetSnapshot, so they can be tested against JSON
fixtures of real fleet shapes and explained without acting on them. The live Fleet
builds one per decision from the neurons' last answers plus this gateway's own
in-flight work.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["FleetSnapshot", "ModelView", "NodeView", "ViewState"]

ViewState = Literal["loading", "ready", "unloading", "failed"]


class ModelView(msgspec.Struct, frozen=True, kw_only=True):
    """One model resident (or arriving) on one node, with its profile's fleet traits."""

    id: str
    # The node holding this copy: a policy ranking the candidates of several nodes at
    # once tells copies apart by it (the snapshot's builder sets it).
    node: str = ""
    state: ViewState = "ready"
    n_ctx: int = 0
    slots: int = 1
    bytes: int = 0
    # Requests running or queued: the larger of the neuron's count and this gateway's own.
    active: int = 0
    # The neuron's clock (epoch seconds). The `lru` policy compares it across nodes, so
    # neuron hosts keep their clocks in step (NTP), as any fleet does.
    last_used: float = 0.0
    # Seconds this gateway has watched the model sit idle (its own clock, so no skew).
    idle_for: float = 0.0
    pinned: bool = False
    priority: int = 0
    ttl: float | None = None
    # How long the model took to load (this copy's, else its last load anywhere; None:
    # never seen), and the requests per second this gateway served from it lately (all
    # copies together): the `cost` policy's inputs.
    load_seconds: float | None = None
    request_rate: float = 0.0

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def idle(self) -> bool:
        return self.active == 0

    @property
    def free_slot(self) -> bool:
        return self.ready and self.active < self.slots

    @property
    def backlog(self) -> int:
        """Requests beyond the model's slots: what a new request would queue behind."""
        return max(0, self.active - self.slots)


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    endpoint: str = ""
    up: bool = True
    budget: int = 0
    models: tuple[ModelView, ...] = ()
    # Load/unload cycles since the node was last defragmented.
    cycles: int = 0
    # Why the last poll or request failed, if it did (a down node's verdict names it).
    last_error: str | None = None
    # The neuron was told to drain: it finishes its work and takes nothing new.
    draining: bool = False

    @property
    def reserved(self) -> int:
        return sum(m.bytes for m in self.models)

    @property
    def free(self) -> int:
        return max(0, self.budget - self.reserved)

    @property
    def active(self) -> int:
        return sum(m.active for m in self.models)

    def model(self, model_id: str) -> ModelView | None:
        return next((m for m in self.models if m.id == model_id), None)


class FleetSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    nodes: tuple[NodeView, ...] = ()

    def node(self, name: str) -> NodeView | None:
        return next((n for n in self.nodes if n.name == name), None)

    def placements_of(self, model_id: str) -> list[tuple[NodeView, ModelView]]:
        """Every (node, model) pair where `model_id` is resident in any state, on live nodes."""
        found = []
        for node in self.nodes:
            model = node.model(model_id)
            if node.up and model is not None:
                found.append((node, model))
        return found
