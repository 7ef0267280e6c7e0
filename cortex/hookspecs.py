"""The plugin contract: every hook cortex calls, with what it returns.

`register_*` hooks return classes; the core merges them into name-keyed registries and
fails at start-up on a duplicate name. Hooks are synchronous: decisions are pure
functions over a snapshot, and I/O lives in objects the core drives and awaits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from cortex.config import NeuronConfig
    from cortex.dialect import Dialect
    from cortex.evictor import EvictionPolicy
    from cortex.harness import Harness
    from cortex.records import FleetEvent, RequestRecord
    from cortex.router import RoutingStrategy
    from cortex.types import GPU

PROJECT = "cortex"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_routing_strategies() -> Iterable[type[RoutingStrategy]]:
    """Return RoutingStrategy classes; config picks one by its `name`."""
    raise NotImplementedError


@hookspec
def register_eviction_policies() -> Iterable[type[EvictionPolicy]]:
    """Return EvictionPolicy classes; `[eviction] strategy` picks one by its `name`."""
    raise NotImplementedError


@hookspec
def register_dialects() -> Iterable[type[Dialect]]:
    """Return Dialect classes; the gateway mounts the routes of every one."""
    raise NotImplementedError


@hookspec
def register_harnesses() -> Iterable[type[Harness]]:
    """Return Harness classes; a model profile picks one by `harness = "name"`."""
    raise NotImplementedError


@hookspec(firstresult=True)
def discover_gpus(config: NeuronConfig) -> Sequence[GPU] | None:
    """Return the node's GPUs, or None to let the next implementation try.

    Calling stops at the first non-None result. The NVML default is `trylast`, so a
    plugin can report accelerators NVML cannot see. An empty sequence means CPU-only.
    """
    raise NotImplementedError


@hookspec
def request_finished(record: RequestRecord) -> None:
    """Observe one finished request (tokens, TTFT, duration, node, model, status)."""


@hookspec
def fleet_event(event: FleetEvent) -> None:
    """Observe a lifecycle event: load_started, load_progress (often: keep it cheap),
    loaded, unloaded, evicted, load_failed, pinned, unpinned, node_up, node_down,
    draining, undrained."""
