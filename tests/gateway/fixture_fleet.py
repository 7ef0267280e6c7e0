"""Gateway parts over a JSON fleet fixture, for the unit tests of Proxy, Reconciler and
the admin routes: a stand-in Fleet whose view is a fixture snapshot and which records
what the parts ask of it, a real LiveConfig (router and evictor from the default
plugins) and a real Placer, Loader and FairShare on top.

The stand-in is right where what a test checks is a part's decisions and the calls it
makes: the real Fleet's polling, its view and its neuron clients are tested end to end
against real neurons (tests/gateway/test_gateway_*.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import msgspec

from cortex import FleetSnapshot, ModelProfile, Plugins, build_plugin_manager
from cortex.config import GatewayConfig
from cortex.errors import CortexError
from cortex.gateway.fairshare import FairShare
from cortex.gateway.fleet import Fleet
from cortex.gateway.loader import Loader
from cortex.gateway.placement import Placer
from cortex.gateway.profiles import ProfileIndex
from cortex.gateway.state import LiveConfig, Reloader

FIXTURES = Path(__file__).parent.parent / "fixtures"
GiB = 2**30


def fixture(name: str) -> FleetSnapshot:
    return msgspec.json.decode((FIXTURES / name).read_bytes(), type=FleetSnapshot)


def profile(model_id: str, **fields: Any) -> ModelProfile:
    """A profile the gateway may load (its source is never fetched here)."""
    return ModelProfile(id=model_id, source="bundled:gemma3-270m", **fields)


def live_config(snapshot: FleetSnapshot, profiles: Iterable[ModelProfile], *,
                reloader: Reloader | None = None, eviction: dict[str, Any] | None = None,
                **settings: Any) -> LiveConfig:
    """A LiveConfig naming the fixture's nodes, with the default plugins' router;
    `eviction` is the `[eviction]` table."""
    config = msgspec.convert({
        "gateway": settings,
        "eviction": eviction or {},
        "neurons": [{"name": n.name, "endpoint": n.endpoint} for n in snapshot.nodes],
        "auth": {"open": True},
    }, GatewayConfig)
    return LiveConfig(config, list(profiles), Plugins(build_plugin_manager(entry_points=False)),
                      reloader=reloader)


class FixedEstimates:
    """Memory estimates as the neurons would give them, and who asked."""

    def __init__(self, estimates: dict[str, int]) -> None:
        self.estimates = estimates
        self.asked: list[str] = []

    def load_seconds(self, model: str) -> float | None:
        return None

    async def of(self, profile: ModelProfile, names: Iterable[str]) -> dict[str, int]:
        self.asked.append(profile.id)
        return {name: self.estimates[name] for name in names if name in self.estimates}

    def refusals(self, profile: ModelProfile, names: Iterable[str]) -> dict[str, str]:
        return {}

    def known(self, profile: ModelProfile, names: Iterable[str]
              ) -> tuple[dict[str, int], dict[str, str]]:
        return {name: self.estimates[name] for name in names if name in self.estimates}, {}


class FixtureFleet:
    """A Fleet whose view is `snapshot` and whose answers are recorded in `calls`;
    `clients` (by node) answer what the Proxy sends there."""

    def __init__(self, snapshot: FleetSnapshot, *, estimates: dict[str, int] | None = None,
                 clients: dict[str, Any] | None = None) -> None:
        self.view = snapshot
        self.estimates = FixedEstimates(estimates or {})
        self.clients = clients or {}
        self.survives: dict[str, bool] = {}
        self.calls: list[tuple[Any, ...]] = []

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.view.nodes]

    def has(self, name: str) -> bool:
        return name in self.names

    def snapshot(self, profiles: ProfileIndex,
                 rates: Mapping[str, float] | None = None) -> FleetSnapshot:
        return self.view

    def backlog(self, model_id: str) -> int:
        return 0

    def ready_slots(self, model_id: str) -> tuple[int, int]:
        copies = [m for n in self.view.nodes if n.up
                  if (m := n.model(model_id)) is not None and m.ready]
        return sum(m.slots for m in copies), len(copies)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": n.name, "up": n.up, "models": []} for n in self.view.nodes]

    async def first_round(self, timeout: float) -> None:
        self.calls.append(("first_round",))

    async def unload(self, name: str, model: str, *, reason: str, force: bool = False,
                     evicted: bool = False) -> None:
        self.calls.append(("unload", name, model, reason))

    async def pin(self, name: str, model: str, pinned: bool) -> bool:
        self.calls.append(("pin", name, model, pinned))
        return True

    def reset_cycles(self, name: str) -> None:
        self.calls.append(("reset_cycles", name))

    async def refresh(self, name: str) -> None:
        self.calls.append(("refresh", name))

    def poke(self, name: str) -> None:
        self.calls.append(("poke", name))

    def watch(self, name: str, lost: Callable[[CortexError, bool], None]
              ) -> Callable[[], None]:
        return lambda: None

    def report_failure(self, name: str, exc: CortexError) -> None:
        self.calls.append(("report_failure", name))

    def report_success(self, name: str) -> None:
        self.calls.append(("report_success", name))

    def drop_model(self, name: str, model: str) -> None:
        self.calls.append(("drop_model", name, model))

    async def survived(self, name: str, since: float) -> bool:
        self.calls.append(("survived", name))
        return self.survives.get(name, True)

    @contextlib.contextmanager
    def using(self, name: str, model: str) -> Iterator[Any]:
        self.calls.append(("using", name, model))
        yield self.clients[name]

    def made(self, kind: str) -> list[tuple[Any, ...]]:
        """The calls of one kind, without their kind."""
        return [call[1:] for call in self.calls if call[0] == kind]

    def as_fleet(self) -> Fleet:
        return cast(Fleet, self)


def placer_over(fleet: FixtureFleet, live: LiveConfig) -> tuple[Placer, Loader, FairShare]:
    """A real Placer (with its Loader and FairShare) over the stand-in fleet."""
    loader = Loader(fleet.as_fleet(), load_timeout=live.settings.load_timeout)
    fair = FairShare(fleet.ready_slots)
    return Placer(live, fleet.as_fleet(), loader, fair), loader, fair
