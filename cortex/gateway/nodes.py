"""Node: what the gateway knows of one neuron, and the views made of it.

Only the Fleet changes a Node. The router sees it frozen, as the NodeView of a
snapshot (`view`); /admin/fleet, the dashboard and `cortex status` see `describe()`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from cortex.config import NeuronEntry
from cortex.errors import CortexError
from cortex.gateway.client import NeuronClient
from cortex.gateway.profiles import ProfileIndex
from cortex.snapshot import ModelView, NodeView
from cortex.types import ModelStatus, NodeStatus

__all__ = ["Lost", "Node", "active"]

#: Told when a node goes down: why, and whether it died holding a request (else it
#: stopped answering polls, or refused connections).
Lost = Callable[[CortexError, bool], None]


class Node:
    """One neuron's mutable state; only the Fleet changes it."""

    def __init__(self, entry: NeuronEntry, client: NeuronClient) -> None:
        self.entry = entry
        self.client = client
        self.up = False
        self.polled = False
        self.failures = 0
        self.last_error: str | None = None
        self.status: NodeStatus | None = None
        self.models: dict[str, ModelStatus] = {}
        # This gateway's requests in flight per model, now and when the neuron last counted.
        self.active: Counter[str] = Counter()
        self.active_at_poll: Counter[str] = Counter()
        self.idle_since: dict[str, float] = {}
        # Wall-clock ends of this replica's own requests: LRU must see them before the next
        # poll brings the neuron's `last_used` (other replicas' uses come only that way).
        self.used_at: dict[str, float] = {}
        self.loading: dict[str, int] = {}
        self.unloading: set[str] = set()
        self.cycles = 0
        self.users = 0
        self.retired = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.watchers: set[Lost] = set()  # requests in flight there, told if it goes down

    def view(self, profiles: ProfileIndex, now: float, *,
             rates: Mapping[str, float] | None = None,
             load_seconds: Callable[[str], float | None] = lambda model: None) -> NodeView:
        """The node as the router sees it, under `profiles`, at monotonic time `now`;
        `rates` are the models' recent requests per second, `load_seconds` their last
        load time anywhere (for a copy whose neuron does not say)."""
        rates = rates or {}
        name = self.entry.name
        views: list[ModelView] = []
        for model in self.models.values():
            profile = profiles.get(model.id)
            busy = active(self, model)
            state = "unloading" if model.id in self.unloading else model.state
            views.append(ModelView(
                id=model.id, node=name, state=state, n_ctx=model.n_ctx, slots=model.slots,
                bytes=model.estimate.total if model.estimate else self.loading.get(model.id, 0),
                active=busy, last_used=max(model.last_used, self.used_at.get(model.id, 0.0)),
                idle_for=0.0 if busy else now - self.idle_since.get(model.id, now),
                pinned=model.pinned or (profile.pinned if profile else False),
                priority=profile.priority if profile else 0,
                ttl=profile.ttl if profile else None,
                load_seconds=model.load_seconds or load_seconds(model.id),
                request_rate=rates.get(model.id, 0.0)))
        for model_id, needs in self.loading.items():
            if model_id not in self.models:
                profile = profiles.get(model_id)
                views.append(ModelView(
                    id=model_id, node=name, state="loading", bytes=needs,
                    n_ctx=profile.n_ctx if profile else 0, slots=profile.slots if profile else 1,
                    pinned=profile.pinned if profile else False,
                    priority=profile.priority if profile else 0))
        status = self.status
        return NodeView(name=name, endpoint=self.entry.endpoint, up=self.up,
                        budget=status.budget_bytes if status else 0, models=tuple(views),
                        cycles=self.cycles, last_error=self.last_error,
                        draining=status.draining if status else False)

    def describe(self) -> dict[str, Any]:
        """Everything known about the node, for /admin/fleet and `cortex status`."""
        status = self.status
        return {
            "name": self.entry.name, "endpoint": self.entry.endpoint, "up": self.up,
            "draining": status.draining if status else False,
            "failures": self.failures, "last_error": self.last_error,
            "cycles": self.cycles,
            "cpu_only": status.cpu_only if status else None,
            "version": status.version if status else None,
            "gpus": msgspec.to_builtins(status.gpus) if status else [],
            "budget_bytes": status.budget_bytes if status else 0,
            "reserved_bytes": sum(m.estimate.total for m in self.models.values()
                                  if m.estimate),
            "models": [msgspec.to_builtins(m) for m in self.models.values()],
            "in_flight": {k: v for k, v in self.active.items() if v},
            "loading": sorted(self.loading), "unloading": sorted(self.unloading),
        }


def active(node: Node, model: ModelStatus) -> int:
    """Requests on the model: this gateway's own now, plus what the neuron last counted
    beyond them (other gateways' requests)."""
    others = max(0, model.in_flight + model.queued - node.active_at_poll[model.id])
    return others + node.active[model.id]
