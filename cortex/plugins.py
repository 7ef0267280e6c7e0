"""Plugin manager factory and the name-keyed registries built from `register_*` hooks.

A fresh manager is built per app (and per test): there is no module-global one.
Plugins come from the `cortex` entry-point group. The defaults (`cortex_plugins/`) are
ordinary entry points of this distribution, loaded by the same path as third-party
plugins but first, so the core never names the plugin package.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import msgspec
import pluggy

from cortex import hookspecs
from cortex.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from cortex.config import DiscoveryConfig
    from cortex.dialect import Dialect
    from cortex.discovery import DiscoverySource
    from cortex.evictor import EvictionPolicy
    from cortex.harness import Harness
    from cortex.router import RoutingStrategy

__all__ = [
    "DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "Plugins",
    "build_options",
    "build_plugin_manager",
    "default_plugins",
]

ENTRY_POINT_GROUP = "cortex"
#: The distribution whose entry points are the default plugins.
DISTRIBUTION = "cortex"


def _entry_points(*, ours: bool) -> list[importlib.metadata.EntryPoint]:
    """The group's entry points of this distribution (`ours`) or of every other, by name."""
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
             if (ep.dist is not None and ep.dist.name == DISTRIBUTION) == ours]
    return sorted(found, key=lambda ep: ep.name)


def default_plugins() -> tuple[str, ...]:
    """The names of the default plugins (each the module it loads)."""
    return tuple(ep.name for ep in _entry_points(ours=True))


class _Named(Protocol):
    name: ClassVar[str]


N = TypeVar("N", bound=_Named)


def build_plugin_manager(*, entry_points: bool = True, defaults: bool = True,
                         blocked: Sequence[str] = (), extra: Iterable[object] = ()
                         ) -> pluggy.PluginManager:
    """Build a manager with the default plugins, entry-point plugins and `extra` objects.

    `blocked` names plugins (a default's module name or an entry-point name) to skip.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    batches = ([_entry_points(ours=True)] if defaults else []) \
        + ([_entry_points(ours=False)] if entry_points else [])
    for batch in batches:
        for ep in batch:
            if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            pm.register(ep.load(), name=ep.name)
    for plugin in extra:
        pm.register(plugin)
    return pm


def _collect(batches: Iterable[Iterable[type[N]]], kind: str) -> dict[str, type[N]]:
    registry: dict[str, type[N]] = {}
    for batch in batches:
        for cls in batch:
            name = cls.name
            if name in registry:
                first = registry[name]
                raise PluginError(
                    f"two {kind} plugins are named `{name}`: {first.__module__}."
                    f"{first.__qualname__} and {cls.__module__}.{cls.__qualname__}")
            registry[name] = cls
    return registry


def _pick(registry: dict[str, type[N]], name: str, kind: str) -> type[N]:
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry)) or "none"
        raise PluginError(f"unknown {kind} `{name}` (available: {known})") from None


def build_options(cls: type[Any], raw: dict[str, Any], *, where: str) -> Any:
    """Validate a plugin's settings against its inner `Options` Struct."""
    options_type = getattr(cls, "Options", None)
    if options_type is None:
        if raw:
            raise ConfigError(f"{where}: `{cls.name}` takes no options")
        return None
    try:
        return msgspec.convert(raw, options_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None


class Plugins:
    """The registries of one plugin manager; building them rejects duplicate names."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @cached_property
    def routing_strategies(self) -> dict[str, type[RoutingStrategy]]:
        return _collect(self.pm.hook.register_routing_strategies(), "routing strategy")

    @cached_property
    def eviction_policies(self) -> dict[str, type[EvictionPolicy]]:
        return _collect(self.pm.hook.register_eviction_policies(), "eviction policy")

    @cached_property
    def dialects(self) -> dict[str, type[Dialect]]:
        return _collect(self.pm.hook.register_dialects(), "dialect")

    @cached_property
    def discovery_sources(self) -> dict[str, type[DiscoverySource]]:
        return _collect(self.pm.hook.register_discovery_sources(), "discovery source")

    @cached_property
    def harnesses(self) -> dict[str, type[Harness]]:
        return _collect(self.pm.hook.register_harnesses(), "harness")

    def validate(self) -> None:
        """Build every registry now, so duplicate names fail at start-up."""
        for attr in ("routing_strategies", "eviction_policies", "dialects",
                     "discovery_sources", "harnesses"):
            getattr(self, attr)

    def routing_strategy(self, name: str) -> type[RoutingStrategy]:
        return _pick(self.routing_strategies, name, "routing strategy")

    def eviction_policy(self, name: str) -> type[EvictionPolicy]:
        return _pick(self.eviction_policies, name, "eviction policy")

    def harness(self, name: str) -> type[Harness]:
        return _pick(self.harnesses, name, "harness")

    def discovery_source(self, name: str) -> type[DiscoverySource]:
        return _pick(self.discovery_sources, name, "discovery source")

    def discovery(self, tables: Sequence[DiscoveryConfig], *,
                  where: str = "cortex.toml") -> list[DiscoverySource]:
        """A source for each `[[discovery]]` table, its options checked (an unknown
        source or a bad option is a ConfigError naming the table); none is started."""
        sources = []
        for index, table in enumerate(tables):
            try:
                cls = self.discovery_source(table.source)
            except PluginError as exc:
                raise ConfigError(f"{where}: discovery[{index}].source: {exc}") from None
            sources.append(cls(build_options(cls, dict(table.options),
                                             where=f"{where}: discovery[{index}].options")))
        return sources

    def dialect_options(self, tables: Mapping[str, Mapping[str, Any]], *,
                        where: str = "cortex.toml") -> dict[str, Dialect.Options]:
        """Every registered dialect's Options, from its `[dialects.NAME]` table (or the
        defaults); a table that names no dialect is an error, as a misspelt key is."""
        for name in tables:
            if name not in self.dialects:
                known = ", ".join(sorted(self.dialects)) or "none"
                raise ConfigError(f"{where}: dialects.{name}: no dialect is named `{name}` "
                                  f"(available: {known})")
        return {name: build_options(cls, dict(tables.get(name, {})),
                                    where=f"{where}: dialects.{name}")
                for name, cls in self.dialects.items()}
