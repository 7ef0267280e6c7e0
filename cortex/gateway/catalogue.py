"""The model catalogue: what the fleet can serve now, with where and how it runs.

A profile is listed when its affinity includes a live node (an empty `neurons` list
means any node); a model a neuron holds without a profile here (a neuron's own
preload) is listed too, servable where it is loaded. A profile no node can ever hold
is listed as `unservable`, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from cortex.aliases import is_pattern
from cortex.config import ModelProfile
from cortex.dialect import CatalogueEntry
from cortex.gateway.profiles import ProfileIndex
from cortex.snapshot import FleetSnapshot

__all__ = ["build_catalogue", "unconfigured_profile"]


def _state(loaded: list[str], loading: list[str]) -> Literal["ready", "loading", "available"]:
    return "ready" if loaded else "loading" if loading else "available"


def build_catalogue(profiles: ProfileIndex, snapshot: FleetSnapshot,
                    unservable: Mapping[str, str] | None = None) -> list[CatalogueEntry]:
    """`unservable`: why each profile no node can ever hold cannot be (Placer.unservable)."""
    never = unservable or {}
    live = [n for n in snapshot.nodes if n.up]
    entries: list[CatalogueEntry] = []
    for profile in profiles:
        if not any(not profile.neurons or n.name in profile.neurons for n in live):
            continue
        loaded = [n.name for n in live if (m := n.model(profile.id)) and m.ready]
        loading = [n.name for n in live if (m := n.model(profile.id)) and m.state == "loading"]
        state = _state(loaded, loading)
        reason = never.get(profile.id) if state == "available" else None
        entries.append(CatalogueEntry(
            id=profile.id, state="unservable" if reason else state, reason=reason,
            loaded_on=loaded, loading_on=loading,
            # Patterns (`claude-*`) name no model: listing them would offer them as ids.
            aliases=[a for a in profile.aliases if not is_pattern(a)], n_ctx=profile.n_ctx,
            slots=profile.slots,
            # A copy may be pinned on its neuron by another replica (`cortex pin`).
            pinned=profile.pinned or any(m.pinned for n in live
                                         if (m := n.model(profile.id)) is not None),
            priority=profile.priority, ttl=profile.ttl,
            neurons=list(profile.neurons), embeddings=profile.embeddings,
            bytes=max((m.bytes for n in live if (m := n.model(profile.id)) and m.ready),
                      default=0)))
    extra: dict[str, CatalogueEntry] = {}
    for node in live:
        for model in node.models:
            if profiles.get(model.id) is not None or model.state not in ("ready", "loading"):
                continue
            entry = extra.setdefault(model.id, CatalogueEntry(
                id=model.id, state="available", n_ctx=model.n_ctx, slots=model.slots,
                configured=False, bytes=model.bytes))
            (entry.loaded_on if model.ready else entry.loading_on).append(node.name)
            entry.state = _state(entry.loaded_on, entry.loading_on)
            entry.neurons = entry.loaded_on + entry.loading_on
    return entries + sorted(extra.values(), key=lambda e: e.id)


def unconfigured_profile(model: str, snapshot: FleetSnapshot) -> ModelProfile | None:
    """A stand-in profile for a model a neuron holds that no profile names, tied to the
    nodes that hold it (the gateway cannot load it anywhere else: it has no source)."""
    found = [(n, m) for n, m in snapshot.placements_of(model) if m.state in ("ready", "loading")]
    if not found:
        return None
    first = found[0][1]
    return ModelProfile(id=model, source=f"neuron:{model}", n_ctx=max(first.n_ctx, 1),
                        slots=first.slots, neurons=[n.name for n, _ in found])
